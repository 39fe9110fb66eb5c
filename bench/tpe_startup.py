"""TPE's random start-up trials on a per-width search: Optuna's 10 against fewer, paired by seed.

With `per_width`, each width has its own TPE searcher and an equal share of the trials:
`mnist_mlp.yaml`'s 32 per kind over 4 widths gives 8 per width, all inside TPE's 10 random
start-up trials, so that search is random search with ASHA. This runs the space (report off)
once per search seed with `search.startup_trials` unset (Optuna's 10) and once with
`--startup`, and compares, per (seed, kind, width), the val_acc of the trial the report would
retrain (`search.best_trial`: full-budget trials first, then the highest val_acc), paired
(`bench/paired_variants.py`, which compares any two variants of a space).

Usage (KDSEARCH_DATA_DIR and KDSEARCH_CACHE_DIR as in RESULTS.md):
  .venv/bin/python bench/tpe_startup.py [--space search_spaces/mnist_mlp.yaml] [--startup 3]
      [--seeds 0 1 2 3 4 5 6 7] [--results DIR]

A search already finished in --results (named <startup>_<seed>) is not run again, so an
interrupted comparison continues where it stopped.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from paired_variants import compare  # noqa: E402  (bench/, beside this script)

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--space", default=str(REPO / "search_spaces" / "mnist_mlp.yaml"))
    p.add_argument("--startup", type=int, default=3)
    p.add_argument("--seeds", type=int, nargs="+", default=list(range(8)))
    p.add_argument("--results", type=Path, default=None)
    args = p.parse_args()
    root = args.results or Path(tempfile.mkdtemp(prefix="kd-tpe-startup-"))
    compare(args.space, {"default": [], str(args.startup): [
        f"search.startup_trials={args.startup}"]}, args.seeds, root)


if __name__ == "__main__":
    main()
