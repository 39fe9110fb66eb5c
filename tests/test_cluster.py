"""Ray and the cluster (`kdsearch.cluster`): the resources a trial takes, and `kdsearch run
--address`, a search spread over a two-node Ray cluster on this machine.

The cluster is made with `ray start` (a head and a second node, one CPU each) under a temp dir
of its own, so its address file does not leak into other Ray users of the machine, and it is
torn down by killing exactly the processes whose command line names that temp dir (and their
children): `ray stop` would also stop every other Ray on the machine.
"""

from __future__ import annotations

import contextlib
import csv
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

import pytest

from kdsearch.cluster import fit_concurrency, quiet_ray

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = REPO / "search_spaces" / "quickstart.yaml"
RAY = Path(sys.executable).with_name("ray")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def _processes() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, command line) of every process."""
    out = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{d}/cmdline").read_bytes().replace(b"\0", b" ").decode(
                errors="replace")
            stat = Path(f"/proc/{d}/stat").read_text()
        except OSError:
            continue
        out[int(d)] = (int(stat.rsplit(")", 1)[1].split()[1]), cmdline)
    return out


def _cluster_processes(marker: str) -> set[int]:
    """Processes whose command line names `marker`, and all their descendants."""
    procs = _processes()
    found = {p for p, (_, cmd) in procs.items() if marker in cmd and p != os.getpid()}
    grew = True
    while grew:
        grew = False
        for p, (parent, _) in procs.items():
            if parent in found and p not in found:
                found.add(p)
                grew = True
    return found


def _stop(marker: str) -> None:
    for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        pids = _cluster_processes(marker)
        for p in pids:
            try:
                os.kill(p, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and any(
                Path(f"/proc/{p}").exists() and "Z" not in _state(p) for p in pids):
            time.sleep(0.2)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "Z"


@contextlib.contextmanager
def ray_two_nodes(env: dict[str, str], node_env: dict[str, str] | None = None
                  ) -> Iterator[tuple[str, str]]:
    """`ray start --head` with `env` plus a second `ray start --address` with `node_env`
    (default: `env`), one CPU each; yields the head's HOST:PORT and the nodes' temp dir, and
    stops every process of both after."""
    temp = tempfile.mkdtemp(prefix="kdsr")  # short: Ray's socket paths live under it
    common = ["--num-cpus=1", "--num-gpus=0", f"--temp-dir={temp}", "--disable-usage-stats"]
    try:
        subprocess.run([str(RAY), "start", "--head", f"--port={_free_port()}",
                        "--include-dashboard=false", *common], env=env, check=True,
                       capture_output=True, timeout=120)
        address = (Path(temp) / "ray_current_cluster").read_text().strip()
        subprocess.run([str(RAY), "start", f"--address={address}", *common],
                       env=node_env or env, check=True, capture_output=True, timeout=120)
        yield address, temp
    finally:
        _stop(temp)
        shutil.rmtree(temp, ignore_errors=True)


def _outside() -> dict[str, str]:
    return {k: v for k, v in os.environ.items()
            if k not in ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN")}


@pytest.fixture(scope="module")
def two_nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, dict[str, str]]]:
    """A head and a second node, one CPU each, with Ray's token authentication as README sets
    it up: the head's token (`ray get-auth-token --generate`) handed to the second node and to
    the driver, each with a home of its own (as on machines of their own, which do not share
    ~/.ray/auth_token). Yields the head's HOST:PORT and the driver's environment."""
    homes = {name: str(tmp_path_factory.mktemp(f"home-{name}"))
             for name in ("head", "node", "driver")}
    made = subprocess.run([str(RAY), "get-auth-token", "--generate"], check=True,
                          env={**_outside(), "HOME": homes["head"]}, capture_output=True,
                          text=True, timeout=60)
    token = made.stdout.strip().splitlines()[-1]
    joined = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token}
    with ray_two_nodes({**_outside(), "HOME": homes["head"], "RAY_AUTH_MODE": "token"},
                       {**_outside(), "HOME": homes["node"], **joined}) as (address, _):
        yield address, {**_outside(), "HOME": homes["driver"], **joined}


@pytest.mark.slow
def test_search_runs_trials_on_both_nodes(two_nodes: tuple[str, dict[str, str]],
                                          tmp_path: Path) -> None:
    address, env = two_nodes  # the driver: its own home, the cluster's token in its environment
    env = {**env, "KDSEARCH_CACHE_DIR": os.environ["KDSEARCH_CACHE_DIR"]}
    # trials of a few seconds each: a trial that ends before the second node's actor has
    # started (importing torch takes seconds) lets Tune give the next trial to the first
    # node's idle actor instead (reuse_actors), and every trial could end up on one node
    sets = ["search.num_samples=6", "training.epochs=100", "search.grace_period=100",
            "training.batch_size=8",
            "search.baseline=false", "search.cpus_per_trial=1", "teacher.width=64",
            "teacher.epochs=3"]
    run = subprocess.run([sys.executable, "-m", "kdsearch", "run", str(QUICKSTART),
                          "--address", address, "--results-dir", "results", "--no-report",
                          *[a for s in sets for a in ("--set", s)]],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    with open(tmp_path / "results" / "quickstart" / "trials.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 6 and {r["status"] for r in rows} == {"TERMINATED"}
    nodes = {r["node"] for r in rows}
    assert len(nodes) == 2, nodes  # hostname:node-id prefix, one per node
    assert len({n.split(":")[1] for n in nodes}) == 2

    # the live status: one readable line per finished trial, and none of Ray's chatter
    lines = run.stdout.splitlines()
    # what the first seconds are spent on (the data and teacher, checked before Ray starts), then
    # the search; into a pipe, the teacher's training says its progress in a line per tenth
    training = [ln for ln in lines if ln.startswith("teacher mlp_teacher on digits: epoch ")]
    assert lines[:len(training)] == training
    lines = lines[len(training):]
    assert lines[0].startswith("teacher: mlp_teacher on digits, val_acc ")
    assert lines[1] == f"ray: connecting to {address}"
    assert lines[2].startswith("search: 6 distilled trials of mlp_student on digits")
    assert "search: starting the trial workers" in lines[3] + lines[4]  # (after a note)
    status = [ln for ln in lines if ln.startswith("[distill ")]
    assert len(status) == 6 and status[-1].startswith("[distill 6/6]")
    assert all(" | best " in ln for ln in status)
    assert lines[-2].startswith("best distilled: val_acc")
    assert lines[-1] == ("no report written (--no-report); write it with: kdsearch report "
                         f"{tmp_path / 'results' / 'quickstart'}")
    for noise in ("INFO", "WARNING", "Traceback", "Token authentication", "(raylet)", "Tune"):
        assert noise not in run.stderr and noise not in run.stdout, noise


@pytest.mark.slow
def test_a_users_module_goes_to_every_node_with_the_job(two_nodes: tuple[str, dict[str, str]],
                                                         tmp_path: Path) -> None:
    """A student factory in a folder of the user's, outside the repository and not installed:
    kdsearch ships that folder with the job (Ray's runtime_env working_dir), and the trial
    workers import the shipped copy, not the user's folder (which a worker machine would not
    have)."""
    address, env = two_nodes
    env = {**env, "KDSEARCH_CACHE_DIR": os.environ["KDSEARCH_CACHE_DIR"]}
    user = tmp_path / "user"
    user.mkdir()
    imports = tmp_path / "imports.log"
    (user / "shipped_nets.py").write_text(
        "from torch import nn\n"
        f"with open({str(imports)!r}, 'a') as f:\n"
        "    f.write(__file__ + '\\n')\n"
        "def make_student(width):\n"
        "    return nn.Sequential(nn.Flatten(), nn.Linear(64, width), nn.ReLU(),\n"
        "                         nn.Linear(width, 10))\n")
    (user / "teacher.pt").write_bytes(b"x" * 1000)  # a large file: left out of what is shipped
    space = user / "space.yaml"
    space.write_text(QUICKSTART.read_text().replace("model: mlp_student",
                                                    "model: shipped_nets:make_student"))
    sets = ["search.num_samples=4", "training.epochs=100", "search.grace_period=100",
            "training.batch_size=8", "search.baseline=false", "search.cpus_per_trial=1",
            "teacher.width=64", "teacher.epochs=3"]
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    run = subprocess.run([sys.executable, "-m", "kdsearch", "run", str(space), "--address",
                          address, "--results-dir", "results", "--no-report",
                          *[a for s in sets for a in ("--set", s)]],
                         cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    with open(elsewhere / "results" / "quickstart" / "trials.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4 and {r["status"] for r in rows} == {"TERMINATED"}
    assert len({r["node"] for r in rows}) == 2  # trials on the second node too
    paths = set(imports.read_text().split())
    assert str(user / "shipped_nets.py") in paths  # the driver, checking the students
    shipped = paths - {str(user / "shipped_nets.py")}
    assert shipped and all("runtime_resources" in p for p in shipped), paths
    assert all(not (Path(p).parent / "teacher.pt").exists() for p in shipped)


# --------------------------------------------------------------------------- resources
def test_fit_concurrency_takes_the_scarcer_resource() -> None:
    assert fit_concurrency({"cpus": 8, "gpus": 2}, 1.0, 0.5) == 4
    assert fit_concurrency({"cpus": 8, "gpus": 2}, 4.0, 0.5) == 2
    assert fit_concurrency({"cpus": 2, "gpus": 0}, 1.0, 0.0) == 2
    assert fit_concurrency({"cpus": 6, "gpus": 1}, 1.0, 1 / 3) == 3  # 3 * (1/3) is not > 1
    assert fit_concurrency({"cpus": 8, "gpus": 2}, 1.0, 1 / 16) == 8  # CPU-bound, not GPU
    assert fit_concurrency({"cpus": 1, "gpus": 0}, 2.0, 0.0) == 1


def test_optuna_does_not_warn_about_the_epochs_a_resumed_trial_reports_again() -> None:
    """A trial resumed from a checkpoint older than its last report (checkpoints are taken every
    few seconds) reports those epochs again, which the restored study has: Optuna's warning for
    each filled a resume's output."""
    import warnings

    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet_ray()
        trial = optuna.create_study(direction="maximize").ask()
        trial.report(0.5, 1)
        trial.report(0.6, 1)  # the same step again
    assert [str(w.message) for w in caught] == []
