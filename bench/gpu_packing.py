"""GPU packing: how many small students one GPU should run at once, measured side by side.

On one machine with CUDA GPUs, from one run, for k = 1, 2, 4, 8, 16, 32 trials per GPU
(search.trials_per_gpu = k): a search of k x GPUs trials, one per slot (all running at once),
each training mnist_mlp.yaml's 2x20 student for 20 epochs (FIFO: every trial runs its whole
budget; no baseline, no report). Per row: the search's wall time, and its steady rate: the
trial-epochs per second while every slot is busy (from the moment the last trial finished its
first epoch to the moment the first trial ended). Then a CPU-only row: the same trials on the
node's CPU cores alone (search.gpus_per_trial = 0, one trial per core). Prints each row's
steady-rate speed-up against k = 1 and against the CPU-only row, and writes the table and the
figures to --out (packing.md, packing.json). The k whose steady rate is the highest (or within
5% of it, the smallest such k) is the packing limit the figures support.

--dry-run: no CUDA needed; digits, a tiny teacher, 1-epoch trials, k = 1 and 2 on a local Ray
with 2 logical GPUs (trials fall back to the CPU), so that the script runs on any machine (the
test suite runs it through bench/gpu_check.sh --dry-run).

Usage (MNIST in torchvision's layout under $KDSEARCH_DATA_DIR):
  KDSEARCH_DATA_DIR=/data .venv/bin/python bench/gpu_packing.py --out /tmp/packing [--ks 1,2,4]
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SPACE = REPO / "search_spaces" / "mnist_mlp.yaml"
DRY_SPACE = REPO / "search_spaces" / "quickstart.yaml"


def steady(out: Path) -> dict[str, Any]:
    """A search's trial-epochs, its wall time (run.json) and its steady rate (progress.csv)."""
    rows = list(csv.DictReader(open(out / "progress.csv")))
    run = json.loads((out / "run.json").read_text())
    by_trial: dict[str, list[tuple[float, float]]] = {}
    for r in rows:
        by_trial.setdefault(r["trial_id"], []).append((float(r["wall_time"]),
                                                       float(r["epoch_seconds"])))
    # all slots busy: from the last trial's first epoch to the first trial's last epoch
    start = max(min(t for t, _ in epochs) for epochs in by_trial.values())
    end = min(max(t for t, _ in epochs) for epochs in by_trial.values())
    inside = sum(start < t <= end for epochs in by_trial.values() for t, _ in epochs)
    wall = float(run["search"]["wall_seconds"])
    trials = list(csv.DictReader(open(out / "trials.csv")))
    return {"trials": len(trials), "epochs": len(rows), "wall": wall,
            "rate": len(rows) / wall,
            # a window too short to hold an epoch: the search's whole rate stands in
            "steady_rate": inside / (end - start) if end > start and inside else len(rows) / wall,
            "on_gpu": sum(bool((t.get("gpu_ids") or "").strip()) for t in trials),
            "gpus_per_trial": run["gpus_per_trial"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ks", default="1,2,4,8,16,32", help="trials per GPU, comma-separated")
    p.add_argument("--epochs", type=int, default=20, help="epochs per trial")
    p.add_argument("--out", type=Path, required=True, help="folder for packing.md and .json")
    p.add_argument("--dry-run", action="store_true",
                   help="no CUDA: digits, tiny sizes, k = 1, 2 on 2 logical GPUs")
    args = p.parse_args()

    import ray
    import torch

    dry = args.dry_run
    if not dry and not torch.cuda.is_available():
        print("gpu_packing: no CUDA GPU is visible to torch (torch.cuda.is_available() is False); "
              "run this on a machine with an NVIDIA GPU and a CUDA build of torch, or pass "
              "--dry-run", file=sys.stderr)
        sys.exit(2)
    from kdsearch.cluster import hardware, init_ray
    from kdsearch.search import run_search

    ks = [1, 2] if dry else [int(k) for k in args.ks.split(",")]
    epochs = 1 if dry else args.epochs
    space = DRY_SPACE if dry else SPACE
    common = ["search.scheduler=fifo", "search.baseline=false", "search.per_width=false",
              "search.space={lr: {distribution: loguniform, low: 1.0e-3, high: 1.0e-2}}",
              "student.width=20", f"training.epochs={epochs}", "search.checkpoint_every_s=60"]
    if dry:
        common += ["teacher.width=64", "teacher.epochs=3"]
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        if dry:
            ray.init(address="local", num_cpus=2, num_gpus=2, include_dashboard=False,
                     log_to_driver=False, logging_level="ERROR")
        else:
            init_ray(None)
        found = hardware()
        gpus, cores = int(found["gpus"]), int(found["cpus"])
        device = "2 logical GPUs (dry run)" if dry else \
            f"{torch.cuda.get_device_name(0)} x{gpus}"
        print(f"{device}; {cores} CPU cores; torch {torch.__version__}", flush=True)
        rows: list[dict[str, Any]] = []
        runs = [(f"gpu_k{k}", k, k * gpus, [f"search.trials_per_gpu={k}"]) for k in ks]
        runs.append(("cpu", 0, cores, ["search.gpus_per_trial=0"]))
        for name, k, n, extra in runs:
            # every trial at once: CPU threads shared out when trials outnumber the cores
            cpus = min(1.0, cores / n)
            t0 = time.perf_counter()
            run_search(space, overrides=[*common, *extra, f"name={name}",
                                         f"search.num_samples={n}",
                                         f"search.max_concurrent_trials={n}",
                                         f"search.cpus_per_trial={cpus!r}"],
                       results_dir=tmp, report=False)
            r = {"row": name, "k": k, **steady(Path(tmp) / name),
                 "script_seconds": time.perf_counter() - t0}
            rows.append(r)
            print(f"{name}: {r['trials']} trials, {r['epochs']} trial-epochs in "
                  f"{r['wall']:.1f} s; steady {r['steady_rate']:.2f} trial-epochs/s; on a GPU "
                  f"{r['on_gpu']}/{r['trials']}", flush=True)
        ray.shutdown()

    one = next(r["steady_rate"] for r in rows if r["k"] == 1)
    cpu = next(r["steady_rate"] for r in rows if r["row"] == "cpu")
    gpu_rows = [r for r in rows if r["k"]]
    top = max(r["steady_rate"] for r in gpu_rows)
    limit = min(r["k"] for r in gpu_rows if r["steady_rate"] >= 0.95 * top)
    lines = [f"{device}, {cores} CPU cores, torch {torch.__version__}, {epochs}-epoch trials, "
             f"one trial per slot ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}).", "",
             "| row | trials per GPU | trials | wall (s) | steady trial-epochs/s | vs k = 1 | "
             "vs CPU only | trials on a GPU |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['row']} | {r['k'] or '-'} | {r['trials']} | {r['wall']:.1f} | "
                     f"{r['steady_rate']:.2f} | {r['steady_rate'] / one:.2f}x | "
                     f"{r['steady_rate'] / cpu:.2f}x | {r['on_gpu']}/{r['trials']} |")
    lines += ["", f"packing limit these figures support: {limit} trials a GPU (the smallest k "
                  f"within 5% of the best steady rate)"]
    text = "\n".join(lines) + "\n"
    print("\n" + text)
    (args.out / "packing.md").write_text(text)
    (args.out / "packing.json").write_text(json.dumps(
        {"device": device, "cores": cores, "epochs": epochs, "dry_run": dry, "rows": rows,
         "limit": limit}, indent=2) + "\n")


if __name__ == "__main__":
    main()
