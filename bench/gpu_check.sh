#!/usr/bin/env bash
# The GPU check: one prepared run on a fresh machine with an NVIDIA GPU, under 8 minutes.
#
#   1. install kdsearch as README says (a venv of its own), unless --python names one that has it;
#   2. the test suite's GPU tests (pytest -m gpu: the fast path against autograd on CUDA, a
#      training epoch with no host synchronisation);
#   3. the quickstart on the GPU with kdsearch's automatic share, checked: trials on CUDA;
#   4. bench/final_parallel.py on that quickstart: the final evaluation's retrainings as Ray tasks
#      (each a process that starts CUDA) against one process, side by side;
#   5. bench/gpu_packing.py: k = 1, 2, 4, 8, 16, 32 trials a GPU, 20-epoch trials, one per
#      slot, the steady-rate speed-up against k = 1 and against the CPU-only row.
#
# Everything it measures lands in OUT (default bench/gpu_check_out/): check.log, packing.md,
# packing.json, quickstart.json, final_parallel.txt. MNIST is read from $KDSEARCH_DATA_DIR (torchvision's layout,
# the .gz files are enough), else ../shared/datasets beside the repository.
#
#   bash bench/gpu_check.sh [--dry-run] [--python PY] [--out DIR]
#
# --dry-run: no CUDA and nothing installed (this Python); tiny sizes, logical GPUs: the test
# suite runs it on a CPU machine so that the script cannot rot.
set -euo pipefail
cd "$(dirname "$0")/.."
DRY=0
PY=""
OUT="bench/gpu_check_out"
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY=1 ;;
    --python) PY="$2"; shift ;;
    --out) OUT="$2"; shift ;;
    *) echo "gpu_check: unknown argument $1 (--dry-run, --python PY, --out DIR)" >&2; exit 2 ;;
  esac
  shift
done
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
exec > >(tee "$OUT/check.log") 2>&1
export PYTHONUNBUFFERED=1 KDSEARCH_CACHE_DIR="${KDSEARCH_CACHE_DIR:-$OUT/cache}"
export KDSEARCH_DATA_DIR="${KDSEARCH_DATA_DIR:-$(cd .. && pwd)/shared/datasets}"
start=$(date +%s)
step() { echo; echo "== $(( $(date +%s) - start )) s: $*"; }

step "install"
if [ -n "$PY" ]; then
  echo "using $PY"
elif [ "$DRY" = 1 ]; then
  PY="$(command -v python3)"; echo "dry run: nothing installed, using $PY"
else
  python3 -m venv .venv && .venv/bin/pip install -q -e ".[test]"
  PY=.venv/bin/python
fi
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, \
'available', torch.cuda.is_available())"
if [ "$DRY" = 0 ]; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
  "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 2)" || {
    echo "gpu_check: torch cannot use CUDA here; see the line above (or --dry-run)"; exit 2; }
fi

step "GPU tests (pytest -m gpu)"
"$PY" -m pytest -q -p no:cacheprovider -m gpu tests/ -rs 2>&1 | tail -n 15

step "quickstart, automatic GPU share"
QS=(--set name=gpu_quickstart)
if [ "$DRY" = 1 ]; then
  QS+=(--set search.num_samples=2 --set search.baseline=false --set training.epochs=2
       --set search.grace_period=1 --set teacher.width=64 --set teacher.epochs=2
       --set report.seeds=1 --set search.space.width.values=[8])
fi
"$PY" -m kdsearch run search_spaces/quickstart.yaml --results-dir "$OUT/results" --force \
  "${QS[@]}" | tail -n 4
"$PY" - "$OUT" "$DRY" <<'EOF'
import csv, json, sys
from pathlib import Path
out, dry = Path(sys.argv[1]), sys.argv[2] == "1"
folder = out / "results" / "gpu_quickstart"
run = json.loads((folder / "run.json").read_text())
trials = list(csv.DictReader(open(folder / "trials.csv")))
seen = {"gpus": run["hardware"]["gpus"], "gpus_per_trial": run["gpus_per_trial"],
        "max_concurrent_trials": run["max_concurrent_trials"], "cuda": run["cuda"],
        "trials": len(trials), "trials_on_a_gpu": sum(bool(t["gpu_ids"]) for t in trials),
        "search_seconds": run["search"]["wall_seconds"],
        "final_device": json.loads((folder / "final.json").read_text())["device"]}
(out / "quickstart.json").write_text(json.dumps(seen, indent=2) + "\n")
print(json.dumps(seen))
if not dry:
    assert seen["gpus_per_trial"] > 0 and seen["trials_on_a_gpu"] == seen["trials"], seen
EOF

step "final evaluation: Ray tasks against one process"
"$PY" bench/final_parallel.py "$OUT/results/gpu_quickstart" | tee "$OUT/final_parallel.txt" | tail -n 8

step "packing"
PACK=(--out "$OUT")
if [ "$DRY" = 1 ]; then PACK+=(--dry-run); fi
"$PY" bench/gpu_packing.py "${PACK[@]}"

step "done in $(( $(date +%s) - start )) s; figures in $OUT"
