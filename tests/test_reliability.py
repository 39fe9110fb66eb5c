"""What a search survives: a trial that diverges or cannot allocate its model, Ctrl-C, a driver
killed three times in a row, a lost worker node, and a teacher cache that is read-only or shared
by two searches at once. Real searches on the bundled digits, real signals, no mocks.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any, Iterator

import pytest

from test_cluster import _processes, ray_two_nodes
from test_data import _read_only
from test_search import TINY_TEACHER, _alive, _descendants, _kill_tree, _restored_environ

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = REPO / "search_spaces" / "quickstart.yaml"
KDSEARCH = [sys.executable, "-m", "kdsearch"]
# an MLP of width 200,000 has a 200,000 x 200,000 layer: 160 GB, which the allocator refuses
# at once (more than this machine's memory and swap), so that trial fails cleanly, not by OOM
TOO_WIDE = 200_000


def _rows(path: Path) -> list[dict[str, str]]:
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _sets(overrides: list[str]) -> list[str]:
    return [a for s in overrides for a in ("--set", s)]


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(extra)
    return env


# --------------------------------------------------------------------------- failing trials
@pytest.mark.slow
def test_crashing_and_diverging_trials_fail_alone_and_the_report_counts_them(
        tmp_path: Path) -> None:
    import ray

    from kdsearch import run_search
    from kdsearch.report import make_report

    with _restored_environ():
        if ray.is_initialized():
            ray.shutdown()
        # one searcher over both widths (per_width off): seed 4 draws (0.003, 16),
        # (0.003, 16), (1e12, 16): diverges, (1e12, 200000): OOM
        result = run_search(QUICKSTART, overrides=[
            "name=failing", "search.baseline=false", *TINY_TEACHER, "search.num_samples=4",
            "training.epochs=2", "search.grace_period=2", "training.optimizer=sgd",
            "search.space={lr: {distribution: choice, values: [0.003, 1.0e+12]}, "
            f"width: {{distribution: choice, values: [16, {TOO_WIDE}]}}}}",
            "search.max_failures=1", "search.max_concurrent_trials=2", "search.seed=4",
            "search.per_width=false", "report.seeds=2"], results_dir=tmp_path, report=False)
    out = result.results_dir
    rows = _rows(out / "trials.csv")
    assert len(rows) == 4, "every trial recorded; the search went on"
    oom = [r for r in rows if int(r["width"]) == TOO_WIDE]
    diverged = [r for r in rows if r["diverged"] == "1"]
    good = [r for r in rows if r not in oom and r not in diverged]
    assert oom and diverged and good, "the seed should draw all three kinds"
    for r in oom:
        assert r["status"] == "ERROR"
        assert "can't allocate memory" in r["error"], r["error"]
    for r in diverged:
        assert r["status"] == "TERMINATED" and float(r["lr"]) == 1e12 and "nan" in r["error"]
    assert all(r["status"] == "TERMINATED" and r["error"] == "" for r in good)
    assert result.best_config["width"] == 16 and result.best_config["lr"] == 0.003
    # retried max_failures times before it was given up: Tune's own record of the trial
    state = json.loads(max((out / "search").glob("experiment_state-*.json")).read_text())
    failures = {json.loads(t)["trial_id"]: json.loads(m)["num_failures"]
                for t, m in state["trial_data"]}
    assert {failures[r["trial_id"]] for r in oom} == {2}  # the first try and max_failures=1
    assert {failures[r["trial_id"]] for r in good + diverged} == {0}  # a diverged one: no retry

    report = make_report(out)
    summary = json.loads((report.parent / "summary.json").read_text())
    cost = summary["search"]["phases"]["distill"]
    assert (cost["failed"], cost["diverged"], cost["trials"]) == (len(oom), len(diverged), 4)
    line = [ln for ln in report.read_text().splitlines() if "failed / diverged" in ln]
    assert line and f"{len(oom)} / {len(diverged)}" in line[0], line


# --------------------------------------------------------------------------- interruptions
def _wait(proc: subprocess.Popen, folder: Path, until: Any, what: str, timeout: float = 120
          ) -> bool:
    """Poll the results folder until `until(trials, progress)`; False if the search ended."""
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            return False
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        try:
            if until(_rows(folder / "trials.csv"), _rows(folder / "progress.csv")):
                return True
        except (KeyError, ValueError):  # a file being replaced
            pass
        time.sleep(0.05)


def _ended(trials: list[dict[str, str]]) -> set[str]:
    return {r["trial_id"] for r in trials if r["status"] in ("TERMINATED", "ERROR")}


def _reap(tree: set[int]) -> None:
    deadline = time.monotonic() + 30
    while any(_alive(p) for p in tree) and time.monotonic() < deadline:
        time.sleep(0.2)
    for p in tree:  # what a Ctrl-C left behind would count against the next start
        if _alive(p):
            os.kill(p, signal.SIGKILL)


INTERRUPT_ARGS = ["search.num_samples=8", "training.epochs=12", "search.grace_period=4",
                  "search.reduction_factor=3", "search.checkpoint_every_s=0",
                  "search.baseline_num_samples=2", "search.max_concurrent_trials=2",
                  "report.seeds=2", *TINY_TEACHER]


@pytest.mark.slow
def test_ctrl_c_then_three_kills_then_resume_gives_one_search(tmp_path: Path) -> None:
    env = _env()
    folder = tmp_path / "results" / "quickstart"
    err_path = tmp_path / "run.err"
    with open(tmp_path / "run.out", "w") as out, open(err_path, "w") as err:
        proc = subprocess.Popen([*KDSEARCH, "run", str(QUICKSTART), "--results-dir", "results",
                                 *_sets(INTERRUPT_ARGS)], cwd=tmp_path, env=env, stdout=out,
                                stderr=err, start_new_session=True)
    try:
        assert _wait(proc, folder, lambda t, p: len(_ended(t)) >= 2, "two trials to end")
        tree = _descendants(proc.pid)
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C: the terminal signals the whole group
        rc = proc.wait(timeout=90)
    finally:
        if proc.poll() is None:
            _kill_tree(proc)
    _reap(tree)
    stderr = err_path.read_text()
    assert rc == 130, stderr[-3000:]
    assert "Traceback" not in stderr, stderr[-3000:]
    assert f"kdsearch resume {folder}" in stderr
    run = json.loads((folder / "run.json").read_text())
    assert run["search"]["status"] == "started"  # not marked done by Tune's early exit
    assert run["search"]["wall_seconds"] > 0  # the interrupted attempt's time is kept
    assert not (folder / "report.md").exists()

    # three SIGKILLs of the resumed driver, each after at least one more trial ended
    kept: dict[str, int] = {}  # trial that had ended -> its epoch rows then
    for cycle in range(3):
        before = _rows(folder / "trials.csv")
        progress = Counter(p["trial_id"] for p in _rows(folder / "progress.csv"))
        for r in before:
            if r["status"] == "TERMINATED":
                kept.setdefault(f"{r['phase']}/{r['trial_id']}", progress[r["trial_id"]])
        n = len(_ended(before))
        with open(tmp_path / f"resume{cycle}.err", "w") as err:
            proc = subprocess.Popen([*KDSEARCH, "resume", str(folder), "--no-report"],
                                    cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                                    stderr=err, start_new_session=True)
        try:
            assert _wait(proc, folder, lambda t, p: len(_ended(t)) > n,
                         f"a trial to end in resume {cycle}"), \
                (tmp_path / f"resume{cycle}.err").read_text()[-3000:]
        finally:
            tree = _kill_tree(proc)
        _reap(tree)

    # the last resume finishes the search and writes the report
    done = subprocess.run([*KDSEARCH, "resume", str(folder)], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr[-3000:]
    trials = _rows(folder / "trials.csv")
    for phase, n in (("distill", 8), ("baseline", 2)):
        rows = [r for r in trials if r["phase"] == phase]
        assert len(rows) == len({r["trial_id"] for r in rows}) == n, (phase, rows)
        assert {r["status"] for r in rows} == {"TERMINATED"}
    progress = _rows(folder / "progress.csv")
    assert max(Counter((p["phase"], p["trial_id"], p["epoch"]) for p in progress).values()) == 1
    counts = Counter(f"{p['phase']}/{p['trial_id']}" for p in progress)
    for key, epochs in kept.items():  # ended before a kill: never trained again
        assert counts[key] == epochs, key
    for r in trials:
        assert counts[f"{r['phase']}/{r['trial_id']}"] == int(r["epochs"])

    summary = json.loads((folder / "summary.json").read_text())
    assert summary["complete"] is True
    # what the user reads last: the best settings, then the report's verdict on the test set
    lines = done.stdout.splitlines()
    assert lines[-2].startswith("best distilled: val_acc") and "report.md" in lines[-2]
    assert lines[-1] == summary["answer_text"]
    text = json.dumps(summary)
    assert '"planned": 8' in text and '"planned": 2' in text


# --------------------------------------------------------------------------- a lost node
@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """test_cluster's two nodes (one CPU each); yields the head's address and the temp dir."""
    with ray_two_nodes(_env(RAY_AUTH_MODE="disabled")) as nodes:
        yield nodes


def _worker_raylet(temp: str) -> int:
    """The raylet `ray start --address` started: the younger of the cluster's two."""
    raylets = [p for p, (_, cmd) in _processes().items()
               if temp in cmd and cmd.split(" ", 1)[0].endswith("/raylet")]
    assert len(raylets) == 2, raylets

    def started(p: int) -> int:  # /proc/PID/stat field 22: start time in clock ticks
        return int(Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()[19])
    return max(raylets, key=started)


