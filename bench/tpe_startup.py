"""TPE's random start-up trials on a per-width search: Optuna's 10 against fewer, paired by seed.

With `per_width`, each width has its own TPE searcher and an equal share of the trials:
`mnist_mlp.yaml`'s 32 per kind over 4 widths gives 8 per width, all inside TPE's 10 random
start-up trials, so that search is random search with ASHA. This runs the space (report off)
once per search seed with `search.startup_trials` unset (Optuna's 10) and once with
`--startup`, and compares, per (seed, kind, width), the val_acc of the trial the report would
retrain (`search.best_trial`: full-budget trials first, then the highest val_acc), paired.

Usage (KDSEARCH_DATA_DIR and KDSEARCH_CACHE_DIR as in RESULTS.md):
  .venv/bin/python bench/tpe_startup.py [--space search_spaces/mnist_mlp.yaml] [--startup 3]
      [--seeds 0 1 2 3 4 5 6 7] [--results DIR]

A search already finished in --results (named <startup>_<seed>) is not run again, so an
interrupted comparison continues where it stopped.
"""

from __future__ import annotations

import argparse
import csv
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy import stats

from kdsearch import run_search
from kdsearch.config import load_config
from kdsearch.search import best_trial

REPO = Path(__file__).resolve().parents[1]


def _finished(folder: Path) -> bool:
    run = folder / "run.json"
    return run.exists() and json.loads(run.read_text()).get("search", {}).get("status") == \
        "finished"


def _best_by_arm(trials: Path) -> tuple[dict[tuple[str, str], float], int]:
    """(kind, width) -> the val_acc of the trial the report would pick; all trial-epochs."""
    with open(trials, newline="") as f:
        rows = list(csv.DictReader(f))
    best = {}
    for phase, width in sorted({(r["phase"], r["width"]) for r in rows}):
        found = best_trial([r for r in rows if r["width"] == width], phase, [])
        if found is not None:
            best[(phase, width)] = float(found[1]["val_acc"])
    return best, sum(int(r["epochs"]) for r in rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--space", default=str(REPO / "search_spaces" / "mnist_mlp.yaml"))
    p.add_argument("--startup", type=int, default=3)
    p.add_argument("--seeds", type=int, nargs="+", default=list(range(8)))
    p.add_argument("--results", type=Path, default=None)
    args = p.parse_args()
    root = args.results or Path(tempfile.mkdtemp(prefix="kd-tpe-startup-"))
    cfg = load_config(args.space)
    variants = {"default": [], str(args.startup): [f"search.startup_trials={args.startup}"]}
    for seed in args.seeds:  # interleaved, so that a slow hour weighs on both alike
        for name, sets in variants.items():
            out = root / f"{name}_{seed}"
            if _finished(out / cfg.name):
                continue
            t0 = time.time()
            run_search(args.space, overrides=[f"search.seed={seed}", *sets], results_dir=out,
                       report=False, quiet=True, force=True)
            print(f"seed {seed}, startup {name}: {time.time() - t0:.0f} s", flush=True)

    print(f"\n{cfg.name}: best val_acc per width, TPE start-up 10 (Optuna's) vs {args.startup}")
    print("| seed | kind | width | 10 | %d | difference (points) |" % args.startup)
    print("|---:|---|---:|---:|---:|---:|")
    a, b, epochs = [], [], {name: 0 for name in variants}
    for seed in args.seeds:
        best = {}
        for name in variants:
            best[name], n = _best_by_arm(root / f"{name}_{seed}" / cfg.name / "trials.csv")
            epochs[name] += n
        for key, acc in best["default"].items():
            other = best[str(args.startup)][key]
            print(f"| {seed} | {key[0]} | {key[1]} | {acc:.4f} | {other:.4f} | "
                  f"{(other - acc) * 100:+.2f} |")
            a.append(acc)
            b.append(other)
    d = np.array(b) - np.array(a)
    wilcoxon = stats.wilcoxon(d).pvalue if (d != 0).any() else 1.0
    print(f"\n{len(d)} width searches: mean difference {d.mean() * 100:+.3f} points "
          f"(startup {args.startup} minus 10); better {int((d > 0).sum())}, worse "
          f"{int((d < 0).sum())}, equal {int((d == 0).sum())}; paired t-test p = "
          f"{stats.ttest_rel(b, a).pvalue:.2f}, Wilcoxon p = {wilcoxon:.2f}; trial-epochs "
          f"{epochs['default']} vs {epochs[str(args.startup)]}; results in {root}")


if __name__ == "__main__":
    main()
