"""Search efficiency: TPE + ASHA (kdsearch's default) against random search without early stopping.

Same space, same trial budget, several search seeds each, on MNIST with a 2xW student and a few
epochs per trial. For every seed, the target is the best val_acc that random search finds; the
figure is the trial-epochs each method spends before some trial first reports a val_acc at least
that high (epochs counted in the order they arrived). Target: the default needs <= 1/3.

Usage (MNIST files in torchvision layout under $KDSEARCH_DATA_DIR, e.g. a writable copy of the
original .gz files):
  KDSEARCH_DATA_DIR=/tmp/kd-data .venv/bin/python bench/search_efficiency.py [--seeds 5]
"""

from __future__ import annotations

import argparse
import csv
import math
import statistics
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SPACE = REPO / "search_spaces" / "mnist_mlp.yaml"


def epochs_to_reach(rows: list[dict[str, str]], target: float) -> int | None:
    for i, r in enumerate(rows, 1):
        if float(r["val_acc"]) >= target - 1e-9:
            return i
    return None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--samples", type=int, default=24, help="trials per search")
    p.add_argument("--epochs", type=int, default=6, help="epoch budget per trial")
    p.add_argument("--set", action="append", default=[], help="extra overrides for both")
    args = p.parse_args()

    import ray

    from kdsearch.cluster import init_ray
    from kdsearch.search import run_search

    init_ray(None)
    # one searcher over the joint space (per_width off): TPE against random over the same space
    common = [f"search.num_samples={args.samples}", f"training.epochs={args.epochs}",
              "search.baseline=false", "search.grace_period=1", "search.reduction_factor=3",
              "search.checkpoint_every_s=60", "search.per_width=false", *args.set]
    table = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(args.seeds):
            runs = {}
            for label, algo, sched in (("random+fifo", "random", "fifo"),
                                       ("tpe+asha", "tpe", "asha")):
                t0 = time.perf_counter()
                name = f"eff_{label.replace('+', '_')}_{seed}"
                run_search(SPACE, overrides=[*common, f"search.seed={seed}",
                                             f"search.algorithm={algo}",
                                             f"search.scheduler={sched}", f"name={name}"],
                           results_dir=tmp, report=False)
                rows = list(csv.DictReader(open(Path(tmp) / name / "progress.csv")))
                rows.sort(key=lambda r: float(r["wall_time"]))
                runs[label] = (rows, time.perf_counter() - t0)
            rand_rows, rand_wall = runs["random+fifo"]
            tpe_rows, tpe_wall = runs["tpe+asha"]
            target = max(float(r["val_acc"]) for r in rand_rows)
            need_rand = epochs_to_reach(rand_rows, target)
            need_tpe = epochs_to_reach(tpe_rows, target)
            table.append({"seed": seed, "target": target, "random": need_rand,
                          "random_total": len(rand_rows), "tpe": need_tpe,
                          "tpe_total": len(tpe_rows),
                          "tpe_best": max(float(r["val_acc"]) for r in tpe_rows),
                          "walls": (rand_wall, tpe_wall)})
            print(f"seed {seed}: target {target:.4f} | random+fifo reached it after "
                  f"{need_rand}/{len(rand_rows)} trial-epochs ({rand_wall:.0f} s) | tpe+asha "
                  f"after {need_tpe if need_tpe else 'never'}/{len(tpe_rows)} "
                  f"(best {table[-1]['tpe_best']:.4f}, {tpe_wall:.0f} s)", flush=True)
    ray.shutdown()

    print()
    print("| seed | random's best val_acc | random+fifo: trial-epochs to reach it | "
          "tpe+asha: trial-epochs to reach it | ratio | tpe+asha best | total trial-epochs "
          "(random / tpe) |")
    print("|---|---|---|---|---|---|---|")
    ratios = []
    for t in table:
        ratio = t["tpe"] / t["random"] if t["tpe"] else None
        if ratio is not None:
            ratios.append(ratio)
        print(f"| {t['seed']} | {t['target']:.4f} | {t['random']} | "
              f"{t['tpe'] if t['tpe'] else 'not reached'} | "
              f"{f'{ratio:.2f}' if ratio is not None else '-'} | {t['tpe_best']:.4f} | "
              f"{t['random_total']} / {t['tpe_total']} |")
    reached = sum(1 for t in table if t["tpe"])
    # the median over all seeds, a seed where tpe+asha never got there counting as infinitely
    # slow: a median over the reached seeds alone would hide the seeds it missed
    everyone = sorted(ratios + [math.inf] * (len(table) - reached))
    median = statistics.median(everyone) if everyone else math.inf
    print(f"\ntpe+asha reached random's best in {reached}/{len(table)} seeds; median ratio over "
          f"all seeds {'not reached' if math.isinf(median) else f'{median:.2f}'} (target <= 0.33; "
          f"over the reached seeds only: "
          f"{f'{statistics.median(ratios):.2f}' if ratios else '-'}); total trial-epochs "
          f"{sum(t['tpe_total'] for t in table)} vs {sum(t['random_total'] for t in table)}")


if __name__ == "__main__":
    main()
