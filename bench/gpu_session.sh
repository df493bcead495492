#!/usr/bin/env bash
# The first session lent a GPU runs this once (issue 13), e.g. through the device tool with a timeout that
# leaves room for a rerun; everything it prints and writes under $OUT (default ./gpu-out) goes into
# docs/benchmarks.md with the card's name. It installs nothing: the device has torch, timm and Lightning.
set -uo pipefail
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
export PYTHONPATH=$PWD/src WANDB_MODE=offline
python -c "import torch, timm, pytorch_lightning as pl, torchmetrics as tm; print(torch.__version__, torch.cuda.get_device_name(0), timm.__version__, pl.__version__, tm.__version__)" | tee "$OUT/versions.txt"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee -a "$OUT/versions.txt"
# 1. the GPU tests and the engine/training tests on the device
timeout 240 python -m pytest -m gpu -q -x 2>&1 | tail -20 | tee "$OUT/pytest_gpu.txt"
timeout 240 python -m pytest -q tests/test_estimate.py tests/test_streaming.py -k "not ddp and not imagefolder" 2>&1 | tail -5 | tee "$OUT/pytest_engine.txt"
# 2. the CKA pipeline against the bare forward pass, r18 and ViT-L/32, all layers
timeout 300 python bench/bench_cka.py --models r18,vit_l32 --batch 256 --layers all --json "$OUT/bench_cka_256.json" 2>&1 | tail -20 | tee "$OUT/bench_cka_256.txt"
timeout 180 python bench/bench_cka.py --models r18 --batch 1024 --layers all --json "$OUT/bench_cka_1024.json" 2>&1 | tail -10 | tee "$OUT/bench_cka_1024.txt"
# 3. training epoch pipelines
timeout 300 python bench/bench_train.py --json "$OUT/bench_train.json" 2>&1 | tail -15 | tee "$OUT/bench_train.txt"
# 4. end to end, with timings
/usr/bin/time -f "%e s" timeout 300 python -m vvm model=r18 init=pretrained dataset=synthetic trainer=gpu train.epochs=3 logger=none hydra.run.dir="$OUT/e2e_r18" 2>&1 | tail -3 | tee "$OUT/e2e_r18.txt"
/usr/bin/time -f "%e s" timeout 300 python -m vvm model=r18 compare=vit_l32 dataset=synthetic trainer=gpu logger=none hydra.run.dir="$OUT/e2e_compare" 2>&1 | tail -3 | tee "$OUT/e2e_compare.txt"
