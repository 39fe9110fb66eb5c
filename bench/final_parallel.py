"""The final evaluation in one process against Ray tasks side by side, on one results folder.

`kdsearch report` retrains the best settings one after the other in its own process;
`kdsearch run` and `kdsearch resume` hand the same retrainings to Ray tasks (`trainable.ray_runner`)
with the trials' resources each. This script runs both on copies of a finished search's folder,
one after the other in one run (Ray tasks first: their workers start fresh, as after a search),
and prints each wall time (Ray's start and the driver's loading of the data and teacher for the
tasks excluded: `kdsearch run` has both already), the ratio, and whether the two gave the same
test accuracies. With --repeats, later Ray runs find their workers warm; they are shown apart.

Usage:
  .venv/bin/python bench/final_parallel.py RESULTS_DIR [--repeats N]

RESULTS_DIR is results/<name> of a finished search (its teacher in $KDSEARCH_CACHE_DIR and its
data where its config says); it is copied, not changed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("results", type=Path)
    p.add_argument("--repeats", type=int, default=1)
    args = p.parse_args()

    import ray

    from kdsearch.cluster import init_ray
    from kdsearch.final import evaluate_final
    from kdsearch.inputs import load_inputs
    from kdsearch.results import read_config
    from kdsearch.search import set_up
    from kdsearch.trainable import ray_runner

    cfg = read_config(args.results)
    init_ray(None)
    setup = set_up(cfg, load_inputs(cfg))
    resources = setup.resources
    walls: dict[str, list[float]] = {"Ray tasks": [], "one process": []}
    accs: dict[str, list] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            for label, runner in (("Ray tasks", ray_runner(
                    setup.payload, gpus_per_task=resources.gpus_per_trial)),
                                  ("one process", None)):
                folder = Path(tmp) / f"{r}-{label.replace(' ', '_')}"
                shutil.copytree(args.results, folder, ignore=shutil.ignore_patterns("search"))
                (folder / "final.json").unlink(missing_ok=True)
                t0 = time.perf_counter()
                final = evaluate_final(folder, runner=runner)
                walls[label].append(time.perf_counter() - t0)
                accs.setdefault(label, [row.test_accs for row in final.rows])
                print(f"repeat {r + 1}, {label}: {walls[label][-1]:.1f} s, "
                      f"{final.retrained} retrainings", flush=True)
    ray.shutdown()
    one, tasks = min(walls["one process"]), walls["Ray tasks"][0]
    print(f"\n{cfg.name}: {final.retrained} retrainings on {os.cpu_count()} cores, "
          f"{resources.cpus_per_trial:g} CPU and {resources.gpus_per_trial:g} GPU each")
    print(f"  one process (kdsearch report)       : {one:6.1f} s (best of {args.repeats})")
    print(f"  Ray tasks, fresh workers (as in run) : {tasks:6.1f} s")
    if args.repeats > 1:
        print(f"  Ray tasks, warm workers              : {min(walls['Ray tasks'][1:]):6.1f} s")
    print(f"  speed-up (fresh workers)             : {one / tasks:6.2f}x")
    print(f"  same test accuracies                 : {accs['one process'] == accs['Ray tasks']}")


if __name__ == "__main__":
    main()
