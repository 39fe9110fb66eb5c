"""The benchmark scripts that only run on a GPU machine still run, dry, on this one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow  # three small searches and a quickstart (about a minute on 2 cores)
def test_the_gpu_check_runs_dry_on_the_cpu(tmp_path: Path) -> None:
    env = {**os.environ, "KDSEARCH_CACHE_DIR": str(tmp_path / "cache")}
    run = subprocess.run(["bash", str(REPO / "bench" / "gpu_check.sh"), "--dry-run",
                          "--python", sys.executable, "--out", str(tmp_path / "out")],
                         capture_output=True, text=True, timeout=900, env=env)
    assert run.returncode == 0, (run.stdout + run.stderr)[-4000:]
    out = tmp_path / "out"
    log = (out / "check.log").read_text()
    for step in ("install", "GPU tests (pytest -m gpu)", "quickstart", "final evaluation",
                 "packing", "done in"):
        assert f": {step}" in log, step
    assert "3 skipped" in log  # the GPU tests were collected, and skipped without CUDA
    packing = json.loads((out / "packing.json").read_text())
    assert packing["dry_run"] and [r["row"] for r in packing["rows"]] == [
        "gpu_k1", "gpu_k2", "cpu"]
    for r in packing["rows"]:
        assert r["epochs"] == r["trials"] * packing["epochs"] and r["steady_rate"] > 0
        assert r["on_gpu"] == (r["trials"] if r["k"] else 0)  # logical GPUs held, CPU row none
    assert [r["gpus_per_trial"] for r in packing["rows"]] == [1.0, 0.5, 0.0]
    assert "| gpu_k2 | 2 | 4 |" in (out / "packing.md").read_text()
    quickstart = json.loads((out / "quickstart.json").read_text())
    assert quickstart["trials"] == 2 and quickstart["final_device"] == "cpu"
    assert "same test accuracies                 : True" in (out / "final_parallel.txt").read_text()
