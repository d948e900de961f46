#!/usr/bin/env bash
# The prepared GPU check: fits 10 minutes on one GPU (each step has its own time limit).
#
#   1. the test suite on CUDA (cuda-marked tests included; they skip on CPU)        <= 230 s
#   2. training images/s on CUDA: the tiny and the small model, batch 64, workers   <= 120 s
#   3. the named recipe "camvid-small-gpu": the small model from scratch, the
#      default recipe at batch 64 (lr 2e-3 by the square-root rule), 3 minutes,
#      then its best epoch evaluated over three draws of holes                       <= 250 s
#
# Usage: benchmarks/gpu_check.sh [--dry-run] [DATA_ROOT]   (DATA_ROOT: the folder holding camvid/;
# default ../shared/data). --dry-run prints the commands without running them. Outputs go to
# $OUT (default runs/gpu-check): bench.json, the run folder camvid-small-gpu/ (best/ is a Hub folder
# whose weights could be shipped) and eval.json. PYTHON picks the interpreter (default: python).
set -uo pipefail

DRY=0
if [[ "${1:-}" == "--dry-run" ]]; then
  DRY=1
  shift
fi
DATA=${1:-../shared/data}
OUT=${OUT:-runs/gpu-check}
PY=${PYTHON:-python}
STATUS=0

run() {  # run LIMIT_SECONDS CMD...: echo, then run under a time limit unless --dry-run
  local limit=$1
  shift
  echo "+ $*"
  if [[ $DRY == 0 ]]; then
    timeout "$limit" "$@" || { echo "step failed or timed out (exit $?): $*"; STATUS=1; }
  fi
}

[[ $DRY == 1 ]] || mkdir -p "$OUT"
[[ $DRY == 1 ]] || { nvidia-smi --query-gpu=name,memory.total --format=csv || true; }

run 230 "$PY" -m pytest -q tests -p no:cacheprovider
run 60 "$PY" benchmarks/bench_train.py --data "$DATA/camvid" --model tiny --batch-size 64 --steps 40 --threads 4 \
  --workers 8 --json "$OUT/bench-tiny.json"
run 60 "$PY" benchmarks/bench_train.py --data "$DATA/camvid" --model small --batch-size 64 --steps 40 --threads 4 \
  --workers 8 --json "$OUT/bench-small.json"
run 210 "$PY" -m torch_label_mae train --data "$DATA/camvid" --out "$OUT/camvid-small-gpu" --model small \
  --batch-size 64 --max-minutes 3 --ratio-range 0.3 0.7 --block-holes 0.5 --workers 8
run 40 "$PY" -m torch_label_mae evaluate --model "$OUT/camvid-small-gpu/best" --data "$DATA/camvid" --split val \
  --protocol paper --seed 0 1 2 --json "$OUT/eval.json"
exit $STATUS
