"""What Ray Tune's own per-trial outputs cost the quickstart, measured side by side.

Runs `kdsearch run search_spaces/quickstart.yaml` (the whole job: search, final evaluation,
report; the teacher cached by a first, untimed run) --rounds times with `search.trial_logs`
true and false in turn, and prints each wall time, the medians and their ratio. kdsearch keeps
the outputs on by default as long as they cost at most 5% of the quickstart.

  .venv/bin/python bench/trial_logs.py [--rounds 3]
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
KDSEARCH = [sys.executable, "-m", "kdsearch", "run",
            str(REPO / "search_spaces" / "quickstart.yaml")]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "KDSEARCH_CACHE_DIR": os.environ.get(
            "KDSEARCH_CACHE_DIR", str(Path(tmp) / "cache"))}

        def run(name: str, logs: bool) -> float:
            t0 = time.perf_counter()
            subprocess.run([*KDSEARCH, "--results-dir", tmp, "--set", f"name={name}",
                            "--set", f"search.trial_logs={str(logs).lower()}"],
                           env=env, check=True, capture_output=True)
            return time.perf_counter() - t0

        run("warm-up", False)  # the teacher, trained and cached: not timed
        walls: dict[bool, list[float]] = {True: [], False: []}
        for r in range(args.rounds):
            for logs in ((True, False) if r % 2 == 0 else (False, True)):
                walls[logs].append(run(f"r{r}-{logs}", logs))
                print(f"round {r + 1}, trial_logs={str(logs).lower():5}: {walls[logs][-1]:.1f} s",
                      flush=True)
    on, off = statistics.median(walls[True]), statistics.median(walls[False])
    print(f"\nmedian wall: trial_logs on {on:.1f} s, off {off:.1f} s; on/off = {on / off:.3f} "
          f"({100 * (on / off - 1):+.1f}%)")


if __name__ == "__main__":
    main()
