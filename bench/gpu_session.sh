#!/usr/bin/env bash
# A session lent a GPU (issues 20, 27) runs this in two device-tool calls of about five minutes each, so that
# with the machine's start both fit a 15-minute lease and leave time to rerun one. From the repository root:
#
#   make gpu-pkgs    # here, once: hydra-core, omegaconf, antlr4 into .gpu_pkgs/ (ignored by git; the device
#                    # has torch, timm, Lightning and torchmetrics, but not these three)
#   run(command="bash bench/gpu_session.sh 1", carry=[".gpu_pkgs"], timeout_s=330)
#   run(command="bash bench/gpu_session.sh 2", carry=[".gpu_pkgs"], timeout_s=330)
#
# Part 1: the versions (timm's and the presets' layer counts included: a timm whose models differ is caught
# first), the CKA pass against the bare forward pass (r18 at 256, ViT-L/32 at 64), the training epoch.
# Part 2: the `gpu` pytest tests, a Lambda-ResNet fit, cross-model CKA with ViT-L/32, the CKA pass at 1024 and
# with the hooks' centring in column blocks.
# Steps in priority order, each with its own timeout, all of them within DEADLINE seconds (300 a part); a step
# that would start with less than 20 s left is skipped. After every step its log and files are archived at once
# into $OUT/gpu_session_part<N>.tgz and its line appended to $OUT/summary_part<N>.txt, so a call stopped at its
# limit still returns what it did. docs/benchmarks.md has the estimate per step.
#
#   DRY=1 bash bench/gpu_session.sh 1  # every step tiny, on the CPU (tests/test_gpu_session.py, a slow test)
#
# Nothing here runs the CPU test suite, installs anything or needs /usr/bin/time; failures are in the summary,
# with the end of the failing step's log. Write what comes back into docs/benchmarks.md with the card's name.
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT" || exit 1
DRY=${DRY:-0}
PART=""
for arg in "$@"; do
  case $arg in
    --dry) DRY=1 ;;
    1 | 2) PART=$arg ;;
    *) PART=bad ;;
  esac
done
if [ "$PART" != 1 ] && [ "$PART" != 2 ]; then
  echo "usage: bash bench/gpu_session.sh 1|2 [--dry]  (two device-tool calls of about five minutes each)" >&2
  exit 2
fi
OUT=${OUT:-$ROOT/gpu-out}
WORK=${WORK:-$(mktemp -d "${TMPDIR:-/tmp}/gpu_session.XXXXXX")}
DEADLINE=${DEADLINE:-300}
PY=${PYTHON:-python3}  # the device's python3 holds PyTorch
mkdir -p "$OUT" "$WORK"
SUMMARY="$OUT/summary_part$PART.txt"
ARCHIVE="$OUT/gpu_session_part$PART.tgz"
: >"$SUMMARY"
export PYTHONPATH="$ROOT/.gpu_pkgs:$ROOT/src${PYTHONPATH:+:$PYTHONPATH}"
export WANDB_MODE=offline HYDRA_FULL_ERROR=1 PYTHONUNBUFFERED=1
export PY WORK VVM_CHECKPOINTS="${WORK}_checkpoints"  # outside the archive: checkpoints are big
START=$(date +%s)

if [ "$DRY" = 1 ]; then
  TRAINER=trainer=cpu
  # dataset.* keys only here: the dry run's data must be tiny; the real run's commands use the CLI's groups
  TINY=(dataset.train_size=32 dataset.test_size=16 dataset.image_size=8 train.batch_size=16)
  CKA_SMALL=(similarity.batch_size=8 similarity.max_samples=8)
  BENCH_CKA=(--device cpu --batches 1 --repeats 1 --layers blocks)
  B256=(--models r18 --batch 8)
  B64=(--models vit_l32 --batch 4 --no-memory)
  B1024=(--models r18 --batch 8 --no-memory)
  C22=(--no-memory)
  TSCALE=${TSCALE:-12}  # a shared 2-core CPU is slower than the GPU machine at these tiny steps (cka_256: 575 s)
  BENCH_TRAIN=(--device cpu --images 32 --batch-size 16 --warmup 1 --workers 0)
  BENCH_TRAIN+=(--pipelines compute resident lightning)
else
  TRAINER=trainer=gpu
  TINY=()
  CKA_SMALL=()
  BENCH_CKA=(--layers all)
  B256=(--models r18 --batch 256)
  B64=(--models vit_l32 --batch 64)
  B1024=(--models r18 --batch 1024)
  C22=()
  BENCH_TRAIN=()
  TSCALE=${TSCALE:-1}
fi

archive() {
  tar -czf "$ARCHIVE.part" -C "$WORK" . && mv "$ARCHIVE.part" "$ARCHIVE"
}

