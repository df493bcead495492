PYTHON ?= python3
PIP ?= $(PYTHON) -m pip

.PHONY: install test test-slow test-cluster cluster-up cluster-down test-all lint format bench bench-peers bench-train bench-analyses bench-measures bench-smoke gpu-pkgs clean

CONSTRAINTS ?= .ci/constraints.txt

## install: torch from the pinned local wheels, then vvm with its dev extras (editable), at the versions CI pins
install:
	$(PIP) install -c $(CONSTRAINTS) torch==2.14.1 torchvision==0.29.1
	$(PIP) install -c $(CONSTRAINTS) -e ".[dev]"

## test: the default suite (CI runs this): everything but tests marked slow, gpu or slurm
test:
	$(PYTHON) -m pytest -m "not slow and not gpu and not slurm" -q

test-slow:
	$(PYTHON) -m pytest -m "slow and not gpu and not slurm" -q

## test-cluster: the tests against a real Slurm (sweeps, preemption, time limits, DDP over tasks, the joint pass);
## they skip without a cluster (fail under CI=true): make cluster-up first, make cluster-down after
test-cluster:
	$(PYTHON) -m pytest -m slurm -q

## cluster-up / cluster-down: a one-node Slurm of this machine (Debian's slurm-wlm + munge; root)
cluster-up:
	scripts/slurm-local.sh up

cluster-down:
	scripts/slurm-local.sh down

test-all:
	$(PYTHON) -m pytest -q

lint:
	$(PYTHON) -m ruff check src tests bench
	$(PYTHON) -m ruff format --check src tests bench

format:
	$(PYTHON) -m ruff format src tests bench
	$(PYTHON) -m ruff check --fix src tests bench

## bench: CKA pipeline vs plain forward pass (time ratio, peak memory, max error vs float64)
bench:
	$(PYTHON) bench/bench_cka.py

## bench-peers: vvm exact/fast vs pytorch-cka's algorithm and a 40-line sketch, ResNet-18 CIFAR, 49 layers, CPU
## (interleaved batch by batch; ratios to the bare forward pass; max error vs float64). Quick: batch 64 x 1, 5 rounds;
## the issue-13 numbers: python bench/bench_peers.py (batch 64 x 4 batches)
bench-peers:
	PYTHONPATH=src $(PYTHON) bench/bench_peers.py --batches 1 --rounds 5

## bench-train: one CIFAR-sized training epoch of ResNet-18 through each data pipeline (use a GPU)
bench-train:
	$(PYTHON) bench/bench_train.py

## bench-analyses: ERF, attention distance and linear probe against the CKA pass of the same job (r18, blocks,
## digits, CPU); `--smoke` for CI (64 images a split, one round: about a minute on 2 cores)
bench-analyses:
	$(PYTHON) bench/bench_analyses.py

## bench-measures: measures=[cka,rsa,knn] against measures=[cka] on the same batches (r18, blocks, batch 256, CPU)
bench-measures:
	$(PYTHON) bench/bench_measures.py

## bench-smoke: every bench script once, tiny, on the CPU (CI runs it so that none of them rots)
bench-smoke:
	$(PYTHON) bench/bench_cka.py --device cpu --batch 8 --repeats 1 --layers blocks --no-memory
	$(PYTHON) bench/bench_peers.py --rounds 1 --batch 8 --batches 1
	$(PYTHON) bench/bench_joint.py --ms 2 --samples 16 --batch 8 --device cpu
	$(PYTHON) bench/bench_train.py --images 64 --batch-size 16 --warmup 1 --workers 0 --device cpu
	$(PYTHON) bench/bench_analyses.py --smoke
	$(PYTHON) bench/bench_measures.py --smoke
	$(PYTHON) bench/bench_knn_pools.py --smoke

## gpu-pkgs: the pure-Python packages the GPU machine lacks (hydra-core, omegaconf, antlr4) into .gpu_pkgs/, which
## bench/gpu_session.sh puts on PYTHONPATH there (carry=[".gpu_pkgs"] in the device tool's run)
gpu-pkgs:
	rm -rf .gpu_pkgs
	$(PIP) install --quiet --no-deps --no-compile --target .gpu_pkgs \
		hydra-core==1.3.8 omegaconf==2.3.1 antlr4-python3-runtime==4.9.3

clean:
	rm -rf .pytest_cache .ruff_cache build src/*.egg-info
