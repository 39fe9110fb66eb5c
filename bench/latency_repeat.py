"""How repeatable `kdsearch latency` is: the saved students of a results folder timed --rounds
times in a row, each round a fresh process, and the spread of each student's median.

For each student it prints the median of the rounds' batch-1 medians, their range as a share
of it ((max - min) / median), and the same for the throughput batch. A copy of the folder is
timed, so its latency.json is left as it was.

  .venv/bin/python bench/latency_repeat.py results/quickstart [--rounds 5] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("results", type=Path)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    seen: dict[tuple[str, int], list[tuple[float, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / args.results.name
        shutil.copytree(args.results, folder, ignore=shutil.ignore_patterns("search"))
        device = ""
        for r in range(args.rounds):
            subprocess.run([sys.executable, "-m", "kdsearch", "latency", "-q", str(folder),
                            "--threads", str(args.threads)], check=True, capture_output=True)
            record = json.loads((folder / "latency.json").read_text())
            device = record["device"]
            for t in record["timings"]:
                seen.setdefault((t["kind"], t["width"]), []).append((t["batch1_ms"],
                                                                     t["batch_ms"]))
            print(f"round {r + 1}: {len(record['timings'])} students timed", flush=True)
    print(f"\n{args.results.name} on {device}, {args.threads} thread(s), {args.rounds} rounds:")
    print(f"{'student':>22} {'1 example (ms)':>15} {'range':>7} {'batch (ms)':>11} {'range':>7}")
    ranges = []
    for (kind, width), values in sorted(seen.items()):
        ones, batches = [v[0] for v in values], [v[1] for v in values]
        m1, mb = statistics.median(ones), statistics.median(batches)
        r1, rb = (max(ones) - min(ones)) / m1, (max(batches) - min(batches)) / mb
        ranges += [r1, rb]
        print(f"{kind + ' w' + str(width):>22} {m1:15.4f} {r1:7.1%} {mb:11.4f} {rb:7.1%}")
    print(f"\nmedian range over students and batch sizes: {statistics.median(ranges):.1%}; "
          f"largest: {max(ranges):.1%}")


if __name__ == "__main__":
    main()
