"""What Ray Tune's own per-trial outputs cost the quickstart, measured side by side.

Runs `kdsearch run search_spaces/quickstart.yaml` (the whole job: search, final evaluation,
report; the teacher cached by a first, untimed run) --rounds times with each
`search.trial_logs` setting in turn (none; json: Tune's JSON logger alone, what
`ray.tune.ExperimentAnalysis` reads; all: every Tune logger), and prints each wall time, the
medians and their ratios to none. Each json and all run is then opened with
ExperimentAnalysis, and the rows of its trial dataframes are counted.

  .venv/bin/python bench/trial_logs.py [--rounds 3] [--modes none json all]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
KDSEARCH = [sys.executable, "-m", "kdsearch", "run", "-q",
            str(REPO / "search_spaces" / "quickstart.yaml")]


def rows_seen(folder: Path) -> int:
    """The epochs ExperimentAnalysis finds in a search's trial dataframes."""
    code = ("import sys; from ray.tune import ExperimentAnalysis; "
            "a = ExperimentAnalysis(sys.argv[1]); "
            "print(sum(len(f) for f in a.trial_dataframes.values()))")
    out = subprocess.run([sys.executable, "-c", code, str(folder / "search")], check=True,
                         capture_output=True, text=True).stdout.split()
    return int(out[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--modes", nargs="+", default=["none", "json", "all"])
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "KDSEARCH_CACHE_DIR": os.environ.get(
            "KDSEARCH_CACHE_DIR", str(Path(tmp) / "cache"))}

        def run(name: str, mode: str) -> float:
            t0 = time.perf_counter()
            subprocess.run([*KDSEARCH, "--results-dir", tmp, "--set", f"name={name}",
                            "--set", f"search.trial_logs={mode}"],
                           env=env, check=True, capture_output=True)
            return time.perf_counter() - t0

        run("warm-up", "none")  # the teacher, trained and cached: not timed
        walls: dict[str, list[float]] = {m: [] for m in args.modes}
        for r in range(args.rounds):
            order = args.modes if r % 2 == 0 else list(reversed(args.modes))
            for mode in order:
                name = f"r{r}-{mode}"
                walls[mode].append(run(name, mode))
                seen = "" if mode == "none" else \
                    f", ExperimentAnalysis sees {rows_seen(Path(tmp) / name)} epochs"
                print(f"round {r + 1}, trial_logs={mode:4}: {walls[mode][-1]:.1f} s{seen}",
                      flush=True)
    base = statistics.median(walls[args.modes[0]])
    print()
    for mode in args.modes:
        m = statistics.median(walls[mode])
        print(f"median wall, trial_logs={mode:4}: {m:.1f} s; /{args.modes[0]} = {m / base:.3f} "
              f"({100 * (m / base - 1):+.1f}%)")


if __name__ == "__main__":
    main()
