"""kdsearch installed as a user installs it (not editable, from a copy of the sources) works from
any folder: the shipped search spaces are listed, copied out, and run by name."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow  # a venv, a build of kdsearch, and a small search (about a minute)
def test_a_non_editable_install_runs_the_shipped_spaces_from_any_folder(tmp_path: Path) -> None:
    sources = tmp_path / "sources"  # what a source distribution holds: no tests, no results
    sources.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(REPO / name, sources / name)
    for folder in ("kdsearch", "search_spaces"):
        shutil.copytree(REPO / folder, sources / folder,
                        ignore=shutil.ignore_patterns("__pycache__"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    # kdsearch alone into the new venv; its dependencies are this environment's (PYTHONPATH),
    # so that the test downloads no torch
    install = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "--no-deps",
                              str(sources)], capture_output=True, text=True, timeout=900)
    assert install.returncode == 0, install.stderr[-2000:]
    env = {**os.environ, "PYTHONPATH": sysconfig.get_paths()["purelib"],
           "KDSEARCH_CACHE_DIR": str(tmp_path / "cache")}
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()

    def kdsearch(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(venv / "bin" / "kdsearch"), *args], cwd=elsewhere, env=env,
                              capture_output=True, text=True, timeout=600)

    where = subprocess.run([str(venv / "bin" / "python"), "-c",
                            "import kdsearch; print(kdsearch.__file__)"], cwd=elsewhere,
                           env=env, capture_output=True, text=True, check=True).stdout
    assert where.startswith(str(venv)), where  # the installed copy, not this checkout
    listed = kdsearch("spaces")
    assert listed.returncode == 0, listed.stderr
    assert {line.split()[0] for line in listed.stdout.splitlines()} == {
        p.stem for p in (REPO / "search_spaces").glob("*.yaml")}
    copied = kdsearch("init", "quickstart")
    assert copied.returncode == 0 and (elsewhere / "quickstart.yaml").read_bytes() == \
        (REPO / "search_spaces" / "quickstart.yaml").read_bytes()
    again = kdsearch("init", "quickstart")  # never overwritten
    assert again.returncode == 2 and "already exists" in again.stderr
    (elsewhere / "quickstart.yaml").unlink()  # so that `run quickstart` takes the shipped one
    # a user's own Ray Tune callback, named on the command line, found in this folder
    (elsewhere / "recorder.py").write_text(
        "from ray import tune\n\n\n"
        "class Recorder(tune.Callback):\n"
        "    def on_trial_result(self, iteration, trials, trial, result, **info):\n"
        "        with open('seen.txt', 'a') as f:\n"
        "            f.write(f\"{trial.trial_id} {result['epoch']}\\n\")\n")
    ran = kdsearch("run", "quickstart", "--callback", "recorder:Recorder", "--no-report",
                   "--set", "search.num_samples=2",
                   "--set", "search.baseline=false", "--set", "training.epochs=2",
                   "--set", "search.grace_period=1", "--set", "teacher.width=64",
                   "--set", "teacher.epochs=2")
    assert ran.returncode == 0, (ran.stdout + ran.stderr)[-3000:]
    progress = (elsewhere / "results" / "quickstart" / "progress.csv").read_text()
    seen = (elsewhere / "seen.txt").read_text().splitlines()
    assert len(seen) == len(progress.splitlines()) - 1 == 4  # 2 trials x 2 epochs