@pytest.mark.slow
def test_a_lost_worker_node_moves_its_trials(cluster: tuple[str, str], tmp_path: Path) -> None:
    address, temp = cluster
    env = _env(RAY_AUTH_MODE="disabled")
    folder = tmp_path / "results" / "quickstart"
    sets = ["search.num_samples=4", "training.epochs=40", "search.grace_period=40",
            "search.scheduler=fifo", "search.baseline=false", "search.cpus_per_trial=1",
            "search.checkpoint_every_s=0", "search.max_failures=2", *TINY_TEACHER]
    with open(tmp_path / "run.out", "w") as out, open(tmp_path / "run.err", "w") as err:
        proc = subprocess.Popen([*KDSEARCH, "run", str(QUICKSTART), "--address", address,
                                 "--results-dir", "results", "--no-report", *_sets(sets)],
                                cwd=tmp_path, env=env, stdout=out, stderr=err,
                                start_new_session=True)
    try:
        def both_busy(t: list[dict[str, str]], p: list[dict[str, str]]) -> bool:
            # two trials at once, one CPU per node: one on each node, a few epochs in
            running = {r["trial_id"] for r in t if r["status"] == "RUNNING"}
            mid = Counter(x["trial_id"] for x in p if x["trial_id"] in running)
            return len(mid) == 2 and min(mid.values()) >= 3
        assert _wait(proc, folder, both_busy, "a trial halfway on each node")
        raylet = _worker_raylet(temp)
        for p in {raylet, *_descendants(raylet)}:  # the node's raylet and its trial workers
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass
        killed_at = time.time()
        cut = {r["trial_id"] for r in _rows(folder / "trials.csv") if r["status"] == "RUNNING"}
        rc = proc.wait(timeout=240)
    finally:
        if proc.poll() is None:
            _kill_tree(proc)
    stderr = (tmp_path / "run.err").read_text()
    assert rc == 0, stderr[-3000:]
    rows = _rows(folder / "trials.csv")
    assert len(rows) == 4 and {r["status"] for r in rows} == {"TERMINATED"}, rows
    assert all(int(r["epochs"]) == 40 for r in rows)
    progress = _rows(folder / "progress.csv")
    assert max(Counter((p["trial_id"], p["epoch"]) for p in progress).values()) == 1
    assert len(cut) == 2, cut
    # every trial that ended after the kill ended on the one node left, the lost node's trial
    # among them; each continued from its checkpoint: its epochs before the kill kept their rows
    after = [r for r in rows if r["trial_id"] in cut or r["trial_id"] not in
             {x["trial_id"] for x in progress if float(x["wall_time"]) < killed_at}]
    assert len({r["node"] for r in after}) == 1, after
    for t in cut:
        mine = [p for p in progress if p["trial_id"] == t]
        assert [int(p["epoch"]) for p in mine] == list(range(1, 41))
        assert any(float(p["wall_time"]) < killed_at for p in mine)


