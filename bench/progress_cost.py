"""What the progress line costs the quickstart: a search with the line at every result against
one with it every 30 s (the default), side by side.

Runs the quickstart's search (`run_search(..., report=False)`: the search alone, its teacher
cached by a first, untimed run) --rounds times with `status.PROGRESS_EVERY_S` 0 (a line after
every reported epoch: the most it can cost) and 30 in turn, with kdsearch's INFO messages
handled (written to a null stream), and prints each wall time, the medians and their ratio.

  .venv/bin/python bench/progress_cost.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import io
import logging
import statistics
import tempfile
import time
from pathlib import Path

import kdsearch.status
from kdsearch.search import run_search

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = REPO / "search_spaces" / "quickstart.yaml"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, stream=io.StringIO(), format="%(message)s")
    lines = {"every result": 0.0, "every 30 s": 30.0}
    walls: dict[str, list[float]] = {k: [] for k in lines}
    with tempfile.TemporaryDirectory() as tmp:
        def run(name: str, every: float) -> float:
            kdsearch.status.PROGRESS_EVERY_S = every
            t0 = time.perf_counter()
            run_search(QUICKSTART, overrides=[f"name={name}"], results_dir=tmp, report=False)
            return time.perf_counter() - t0

        run("warm-up", 30.0)  # the teacher, trained and cached: not timed
        for r in range(args.rounds):
            order = list(lines) if r % 2 == 0 else list(reversed(lines))
            for label in order:
                walls[label].append(run(f"r{r}-{lines[label]:g}", lines[label]))
                print(f"round {r + 1}, progress line {label}: {walls[label][-1]:.1f} s",
                      flush=True)
    every, default = (statistics.median(walls[k]) for k in lines)
    print(f"\nmedian wall of the search: a line every result {every:.1f} s, every 30 s "
          f"{default:.1f} s; ratio {every / default:.3f} ({100 * (every / default - 1):+.1f}%)")


if __name__ == "__main__":
    main()
