"""GPU packing: how many small MNIST students one GPU should run at once.

On one machine with a CUDA GPU, from one run of this script, prints:

  1. the teacher's training time on the GPU (mnist_mlp.yaml's 2x1200 teacher, 12 epochs, data on
     the GPU), written to a fresh teacher cache that the searches below then read;
  2. for k = 1, 2, 4, 8, 16 trials sharing the GPU (search.gpus_per_trial = 1/k,
     search.max_concurrent_trials = k): the aggregate trial-epochs per second of a real search
     (mnist_mlp.yaml, width fixed at 20, FIFO so that every trial runs its whole budget, no
     baseline), over the whole phase and over its steady state (first to last reported epoch),
     and the speed-up over k = 1;
  3. the wall time of one full mnist_mlp search (search, baseline, final evaluation, report) with
     kdsearch's own GPU share (gpus_per_trial left null).

Each trial moves the data and the teacher's logits to its GPU once (trainable.trial_inputs);
the script checks in trials.csv that the trials really got a GPU. Exits with status 2 and a
one-line message when no CUDA GPU is visible.

Usage (MNIST files in torchvision layout under $KDSEARCH_DATA_DIR):
  KDSEARCH_DATA_DIR=/tmp/kd-data .venv/bin/python bench/gpu_packing.py [--ks 1,2,4,8,16]
      [--epochs 5] [--trials-per-slot 2] [--no-full]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SPACE = REPO / "search_spaces" / "mnist_mlp.yaml"


def _rates(out: Path) -> dict[str, float]:
    """Trial-epochs, the search's wall, and rates over the search and over its steady state."""
    rows = list(csv.DictReader(open(out / "progress.csv")))
    run = json.loads((out / "run.json").read_text())
    search = run["search"]
    walls = sorted(float(r["wall_time"]) for r in rows)
    first_start = min(float(r["wall_time"]) - float(r["epoch_seconds"]) for r in rows)
    steady = walls[-1] - first_start
    trials = list(csv.DictReader(open(out / "trials.csv")))
    on_gpu = sum(1 for t in trials if (t.get("gpu_ids") or "").strip())
    return {"epochs": len(rows), "phase_wall": search["wall_seconds"],
            "rate": len(rows) / search["wall_seconds"], "steady_rate": len(rows) / steady,
            "trials": len(trials), "on_gpu": on_gpu,
            "mean_epoch_s": sum(float(r["epoch_seconds"]) for r in rows) / len(rows)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ks", default="1,2,4,8,16", help="trials per GPU to try, comma-separated")
    p.add_argument("--epochs", type=int, default=5, help="epochs per trial in the packing runs")
    p.add_argument("--trials-per-slot", type=int, default=2,
                   help="num_samples = k x this, so each slot runs more than one trial")
    p.add_argument("--no-full", action="store_true", help="skip the full mnist_mlp search")
    args = p.parse_args()

    import torch

    if not torch.cuda.is_available() or torch.cuda.device_count() == 0:
        print("gpu_packing: no CUDA GPU is visible to torch (torch.cuda.is_available() is False); "
              "run this on a machine with an NVIDIA GPU and a CUDA build of torch",
              file=sys.stderr)
        sys.exit(2)
    ks = [int(k) for k in args.ks.split(",")]
    cores = os.cpu_count() or 1
    print(f"GPU: {torch.cuda.get_device_name(0)} (x{torch.cuda.device_count()}); CPU cores: "
          f"{cores}; torch {torch.__version__}", flush=True)

    import ray

    from kdsearch.config import default_data_dir, load_config
    from kdsearch.data import load_dataset
    from kdsearch.cluster import init_ray
    from kdsearch.search import run_search
    from kdsearch.teacher import get_teacher

    with tempfile.TemporaryDirectory() as tmp:
        # a fresh cache: the teacher is trained here, on the GPU, and the searches then read it
        # (run_search itself would train a missing teacher on the driver's CPU)
        os.environ["KDSEARCH_CACHE_DIR"] = str(Path(tmp) / "cache")
        cfg = load_config(SPACE)
        data = load_dataset(cfg.dataset, data_dir=default_data_dir(cfg),
                            cache_dir=Path(tmp) / "cache", device="cuda")
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        teacher = get_teacher(cfg, data, cache_dir=Path(tmp) / "cache", progress=False)
        torch.cuda.synchronize()
        teacher_s = time.perf_counter() - t0
        print(f"teacher (2x1200, {cfg.teacher.epochs} epochs, data on the GPU): {teacher_s:.1f} s "
              f"({teacher_s / cfg.teacher.epochs:.2f} s/epoch), val_acc {teacher.val_acc:.4f}",
              flush=True)
        del data, teacher
        torch.cuda.empty_cache()

        init_ray(None)
        table = []
        for k in ks:
            # CPU threads: one per trial while the cores last (a trial on a GPU needs few)
            cpus = 1.0 if k <= cores else cores / k
            name = f"pack_{k}"
            t0 = time.perf_counter()
            run_search(SPACE, overrides=[
                f"name={name}", f"search.gpus_per_trial={1 / k!r}",
                f"search.max_concurrent_trials={k}", f"search.cpus_per_trial={cpus!r}",
                f"search.num_samples={k * args.trials_per_slot}",
                f"training.epochs={args.epochs}", "search.scheduler=fifo",
                "search.baseline=false", "search.space.width.values=[20]",
                "search.checkpoint_every_s=60"],
                results_dir=tmp, report=False, quiet=True)
            r = _rates(Path(tmp) / name)
            r.update(k=k, wall=time.perf_counter() - t0)
            table.append(r)
            print(f"k={k:2d}: {r['epochs']} trial-epochs in {r['phase_wall']:.1f} s "
                  f"-> {r['rate']:.2f}/s (steady {r['steady_rate']:.2f}/s), mean epoch "
                  f"{r['mean_epoch_s']:.2f} s, trials on a GPU {r['on_gpu']}/{r['trials']}",
                  flush=True)

        full = None
        if not args.no_full:
            t0 = time.perf_counter()
            run_search(SPACE, overrides=["name=full"], results_dir=tmp, report=True, quiet=True)
            full = time.perf_counter() - t0
            run = json.loads((Path(tmp) / "full" / "run.json").read_text())
        ray.shutdown()

    base = table[0]["rate"] if table and table[0]["k"] == 1 else None
    print()
    print("| trials per GPU (k) | gpus_per_trial | trial-epochs | phase wall (s) | "
          "trial-epochs/s | steady trial-epochs/s | mean epoch (s) | speed-up vs k=1 |")
    print("|---|---|---|---|---|---|---|---|")
    for r in table:
        up = f"{r['rate'] / base:.2f}" if base else "-"
        print(f"| {r['k']} | {1 / r['k']:.4g} | {r['epochs']} | {r['phase_wall']:.1f} | "
              f"{r['rate']:.2f} | {r['steady_rate']:.2f} | {r['mean_epoch_s']:.2f} | {up} |")
    print(f"\nteacher training on the GPU: {teacher_s:.1f} s")
    if full is not None:
        print(f"full mnist_mlp search + baseline + final evaluation + report: {full:.0f} s "
              f"(search {run['search']['wall_seconds']:.0f} s; kdsearch's own share: "
              f"gpus_per_trial = {run['gpus_per_trial']:.4g}, "
              f"{run['max_concurrent_trials']} trials at once)")


if __name__ == "__main__":
    main()