# --------------------------------------------------------------------------- the teacher cache
@pytest.mark.slow
def test_read_only_cache_trains_the_teacher_in_memory(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    with _read_only([cache]):
        sets = [*TINY_TEACHER, "training.epochs=1", "search.grace_period=1"]
        run = subprocess.run([*KDSEARCH, "train", str(QUICKSTART), "--device", "cpu",
                              *_sets(sets)], cwd=tmp_path,
                             env=_env(KDSEARCH_CACHE_DIR=str(cache)), capture_output=True,
                             text=True, timeout=120)
        assert list(cache.iterdir()) == []  # nothing written there
    assert run.returncode == 0, run.stderr[-3000:]
    notices = [ln for ln in run.stderr.splitlines() if ln.startswith("kdsearch:")]
    assert len(notices) == 1 and "is not writable" in notices[0] and str(cache) in notices[0]
    assert "Traceback" not in run.stderr
    assert "(trained now)" in run.stdout and "final val_acc" in run.stdout


@pytest.mark.slow
def test_two_searches_sharing_a_cache_train_the_teacher_once(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    # a teacher that takes seconds to train, so the second search asks while the first trains
    sets = ["teacher.width=256", "teacher.epochs=40", "search.num_samples=2", "training.epochs=1",
            "search.grace_period=1", "search.baseline=false", "search.max_concurrent_trials=1"]
    procs = [subprocess.Popen([*KDSEARCH, "run", str(QUICKSTART), "--results-dir", "results",
                               "--no-report", *_sets([*sets, f"name={n}"])], cwd=tmp_path,
                              env=_env(KDSEARCH_CACHE_DIR=str(cache)), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for n in ("a", "b")]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    # the teacher's progress is shown only while it trains
    trained = [(out + err).count("teacher mlp_teacher on digits") > 0 for out, err in outs]
    assert sorted(trained) == [False, True], [err[-2000:] for _, err in outs]
    runs = [json.loads((tmp_path / "results" / n / "run.json").read_text()) for n in "ab"]
    assert runs[0]["teacher"] == runs[1]["teacher"]
    assert len(list((cache / "teachers").glob("*/manifest.json"))) == 1


# --------------------------------------------------------------------------- bad input found late
@pytest.mark.slow  # starts Ray
@pytest.mark.parametrize("case", ["val_size too large", "dataset missing", "storage is a file"])
def test_bad_input_found_after_ray_starts_writes_nothing_and_force_keeps_the_old_folder(
        case: str, tmp_path: Path) -> None:
    """The data and teacher are loaded, and the storage path checked, before --force empties an
    old results folder or a new one is made: a missing dataset must not cost an earlier search."""
    space, extra = QUICKSTART, ["--set", "dataset.val_size=100000"]
    name = "quickstart"
    if case == "dataset missing":
        space, extra, name = REPO / "search_spaces" / "mnist_mlp.yaml", [], "mnist_mlp"
    elif case == "storage is a file":
        (tmp_path / "afile").write_text("a file\n")
        extra = ["--storage-path", str(tmp_path / "afile")]
    folder = tmp_path / "results" / name
    folder.mkdir(parents=True)
    (folder / "trials.csv").write_text("phase,trial_id,status\ndistill,t0,TERMINATED\n")
    (folder / "run.json").write_text('{"search": {"status": "finished"}}')
    before = sorted((p.name, p.read_bytes()) for p in folder.iterdir())
    proc = subprocess.run([*KDSEARCH, "run", str(space), "--results-dir", "results", "--force",
                           *extra], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env=_env(KDSEARCH_DATA_DIR=str(tmp_path / "no-data"),
                                   KDSEARCH_CACHE_DIR=str(tmp_path / "cache")))
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-3000:]
    assert {"val_size too large": "val_size", "dataset missing": "mnist",
            "storage is a file": "is a file"}[case] in lines[0], lines[0]
    assert sorted((p.name, p.read_bytes()) for p in folder.iterdir()) == before