# step NAME TIMEOUT COMMAND...: run it with its log in $WORK/NAME.log, then archive and summarise at once
step() {
  local name=$1 limit=$(($2 * TSCALE))
  shift 2
  local left=$((DEADLINE - ($(date +%s) - START)))
  if [ "$left" -lt 20 ]; then
    printf '%-12s skipped: %s s left of the %s s deadline\n' "$name" "$left" "$DEADLINE" \
      | tee -a "$SUMMARY"
    return
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  local t0 rc
  t0=$(date +%s)
  echo "=== $name (timeout $limit s): $*"
  # bash -c: the command may be one of the functions below (exported)
  timeout --signal=TERM --kill-after=10 "$limit" bash -c '"$@"' _ "$@" >"$WORK/$name.log" 2>&1
  rc=$?
  local note=ok
  [ "$rc" = 124 ] && note="timed out"
  [ "$rc" != 0 ] && [ "$rc" != 124 ] && note="failed"
  printf '%-12s rc=%-3s %4s s (limit %s) %s\n' "$name" "$rc" "$(($(date +%s) - t0))" "$limit" "$note" \
    | tee -a "$SUMMARY"
  if [ "$rc" != 0 ]; then
    tail -n 25 "$WORK/$name.log" | sed "s/^/    $name| /" | tee -a "$SUMMARY"
  fi
  archive
}

versions() {
  "$PY" - <<'EOF'
import importlib
import platform

import torch

print("python", platform.python_version(), "torch", torch.__version__, "cuda", torch.version.cuda)
if torch.cuda.is_available():
    print("device", torch.cuda.get_device_name(0), "capability", torch.cuda.get_device_capability(0))
for name in ("timm", "pytorch_lightning", "torchmetrics", "hydra", "omegaconf", "antlr4", "vvm"):
    try:
        module = importlib.import_module(name)
        print(name, getattr(module, "__version__", "?"), module.__file__)
    except ImportError as e:
        print(name, "MISSING:", e)
EOF
  if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
  else
    echo "no nvidia-smi"
  fi
  "$PY" bench/preset_counts.py
}

vvm_job() {  # vvm_job NAME OVERRIDES...: one job of the CLI, its run directory under $WORK/NAME
  local name=$1
  shift
  "$PY" -m vvm "$@" logger=none "hydra.run.dir=$WORK/$name"
}

export -f versions vvm_job

if [ "$PART" = 1 ]; then
  # 1. what runs there: versions, and the layer counts of the presets against timm 1.0's (a mismatch fails)
  step versions 60 versions
  # 2. the CKA pass against the bare forward pass: time, error against float64, peak memory
  step cka_256 75 "$PY" bench/bench_cka.py "${BENCH_CKA[@]}" "${B256[@]}" --json "$WORK/bench_cka_256.json"
  step cka_vit_64 80 "$PY" bench/bench_cka.py "${BENCH_CKA[@]}" "${B64[@]}" \
    --json "$WORK/bench_cka_vit_64.json"
  # 3. one CIFAR-100-sized training epoch through each data pipeline
  step train 120 "$PY" bench/bench_train.py "${BENCH_TRAIN[@]}" --json "$WORK/bench_train.json"
else
  # 1. the GPU tests (exactness on the device, TF32 switch, no host sync per batch, trainer=gpu end to end)
  step pytest_gpu 120 "$PY" -m pytest -m gpu -q -p no:cacheprovider --junitxml="$WORK/pytest_gpu.xml" tests
  # 2. a Lambda-ResNet fit on the GPU: channels_last with its 5-D Conv3d, bf16 where native, then the CKA pass
  step lambda_fit 60 vvm_job lambda_fit model=lambda_r26 init=pretrained dataset=synthetic "$TRAINER" \
    train.epochs=1 "${TINY[@]}" "${CKA_SMALL[@]}"
  # 3. cross-model CKA with ViT-L/32 (224x224 inputs, resized on the device), convolutions in IEEE float32
  step compare 60 vvm_job compare model=r18 compare=vit_l32 dataset=synthetic "$TRAINER" similarity.tf32=off \
    "${TINY[@]}" "${CKA_SMALL[@]}"
  # 4. the CKA pass at batch 1024; then, if time is left, the hooks' centring in 16 MiB column blocks instead
  # of whole activations (time vs memory: a CPU emulation of the CUDA path put whole activations at 1.02 of
  # the memory budget, 2^22 blocks at 0.93)
  step cka_1024 50 "$PY" bench/bench_cka.py "${BENCH_CKA[@]}" "${B1024[@]}" --json "$WORK/bench_cka_1024.json"
  step cka_256_c22 45 "$PY" bench/bench_cka.py "${BENCH_CKA[@]}" "${B256[@]}" "${C22[@]}" \
    --chunk-elements 4194304 --json "$WORK/bench_cka_256_c22.json"
fi

echo "=== summary of part $PART ($(($(date +%s) - START)) s; files: $SUMMARY, $ARCHIVE)"
cat "$SUMMARY"
! grep -qE 'rc=[1-9]|skipped' "$SUMMARY"
