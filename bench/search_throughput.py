"""Search throughput: how busy a real search keeps the cores, and what Ray costs.

Runs a search space end to end (default: the quickstart, without the report) in a temporary
results folder, in this process, and prints, from one run:

  wall time (Ray start included), Ray start, per-phase wall, trial-epochs per minute,
  core utilisation = sum of trial training time / (wall time x cores),
  the wall not spent training (1 - utilisation), split into Ray's start, the teacher and data
  (trained in the driver when not cached), the search's start-up and the rest (gaps between
  trials).

Usage:
  .venv/bin/python bench/search_throughput.py [SPACE.yaml] [--set key=value ...]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import tempfile
import time
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("space", nargs="?", default=str(REPO / "search_spaces" / "quickstart.yaml"))
    p.add_argument("--set", action="append", default=[])
    p.add_argument("--cores", type=int, default=os.cpu_count())
    args = p.parse_args()

    import ray

    from kdsearch.cluster import init_ray
    from kdsearch.search import run_search

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        init_ray(None)
        ray_start = time.perf_counter() - t0
        run_search(args.space, overrides=args.set, results_dir=tmp, report=False)
        wall = time.perf_counter() - t0
        ray.shutdown()
        out = next(Path(tmp).iterdir())
        rows = list(csv.DictReader(open(out / "progress.csv")))
        run = json.loads((out / "run.json").read_text())

    train = sum(float(r["epoch_seconds"]) for r in rows)
    search = run["search"]  # both phases, side by side in one Tuner
    search_wall = search["wall_seconds"]
    # start-up: from the search's start to its first reported epoch (actors, imports)
    first = min(float(r["wall_time"]) - float(r["epoch_seconds"]) for r in rows)
    startup = first - (search["finished"] - search_wall)
    trials = defaultdict(int)
    for r in rows:
        trials[(r["phase"], r["trial_id"])] += 1
    cores = args.cores
    util = train / (wall * cores)
    driver = wall - ray_start - search_wall
    print(f"space: {args.space} {' '.join(args.set)}")
    print(f"cores: {cores}; trials: {len(trials)}; trial-epochs: {len(rows)}")
    print(f"wall time, Ray start included : {wall:7.1f} s")
    print(f"  Ray start                   : {ray_start:7.1f} s")
    print(f"  teacher + data (driver)     : {driver:7.1f} s")
    print(f"  search (both phases)        : {search_wall:7.1f} s")
    print(f"    start-up (to 1st epoch)   : {startup:7.1f} s")
    print(f"sum of trial training time    : {train:7.1f} s")
    print(f"trial-epochs per minute       : {len(rows) / wall * 60:7.0f}")
    print(f"core utilisation (target 0.8) : {util:7.2f}  = training / (wall x cores)")
    print(f"  within the search           : {train / (search_wall * cores):7.2f}")
    other = wall - train / cores - ray_start - driver - startup
    print(f"wall not spent training       : {1 - util:7.2f}  = Ray start {ray_start / wall:.2f} + "
          f"teacher and data {driver / wall:.2f} + search start-up {startup / wall:.2f} + "
          f"the rest (gaps between trials, idle cores) {other / wall:.2f}")

if __name__ == "__main__":
    main()
