"""Two variants of a search space, paired by search seed: which finds better settings per width?

Runs the space (report off) once per search seed for each variant, a variant being a list of
`--set` overrides, interleaved seed by seed so that a slow hour weighs on both alike. For each
(seed, kind, width) it takes the val_acc of the trial the report would retrain
(`search.best_trial`: full-budget trials first, then the highest val_acc) and compares the two
variants paired: mean difference, better/worse/equal, paired t-test and Wilcoxon p-values. The
search's own metric only: the test split is never read.

Usage (KDSEARCH_DATA_DIR and KDSEARCH_CACHE_DIR as in RESULTS.md):
  .venv/bin/python bench/paired_variants.py --a "search.space.alpha.high=1.0" \\
      --b "search.space.alpha.high=0.5" [--space search_spaces/mnist_mlp.yaml]
      [--common "search.baseline=false"] [--seeds 0 1 2] [--results DIR]

A search already finished in --results (named <variant>_<seed>) is not run again, so an
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
from kdsearch.results import best_trial

REPO = Path(__file__).resolve().parents[1]


def _finished(folder: Path) -> bool:
    run = folder / "run.json"
    return run.exists() and json.loads(run.read_text()).get("search", {}).get("status") == \
        "finished"


def best_by_arm(trials: Path) -> tuple[dict[tuple[str, str], dict[str, str]], int]:
    """(kind, width) -> the row of the trial the report would pick; all trial-epochs."""
    with open(trials, newline="") as f:
        rows = list(csv.DictReader(f))
    best = {}
    for phase, width in sorted({(r["phase"], r["width"]) for r in rows}):
        found = best_trial([r for r in rows if r["width"] == width], phase, [])
        if found is not None:
            best[(phase, width)] = found[1]
    return best, sum(int(r["epochs"]) for r in rows)


def compare(space: str, variants: dict[str, list[str]], seeds: list[int], root: Path,
            common: list[str] = ()) -> None:
    """Run both variants for every seed (skipping finished ones) and print the paired table."""
    cfg = load_config(space)
    for seed in seeds:
        for name, sets in variants.items():
            out = root / f"{name}_{seed}"
            if _finished(out / cfg.name):
                continue
            t0 = time.time()
            run_search(space, overrides=[f"search.seed={seed}", *common, *sets],
                       results_dir=out, report=False, force=True)
            print(f"seed {seed}, {name}: {time.time() - t0:.0f} s", flush=True)

    (na, nb) = variants
    shown = [k for k in ("temperature", "alpha", "lr")]
    print(f"\n{cfg.name}: best val_acc per width, {na} vs {nb}")
    print(f"| seed | kind | width | {na} | {nb} | difference (points) | {nb}'s setting |")
    print("|---:|---|---:|---:|---:|---:|---|")
    a, b, epochs = [], [], {name: 0 for name in variants}
    for seed in seeds:
        best = {}
        for name in variants:
            best[name], n = best_by_arm(root / f"{name}_{seed}" / cfg.name / "trials.csv")
            epochs[name] += n
        for key, row in best[na].items():
            other = best[nb].get(key)
            if other is None:
                continue
            acc, acc_b = float(row["val_acc"]), float(other["val_acc"])
            setting = " ".join(f"{k}={float(other[k]):.3g}" for k in shown
                               if other.get(k) not in (None, ""))
            print(f"| {seed} | {key[0]} | {key[1]} | {acc:.4f} | {acc_b:.4f} | "
                  f"{(acc_b - acc) * 100:+.2f} | {setting} |")
            a.append(acc)
            b.append(acc_b)
    d = np.array(b) - np.array(a)
    wilcoxon = stats.wilcoxon(d).pvalue if (d != 0).any() else 1.0
    print(f"\n{len(d)} width searches: mean difference {d.mean() * 100:+.3f} points "
          f"({nb} minus {na}); better {int((d > 0).sum())}, worse {int((d < 0).sum())}, "
          f"equal {int((d == 0).sum())}; paired t-test p = {stats.ttest_rel(b, a).pvalue:.2f}, "
          f"Wilcoxon p = {wilcoxon:.2f}; trial-epochs {epochs[na]} vs {epochs[nb]}; "
          f"results in {root}")


def _sets(text: str) -> list[str]:
    return text.split()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--space", default=str(REPO / "search_spaces" / "mnist_mlp.yaml"))
    p.add_argument("--a", default="", help="variant A's overrides, space-separated (default: none)")
    p.add_argument("--b", required=True, help="variant B's overrides, space-separated")
    p.add_argument("--names", nargs=2, default=["A", "B"])
    p.add_argument("--common", default="", help="overrides of both variants")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--results", type=Path, default=None)
    args = p.parse_args()
    root = args.results or Path(tempfile.mkdtemp(prefix="kd-variants-"))
    compare(args.space, {args.names[0]: _sets(args.a), args.names[1]: _sets(args.b)},
            args.seeds, root, _sets(args.common))


if __name__ == "__main__":
    main()
