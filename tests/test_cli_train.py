"""`python -m kdsearch train FILE` as a user runs it: bad input is one line and exit 2."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import REPO

# case -> (file name, file text or None for no file, what the line must name after the file)
BAD_INPUT: dict[str, tuple[str, str | None, list[str]]] = {
    "unknown dataset": ("imagenet.yaml", "dataset:\n  name: imagenet\n",
                        ["dataset.name", "imagenet"]),
    "alpha 1.5": ("alpha.yaml", "training:\n  alpha: 1.5\n", ["training.alpha", "1.5"]),
    "temperature 0": ("temp.yaml", "training:\n  temperature: 0\n",
                      ["training.temperature", "= 0"]),
    "width 0": ("width.yaml", "student:\n  width: 0\n", ["student.width", "= 0"]),
    "missing file": ("absent.yaml", None, ["no such file"]),
    "yaml does not parse": ("broken.yaml", "training:\n  alpha: [0.5\n",
                            ["does not parse", "line"]),
    "unknown key": ("typo.yaml", "training:\n  temprature: 4\n",
                    ["training.temprature"]),
}


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str
    cwd: Path
    cache: Path


def _start(cwd: Path, cache: Path, args: list[str]) -> subprocess.Popen[str]:
    # this checkout's package, whatever the venv has installed
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "KDSEARCH_CACHE_DIR": str(cache), "PYTHONPATH": path}
    env.pop("KDSEARCH_DEBUG", None)
    return subprocess.Popen([sys.executable, "-m", "kdsearch", "train", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.fixture(scope="module")
def bad_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Run]:
    """Every bad-input case, started at once (each is mostly interpreter and torch start-up)."""
    started = {}
    for case, (name, text, _) in BAD_INPUT.items():
        root = tmp_path_factory.mktemp("cli")
        cwd, cache = root / "work", root / "cache"
        cwd.mkdir()
        if text is not None:
            (cwd / name).write_text(text)
        started[case] = (_start(cwd, cache, [name, "--device", "cpu"]), cwd, cache)
    runs = {}
    for case, (proc, cwd, cache) in started.items():
        out, err = proc.communicate(timeout=120)
        runs[case] = Run(proc.returncode, out, err, cwd, cache)
    return runs


@pytest.mark.parametrize("case", list(BAD_INPUT), ids=list(BAD_INPUT))
def test_bad_input_is_one_line_and_exit_2(bad_runs: dict[str, Run], case: str) -> None:
    name, text, names = BAD_INPUT[case]
    run = bad_runs[case]
    assert run.returncode == 2, run.stderr
    assert "Traceback" not in run.stderr + run.stdout
    lines = run.stderr.splitlines()
    assert len(lines) == 1, run.stderr
    assert name in lines[0]
    for word in names:
        assert word in lines[0].split(name, 1)[1], lines[0]
    assert run.stdout == ""
    # nothing written: no cache, no stray files where it ran
    assert not run.cache.exists()
    assert sorted(p.name for p in run.cwd.iterdir()) == ([] if text is None else [name])


@pytest.mark.slow
def test_train_prints_one_line_per_epoch(tmp_path: Path) -> None:
    cwd, cache = tmp_path / "work", tmp_path / "cache"
    cwd.mkdir()
    (cwd / "tiny.yaml").write_text(
        "dataset: {name: digits}\n"
        "teacher: {width: 64, epochs: 2}\n"
        "student: {width: 16}\n"
        "training: {epochs: 2, batch_size: 64, alpha: 0.5, temperature: 4}\n"
        # a search part that `run` refuses (ASHA's grace period beyond the 2 epochs): train
        # runs one setting without Ray Tune and takes the file
        "search: {grace_period: 5, space: {lr: {distribution: loguniform, low: 1.0e-4, "
        "high: 1.0e-2}}}\n")
    proc = _start(cwd, cache, ["tiny.yaml", "--device", "cpu"])
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    epochs = [line for line in out.splitlines() if line.startswith("epoch")]
    assert len(epochs) == 2, out
    for i, line in enumerate(epochs, 1):
        assert line.split()[1] == f"{i}/2" and "val_acc" in line
        assert 0.0 <= float(line.split("val_acc")[1].split()[0]) <= 1.0
    assert "teacher mlp_teacher" in out and "trained now" in out
    assert "final val_acc" in out.splitlines()[-1]
    # the teacher went into KDSEARCH_CACHE_DIR, nothing into the working directory
    assert len(list((cache / "teachers").glob("*/teacher.pt"))) == 1
    assert sorted(p.name for p in cwd.iterdir()) == ["tiny.yaml"]
