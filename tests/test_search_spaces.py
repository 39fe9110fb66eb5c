"""The shipped search spaces load, and a bad one stops `kdsearch run` in one line, exit 2.

A bad space must fail before Ray starts and before anything is written: the CLI cases run
`python -m kdsearch run` for real (all at once, they are mostly interpreter start-up) and check
the exit code, that stderr is a single line naming the file, key and value, and that the
results folder was not created.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from kdsearch.config import SEARCHABLE, ConfigError, load_config

REPO = Path(__file__).resolve().parents[1]
SPACES = sorted((REPO / "search_spaces").glob("*.yaml"))
QUICKSTART = REPO / "search_spaces" / "quickstart.yaml"


@pytest.mark.parametrize("path", SPACES, ids=[p.stem for p in SPACES])
def test_shipped_space_loads_with_a_search_space(path: Path) -> None:
    cfg = load_config(path)
    assert cfg.name == path.stem  # names the results folder: results/<file stem>/
    assert cfg.search.space, f"{path.name} searches nothing"
    assert all(d.name in SEARCHABLE for d in cfg.search.space)
    assert cfg.search.num_samples >= 1


def test_shipped_spaces_exist() -> None:
    assert {p.stem for p in SPACES} >= {"quickstart", "mnist_mlp", "fashion_mnist_mlp",
                                       "hinton_mnist", "cifar10_cnn"}


def test_set_overrides_values_sections_and_the_space() -> None:
    cfg = load_config(QUICKSTART, ["search.num_samples=3", "training.lr=1e-2",
                                   "name=renamed", "search.space.width.values=[4, 8]",
                                   "search.space.temperature={distribution: uniform, low: 2, "
                                   "high: 3}", "search.gpus_per_trial=0.5"])
    assert cfg.name == "renamed"
    assert cfg.search.num_samples == 3
    assert cfg.training.lr == pytest.approx(0.01)  # '1e-2' without a dot is a YAML string
    assert cfg.search.gpus_per_trial == 0.5
    dims = {d.name: d for d in cfg.search.space}
    assert dims["width"].values == (4, 8)
    assert (dims["temperature"].distribution, dims["temperature"].low,
            dims["temperature"].high) == ("uniform", 2.0, 3.0)
    assert dims["alpha"] == {d.name: d for d in load_config(QUICKSTART).search.space}["alpha"]


def test_set_override_is_validated_like_the_file() -> None:
    with pytest.raises(ConfigError, match=r"search\.space\.alpha\.high = 2"):
        load_config(QUICKSTART, ["search.space.alpha.high=2"])


def test_unreachable_address_fails_in_seconds() -> None:
    from kdsearch.cluster import check_reachable
    from kdsearch.results import SearchError

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    start = time.perf_counter()
    with pytest.raises(SearchError, match=f"127.0.0.1:{port}"):
        check_reachable(f"127.0.0.1:{port}")
    with pytest.raises(SearchError, match="ray://127.0.0.1"):
        check_reachable(f"ray://127.0.0.1:{port}")
    assert time.perf_counter() - start < 5
    check_reachable("auto")  # nothing to probe: Ray looks the cluster up itself
    for malformed in (":99999", "foo", "localhost:0", "localhost:99999", "host:port"):
        # Ray's own parser prints a traceback for these before raising
        with pytest.raises(SearchError, match="is not auto, HOST:PORT or ray://HOST:PORT"):
            check_reachable(malformed)


# --------------------------------------------------------------------------- the CLI
def _space(**edit: object) -> str:
    """quickstart.yaml with top-level sections replaced or patched (None deletes a key)."""
    raw = yaml.safe_load(QUICKSTART.read_text())
    for dotted, value in edit.items():
        *parents, last = dotted.split("__")
        node = raw
        for p in parents:
            node = node[p]
        if value is None:
            node.pop(last, None)
        else:
            node[last] = value
    return yaml.safe_dump(raw, sort_keys=False)


# name -> (space text or None for quickstart itself, extra CLI args, what stderr must name)
BAD_RUNS: dict[str, tuple[str | None, list[str], list[str]]] = {
    "unknown key": (_space(search__nmu_samples=8), [], ["search.nmu_samples"]),
    "unknown dimension": (_space(search__space__dropout={"distribution": "uniform", "low": 0,
                                                          "high": 1}), [],
                          ["search.space.dropout"]),
    "bad distribution": (_space(search__space__temperature={"distribution": "gaussian",
                                                             "low": 1, "high": 20}), [],
                         ["search.space.temperature.distribution", "gaussian"]),
    "alpha above 1": (_space(search__space__alpha={"distribution": "uniform", "low": 0.2,
                                                   "high": 1.5}), [],
                      ["search.space.alpha.high", "1.5"]),
    "alpha below 0": (_space(search__space__alpha={"distribution": "uniform", "low": -0.5,
                                                   "high": 0.5}), [],
                      ["search.space.alpha.low", "-0.5"]),
    "temperature low 0": (_space(search__space__temperature={"distribution": "loguniform",
                                                              "low": 0, "high": 20}), [],
                          ["search.space.temperature.low", "0"]),
    "temperature negative": (_space(search__space__temperature={"distribution": "uniform",
                                                                 "low": -1, "high": 20}), [],
                             ["search.space.temperature.low", "-1"]),
    "width below 1": (_space(search__space__width={"distribution": "choice",
                                                   "values": [0, 16]}), [],
                      ["search.space.width.values", "0"]),
    "low above high": (_space(search__space__lr={"distribution": "loguniform", "low": 0.01,
                                                 "high": 0.001}), [],
                       ["search.space.lr", "0.01", "0.001"]),
    "unknown dataset": (_space(dataset={"name": "svhn"}), [], ["dataset.name", "svhn"]),
    "unknown student model": (_space(student={"model": "resnet18", "width": 16}), [],
                              ["student.model", "resnet18"]),
    "empty space": (_space(search__space=None), [], ["search.space is empty"]),
    "grace period beyond the budget": (_space(search__grace_period=50), [],
                                       ["search.grace_period = 50", "epoch budget 40"]),
    "bad --set": (None, ["--set", "search.num_samples"], ["--set", "search.num_samples",
                                                          "KEY=VALUE"]),
    # named as typed on the command line, not as the file's (which holds another value)
    "bad --set value": (None, ["--set", "search.num_samples=0"],
                        ["--set 'search.num_samples=0'", "search.num_samples = 0"]),
    # a dimension's keys are checked together: the file and the --set are both named
    "bad --set in a dimension": (None, ["--set", "search.space.alpha.low=0.9", "--set",
                                        "search.space.alpha.high=0.5"],
                                 ["with --set 'search.space.alpha.high=0.5'",
                                  "search.space.alpha: low = 0.9 must be below high = 0.5"]),
    "--set of an unknown dimension": (None, ["--set", "search.space.dropout.low=0"],
                                      ["--set 'search.space.dropout.low=0'",
                                       "unknown key search.space.dropout"]),
    "unreachable address": (None, ["--address", "127.0.0.1:1"], ["127.0.0.1:1",
                                                                 "cannot reach"]),
    "results folder exists": (None, [], ["already exists", "resume", "--force"]),
    "results folder is a file": (None, [], ["quickstart exists and is not a folder"]),
    "results dir is a file": (None, [], ["results is a file, not a folder", "--results-dir"]),
}
FILE_NAMED = {"bad --set", "bad --set value", "--set of an unknown dimension",  # not a file's
              "unreachable address", "results folder exists",                    # fault
              "results folder is a file", "results dir is a file"}
# run for real as `python -m kdsearch run` (each pays ~3 s of interpreter and torch start-up);
# every case also runs in-process through the same `cli.main`
SUBPROCESS = ("unknown key", "bad --set", "unreachable address", "results folder exists")


def _prepare(name: str, cwd: Path) -> tuple[list[str], Path, list[str]]:
    text, args, _ = BAD_RUNS[name]
    space = cwd / "space.yaml"
    space.write_text(text if text is not None else QUICKSTART.read_text())
    if name == "results folder exists":
        (cwd / "results" / "quickstart").mkdir(parents=True)
        (cwd / "results" / "quickstart" / "trials.csv").write_text("phase,trial_id\n")
    elif name == "results folder is a file":
        (cwd / "results").mkdir()
        (cwd / "results" / "quickstart").write_text("not a folder\n")
    elif name == "results dir is a file":
        (cwd / "results").write_text("not a folder\n")
    argv = ["run", str(space), "--results-dir", "results", "--no-report", *args]
    return argv, space, _listing(cwd)


def _listing(cwd: Path) -> list[str]:
    return sorted(str(p.relative_to(cwd)) for p in cwd.rglob("*"))


def _check(name: str, rc: int, stdout: str, stderr: str, space: Path) -> None:
    assert rc == 2, (stdout, stderr)
    assert "Traceback" not in stderr and "Traceback" not in stdout
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, stderr
    line = lines[0]
    assert line.startswith("kdsearch: error: ")
    for word in BAD_RUNS[name][2]:
        assert word in line, line
    if name not in FILE_NAMED:
        assert str(space) in line, line


@pytest.mark.parametrize("name", list(BAD_RUNS), ids=list(BAD_RUNS))
def test_bad_run_is_one_line_exit_2_and_writes_nothing(
        name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    from kdsearch.cli import main

    argv, space, before = _prepare(name, tmp_path)
    monkeypatch.chdir(tmp_path)
    rc = main(argv)
    out = capsys.readouterr()
    _check(name, rc, out.out, out.err, space)
    assert _listing(tmp_path) == before, "a failed run must create nothing"


@pytest.fixture(scope="module")
def cli_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, object]]:
    """Start the SUBPROCESS cases at once; collect exit code, output and what they left."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["KDSEARCH_CACHE_DIR"] = str(tmp_path_factory.getbasetemp() / "kdsearch-cache")
    started = {}
    for name in SUBPROCESS:
        cwd = tmp_path_factory.mktemp("badrun")
        argv, space, before = _prepare(name, cwd)
        proc = subprocess.Popen([sys.executable, "-m", "kdsearch", *argv], cwd=cwd, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        started[name] = (proc, cwd, space, before, time.perf_counter())
    out = {}
    for name, (proc, cwd, space, before, t0) in started.items():
        stdout, stderr = proc.communicate(timeout=240)
        out[name] = {"rc": proc.returncode, "stdout": stdout, "stderr": stderr, "space": space,
                     "before": before, "after": _listing(cwd),
                     "seconds": time.perf_counter() - t0}
    return out


@pytest.mark.slow
@pytest.mark.parametrize("name", SUBPROCESS)
def test_bad_run_from_the_command_line(cli_runs: dict, name: str) -> None:
    run = cli_runs[name]
    _check(name, run["rc"], run["stdout"], run["stderr"], run["space"])
    assert run["after"] == run["before"], "a failed run must create nothing"


@pytest.mark.slow
def test_unreachable_address_is_not_slower_than_a_config_error(cli_runs: dict) -> None:
    # both pay the same interpreter and torch start-up; ray.init alone retries for minutes
    assert cli_runs["unreachable address"]["seconds"] < cli_runs["unknown key"]["seconds"] + 15
