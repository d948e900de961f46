#!/usr/bin/env bash
# The prepared GPU check, in parts; each step has its own time limit. `--parts tests` (480 s) fits one
# device call of 10 minutes, `--parts bench,recipe` (350 s) another:
#
#   tests   1. the tests that touch CUDA first: the cuda-marked ones, then transforms,
#              completer and audit                                                            <= 60 + 120 s
#           2. the whole suite on CUDA (pytest-xdist when installed), slowest tests listed      <= 300 s
#   bench   3. training images/s on CUDA: the tiny and the small model, batch 64, workers      <= 100 s
#   recipe  4. the named recipe "camvid-small-gpu": the small model from scratch, the default
#              recipe at batch 64 (lr 2e-3 by the square-root rule), 3 minutes, then its best
#              epoch evaluated over three draws of holes                                        <= 250 s
#
# Usage: benchmarks/gpu_check.sh [--dry-run] [--parts tests,bench,recipe] [DATA_ROOT]
#   DATA_ROOT: the folder holding camvid/ (default ../shared/data). ../shared does not travel to the
#   device machine and the working tree may carry 64 MiB in all: without DATA_ROOT/camvid/dataset.json
#   the bench and recipe parts are skipped, with a line that says so.
#   --dry-run prints the commands without running them.
# Outputs go to $OUT (default runs/gpu-check), flat, so that they come back from the device: the pytest
# logs, bench-*.json, recipe.log, eval.json and best/ (the recipe's best epoch, a Hub folder whose weights
# could be shipped). The training run itself goes to $RUNS (default /tmp/gpu-check-runs).
# PYTHON picks the interpreter (default: python3, the one that holds PyTorch on the device machine).
set -uo pipefail

DRY=0
PARTS=tests,bench,recipe
while [[ $# -gt 0 ]]; do
  case "$1" in
    --dry-run) DRY=1; shift ;;
    --parts) PARTS=$2; shift 2 ;;
    *) break ;;
  esac
done
DATA=${1:-../shared/data}
OUT=${OUT:-runs/gpu-check}
RUNS=${RUNS:-/tmp/gpu-check-runs}
PY=${PYTHON:-python3}
STATUS=0

run() {  # run LIMIT_SECONDS CMD...: echo, then run under a time limit unless --dry-run
  local limit=$1
  shift
  echo "+ $*"
  if [[ $DRY == 0 ]]; then
    timeout "$limit" "$@" || { echo "step failed or timed out (exit $?): $*"; STATUS=1; }
  fi
}

part() { [[ ",$PARTS," == *",$1,"* ]]; }

have_data() {  # a dry run lists every command
  [[ $DRY == 1 || -f "$DATA/camvid/dataset.json" ]] && return 0
  echo "skipped $1: no $DATA/camvid/dataset.json (../shared does not travel; carry a CamVid copy and pass its folder)"
  return 1
}

[[ $DRY == 1 ]] || mkdir -p "$OUT" "$RUNS"
[[ $DRY == 1 ]] || { nvidia-smi --query-gpu=name,memory.total --format=csv || true; }

if part tests; then
  XDIST=()
  if [[ $DRY == 1 ]] || "$PY" -c "import xdist" 2>/dev/null; then XDIST=(-n 12); fi
  run 60 "$PY" -m pytest -q -p no:cacheprovider -m cuda tests --junitxml "$OUT/pytest-cuda.xml"
  run 120 "$PY" -m pytest -q -p no:cacheprovider tests/test_transforms.py tests/test_completer.py \
    tests/test_audit.py --junitxml "$OUT/pytest-paths.xml"
  run 300 "$PY" -m pytest -q -p no:cacheprovider "${XDIST[@]}" --durations=20 tests --junitxml "$OUT/pytest-all.xml"
fi
if part bench && have_data bench; then
  run 50 "$PY" benchmarks/bench_train.py --data "$DATA/camvid" --model tiny --batch-size 64 --steps 40 --threads 4 \
    --workers 8 --json "$OUT/bench-tiny.json"
  run 50 "$PY" benchmarks/bench_train.py --data "$DATA/camvid" --model small --batch-size 64 --steps 40 --threads 4 \
    --workers 8 --json "$OUT/bench-small.json"
fi
if part recipe && have_data recipe; then
  run 210 "$PY" -m torch_label_mae train --data "$DATA/camvid" --out "$RUNS/camvid-small-gpu" --model small \
    --batch-size 64 --max-minutes 3 --ratio-range 0.3 0.7 --block-holes 0.5 --workers 8
  run 40 "$PY" -m torch_label_mae evaluate --model "$RUNS/camvid-small-gpu/best" --data "$DATA/camvid" --split val \
    --protocol paper --seed 0 1 2 --json "$OUT/eval.json"
  if [[ $DRY == 0 && -d "$RUNS/camvid-small-gpu/best" ]]; then
    cp -r "$RUNS/camvid-small-gpu/best" "$OUT/best"
    cp "$RUNS/camvid-small-gpu/"*.jsonl "$OUT/" 2>/dev/null || true
  fi
fi
exit $STATUS
