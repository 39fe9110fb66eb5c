"""Real (small) searches on the bundled digits: the results folder, ASHA, the searcher's seed,
a diverging trial, GPU shares, and a driver killed with SIGKILL and resumed.

The digits set needs no download and a student epoch takes milliseconds, so most of the time
here is Ray starting trial actors. The teacher is a small one (64 wide, 3 epochs), cached for
the whole session by conftest's KDSEARCH_CACHE_DIR.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import json
import logging
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest
import torch
from ray import tune

from kdsearch.searchers import PhaseSearcher, arm_specs
from kdsearch.cluster import fit_concurrency, init_ray
from kdsearch.config import load_config
from kdsearch.data import Dataset, Split
from kdsearch.ray_workarounds import TUNER_COPY, mend_torn_state
from kdsearch.results import SearchError, dimensions
from kdsearch.tables import KINDS, kind_of
from kdsearch.folders import exclusive
from kdsearch.tables import PROGRESS_FIELDS, TRIAL_FIELDS
from kdsearch.trainable import for_object_store, from_object_store

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = REPO / "search_spaces" / "quickstart.yaml"
TINY_TEACHER = ["teacher.width=64", "teacher.epochs=3"]


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _last_results(exp_dir: Path) -> dict[str, dict[str, Any]]:
    """Ray Tune's own record (its experiment state) of each trial's last report."""
    state = json.loads(max(exp_dir.glob("experiment_state-*.json")).read_text())
    out = {}
    for _, metadata in state["trial_data"]:
        last = json.loads(metadata)["last_result"]
        out[last["trial_id"]] = last
    return out


def _first_configs(rows: list[dict[str, str]], dims: list[str], n: int) -> list[tuple]:
    return [tuple(round(float(r[d]), 9) for d in dims) for r in rows[:n]]


# --------------------------------------------------------------------------- resources
def _fake_data(n: int, shape: tuple[int, int, int]) -> Dataset:
    x = torch.zeros(1, *shape).expand(n, *shape)  # the size without the memory
    y = torch.zeros(n, dtype=torch.long)
    return Dataset("fake", Split(x, y), Split(x[:100], y[:100]), 10, shape, (0.0,), (1.0,))


@contextlib.contextmanager
def _restored_environ() -> Iterator[None]:
    """ray.init sets RAY_AUTH_MODE=token (and more) in os.environ for good: undo it after, so
    processes that later tests start do not inherit it."""
    saved = dict(os.environ)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


# --------------------------------------------------------------------------- both phases in one


# --------------------------------------------------------------------------- a whole search
@pytest.fixture(scope="module")
def digits_search(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, Path]]:
    """One search with its baseline, through the public API, on a Ray it starts itself."""
    import ray

    from kdsearch import run_search

    with _restored_environ():
        # module scope runs before conftest's monkeypatch: the same session-wide cache
        os.environ["KDSEARCH_CACHE_DIR"] = str(tmp_path_factory.getbasetemp() / "kdsearch-cache")
        if ray.is_initialized():  # left by another test: run_search must start its own
            ray.shutdown()
        root = tmp_path_factory.mktemp("results")
        _SIGINT_HANDLER["before"] = signal.getsignal(signal.SIGINT)
        _RECORDED.clear()
        result = run_search(QUICKSTART, overrides=[
            "search.num_samples=8", "training.epochs=6", "search.grace_period=1",
            "search.reduction_factor=3", "search.trial_logs=true", *TINY_TEACHER],
            results_dir=root, report=False, callbacks=[Recorder()])
        _SIGINT_HANDLER["after"] = signal.getsignal(signal.SIGINT)
    yield result, root / "quickstart"


_SIGINT_HANDLER: dict[str, Any] = {}  # around digits_search's run_search
_RECORDED: list[tuple[str, int, float]] = []  # what a user's own callback saw, in order


class Recorder(tune.Callback):
    """A user's own Ray Tune callback: every trial result it is given."""

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict,
                        **info: Any) -> None:
        _RECORDED.append((trial.trial_id, int(result["epoch"]), float(result["val_acc"])))


@pytest.mark.slow
def test_a_users_own_callback_sees_every_trial_result(digits_search: tuple[Any, Path]) -> None:
    _, out = digits_search
    progress = _rows(out / "progress.csv")  # every reported epoch, as kdsearch recorded it
    assert len(_RECORDED) == len(progress) > 0
    assert sorted(_RECORDED) == sorted((p["trial_id"], int(p["epoch"]), float(p["val_acc"]))
                                       for p in progress)


@pytest.mark.slow
def test_a_finished_search_opens_with_ray_tunes_own_tools(digits_search: tuple[Any, Path]
                                                          ) -> None:
    """search.trial_logs: Ray Tune's per-trial outputs, where Tune puts them, which
    ExperimentAnalysis reads as for any Tune run."""
    from ray.tune import ExperimentAnalysis

    _, out = digits_search
    trials = {r["trial_id"]: r for r in _rows(out / "trials.csv")}
    analysis = ExperimentAnalysis(str(out / "search"))
    assert {t.trial_id for t in analysis.trials} == set(trials)
    for trial in analysis.trials:
        frame = analysis.trial_dataframes[trial.trial_id]
        assert list(frame["epoch"]) == list(range(1, int(trials[trial.trial_id]["epochs"]) + 1))
        assert (Path(trial.path) / "result.json").is_file()
    best = analysis.get_best_trial(metric="val_acc", mode="max", scope="last")
    assert float(trials[best.trial_id]["val_acc"]) == max(float(r["val_acc"])
                                                          for r in trials.values())


@pytest.mark.slow  # the real search of digits_search
def test_a_searcher_state_older_than_the_experiment_state_keeps_the_budget(
        digits_search: tuple[Any, Path], tmp_path: Path) -> None:
    # Tune saves the experiment state, then the searcher's: a kill between the two left a
    # searcher that had not seen the newest trial, and the resumed search ran 13 trials of 12
    import shutil

    from ray.tune.search import Searcher

    _, folder = digits_search
    cfg = load_config(folder / "config.yaml")
    arms = arm_specs(cfg, list(KINDS))
    state = max((folder / "search").glob("experiment_state-*.json"))
    session = state.name[len("experiment_state-"):-len(".json")]
    shutil.copy(state, tmp_path / state.name)
    n_trials = len(_rows(folder / "trials.csv"))

    def fresh() -> Any:  # arms with nothing to search: each suggests its fixed values
        return PhaseSearcher(dict.fromkeys(arms), {a: v[1] for a, v in arms.items()},
                              {a: v[2] for a, v in arms.items()})

    stale = fresh()
    for i in range(3):  # as saved a few trials before the end
        stale.suggest(f"never-in-the-experiment-{i}")
    saved = tmp_path / f"searcher-state-{session}.pkl"
    stale.save(str(saved))
    restored = fresh()
    restored.restore(str(saved))
    assert sum(restored.suggested.values()) == n_trials == sum(v[1] for v in arms.values())
    assert restored.arm_of == {}
    assert restored.suggest("one-more") == Searcher.FINISHED

    # no experiment state beside it (a layout Tune may change): the searcher's own counts
    (tmp_path / state.name).unlink()
    alone = fresh()
    alone.restore(str(saved))
    assert sum(alone.suggested.values()) == 3


@pytest.mark.slow
def test_the_search_leaves_the_ctrl_c_handler_as_it_found_it(
        digits_search: tuple[Any, Path]) -> None:
    # Tune's fit() installs its own SIGINT handler and leaves it: a Ctrl-C during the final
    # evaluation that follows the search would then be swallowed instead of stopping kdsearch
    assert _SIGINT_HANDLER["after"] is _SIGINT_HANDLER["before"]


@pytest.mark.slow
def test_search_writes_the_results_folder(digits_search: tuple[Any, Path]) -> None:
    result, out = digits_search
    for name in ("config.yaml", "run.json", "trials.csv", "progress.csv", "optuna.db"):
        assert (out / name).is_file(), name
    # one Ray Tune experiment holds both phases, run side by side
    assert list((out / "search").glob("experiment_state-*.json"))
    # kdsearch's copy of Tune's tuner.pkl, for a resume after a kill tears that file
    assert (out / "search" / TUNER_COPY).read_bytes() == (out / "search" / "tuner.pkl").read_bytes()
    assert not (out / "distill").exists() and not (out / "baseline").exists()
    assert result.results_dir == out
    assert load_config(out / "config.yaml").search.num_samples == 8  # the resolved config
    run = json.loads((out / "run.json").read_text())
    assert {"kdsearch_version", "name", "storage_path", "search", "teacher",
            "hardware", "gpus_per_trial", "max_concurrent_trials"} <= set(run)
    assert run["search"]["status"] == "finished" and run["search"]["wall_seconds"] > 0
    # what this machine has, as Ray found it: a GPU share only where there are GPUs torch uses
    hw, cuda = run["hardware"], run["cuda"]
    usable = any(c["usable"] for c in cuda if c["where"] == "trials")
    assert (run["gpus_per_trial"] > 0) == (hw["gpus"] > 0 and usable)
    assert (cuda == []) == (hw["gpus"] == 0)
    assert run["max_concurrent_trials"] == fit_concurrency(hw, 1.0, run["gpus_per_trial"])


@pytest.mark.slow
def test_search_records_every_trial_and_asha_stops_some(
        digits_search: tuple[Any, Path]) -> None:
    result, out = digits_search
    cfg = load_config(out / "config.yaml")
    trials = _rows(out / "trials.csv")
    assert list(trials[0])[:len(TRIAL_FIELDS)] == list(TRIAL_FIELDS)
    progress = _rows(out / "progress.csv")
    assert list(progress[0]) == list(PROGRESS_FIELDS)
    for phase in ("distill", "baseline"):
        rows = [r for r in trials if r["phase"] == phase]
        assert len(rows) == 8 and {r["status"] for r in rows} == {"TERMINATED"}
        dims = [d.name for d in dimensions(cfg, kind_of(phase))]
        assert all(r[d] != "" for r in rows for d in dims)
        for r in rows:
            epochs = [int(p["epoch"]) for p in progress
                      if p["phase"] == phase and p["trial_id"] == r["trial_id"]]
            assert epochs == list(range(1, int(r["epochs"]) + 1))  # one row per epoch, in order
            assert int(r["stopped_early"]) == (int(r["epochs"]) < 6)
            assert float(r["best_val_acc"]) >= float(r["val_acc"])
            assert int(r["params"]) > 0 and r["node"].count(":") == 1
    distill = [r for r in trials if r["phase"] == "distill"]
    assert any(r["stopped_early"] == "1" for r in distill), "ASHA stopped nothing"
    assert any(r["stopped_early"] == "0" for r in distill)
    baseline = [r for r in trials if r["phase"] == "baseline"]
    assert all(r.get("temperature", "") == "" for r in baseline)  # alpha = 1: no teacher
    # each trial ran with torch threads = cpus_per_trial (Ray's record of what it reported)
    reported = _last_results(out / "search")
    assert len(reported) == 16 and {r["threads"] for r in reported.values()} == {1}
    # the two phases ran side by side in one Tuner, not one after the other
    first = {ph: min(float(p["wall_time"]) for p in progress if p["phase"] == ph)
             for ph in ("distill", "baseline")}
    last = {ph: max(float(p["wall_time"]) for p in progress if p["phase"] == ph)
            for ph in ("distill", "baseline")}
    assert first["baseline"] < last["distill"] and first["distill"] < last["baseline"]


@pytest.mark.slow
def test_search_result_and_optuna_study(digits_search: tuple[Any, Path]) -> None:
    import optuna

    result, out = digits_search
    cfg = load_config(out / "config.yaml")
    assert set(result.best_config) == {d.name for d in cfg.search.space}
    full = [r for r in _rows(out / "trials.csv") if r["phase"] == "distill"
            and r["stopped_early"] == "0"]
    assert result.best_metrics["val_acc"] == pytest.approx(max(float(r["val_acc"]) for r in full))
    assert result.best_metrics["val_acc"] > 0.5
    assert set(result.baseline_config) == {"lr", "width"}
    table = result.trials
    assert table.groupby("phase").size().to_dict() == {"baseline": 8, "distill": 8}
    assert "best distilled: val_acc" in result.summary_line()
    storage = f"sqlite:///{out / 'optuna.db'}"
    for phase in ("distill", "baseline"):
        study = optuna.load_study(study_name=phase, storage=storage)
        assert len(study.trials) == 8
    study = optuna.load_study(study_name="distill", storage=storage)
    assert study.best_value == pytest.approx(result.best_metrics["val_acc"])
    assert {t.state.name for t in study.trials} <= {"COMPLETE", "PRUNED"}
    assert_study_is_the_records(out)  # each epoch an intermediate value, ASHA's stops PRUNED


@pytest.mark.slow
def test_resume_of_a_finished_search_of_the_older_layout_trains_nothing(
        digits_search: tuple[Any, Path], tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    import ray

    from kdsearch import resume_search

    caplog.set_level(logging.INFO, logger="kdsearch")
    result, out = digits_search
    folder = tmp_path / "old" / out.name
    shutil.copytree(out, folder)
    run = json.loads((folder / "run.json").read_text())
    del run["search"]  # kdsearch before 2026-11-23: a Tuner per phase, each with its wall time
    run["phases"] = {p: {"status": "finished", "wall_seconds": 5.0}
                     for p in ("distill", "baseline")}
    (folder / "run.json").write_text(json.dumps(run))
    files = ("trials.csv", "progress.csv", "run.json")
    before = [(folder / f).read_text() for f in files]
    (folder / "optuna.db").unlink()  # a kill after the search ended, before the export
    with _restored_environ():
        if ray.is_initialized():
            ray.shutdown()
        again = resume_search(folder, report=False)
    assert [(folder / f).read_text() for f in files] == before  # nothing ran again
    assert "note: this search had finished (" in caplog.text  # and it says so
    assert again.best_config == result.best_config
    assert (folder / "optuna.db").is_file()  # exported by the resume


@pytest.mark.slow  # the real search of digits_search
def test_resume_without_rays_saved_state_refuses_to_drop_the_ended_trials(
        digits_search: tuple[Any, Path], tmp_path: Path) -> None:
    """A started search whose Tune state is gone (a shared mount not there, a deleted search/)
    must not start over: that would empty trials.csv of the trials that had ended."""
    import ray

    from kdsearch import resume_search
    _, out = digits_search
    folder = tmp_path / out.name
    shutil.copytree(out, folder)
    run = json.loads((folder / "run.json").read_text())
    run["search"]["status"] = "started"
    (folder / "run.json").write_text(json.dumps(run))
    before = [(folder / f).read_bytes() for f in ("trials.csv", "progress.csv")]
    with _restored_environ():
        if ray.is_initialized():
            ray.shutdown()
        # a started search copied elsewhere: Tune's state names the first folder
        with pytest.raises(SearchError, match=f"this search ran in {out}, .* resumes only "
                                              f"there"):
            resume_search(folder, report=False)
        run["storage_path"] = str(folder)  # as if it had run here
        (folder / "run.json").write_text(json.dumps(run))
        shutil.rmtree(folder / "search")
        with pytest.raises(SearchError, match=r"saved state of this search is not in .*"
                                              r"its 16 ended trials cannot be resumed"):
            resume_search(folder, report=False)
    assert [(folder / f).read_bytes() for f in ("trials.csv", "progress.csv")] == before


# --------------------------------------------------------------------------- a shared Ray
@pytest.fixture(scope="module")
def logical_gpus() -> Iterator[None]:
    """A local Ray with 8 logical CPUs and 2 logical GPUs; run_search reuses it."""
    import ray

    if ray.is_initialized():
        ray.shutdown()
    with _restored_environ():
        ray.init(address="local", num_cpus=8, num_gpus=2, include_dashboard=False,
                 log_to_driver=False, logging_level="ERROR")
        try:
            yield
        finally:
            ray.shutdown()


def _search(tmp_path: Path, *overrides: str, name: str) -> Any:
    from kdsearch import run_search

    return run_search(QUICKSTART, overrides=[f"name={name}", "search.baseline=false",
                                             *TINY_TEACHER, *overrides],
                      results_dir=tmp_path, report=False)


@pytest.mark.slow
def test_run_search_started_and_stopped_its_own_ray(digits_search: tuple[Any, Path]
                                                    ) -> None:
    import ray

    _, out = digits_search
    assert json.loads((out / "run.json").read_text())["hardware"]["nodes"] == 1  # its own
    assert not ray.is_initialized()


@pytest.mark.slow
def test_a_ray_of_our_own_starts_no_idle_workers_and_still_runs_tasks() -> None:
    # Ray prestarts an idle worker per CPU for the first driver; Tune never gives a trial one
    # of them, so on 2 cores they only took CPU from the trial actors starting beside them
    import ray

    def idle_workers() -> list[int]:
        found = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                cmd = (stat.parent / "cmdline").read_bytes()
                ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
                grandparent = int((Path("/proc") / str(ppid) / "stat").read_text()
                                  .rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            if cmd.startswith(b"ray::IDLE") and grandparent == os.getpid():
                found.append(int(stat.parent.name))
        return found

    with _restored_environ():
        if ray.is_initialized():
            ray.shutdown()
        assert init_ray(None)
        try:
            deadline = time.monotonic() + 4.0  # Ray's own start had them up within 2 s here
            while time.monotonic() < deadline:
                assert idle_workers() == []
                time.sleep(0.2)
            # workers still start on demand: a task runs, in a process under our raylet
            pid = ray.get(ray.remote(lambda: os.getpid()).remote(), timeout=60)
            assert pid != os.getpid()
        finally:
            ray.shutdown()


def test_trial_inputs_cross_the_object_store_without_a_copy(logical_gpus: None) -> None:
    import ray

    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(3000, 1, 28, 28, generator=gen), torch.randint(0, 10, (3000,), generator=gen)
    data = Dataset("fake", Split(x, y), Split(x[:500], y[:500]), 10, (1, 28, 28), (0.1,), (0.3,))
    logits = torch.randn(3000, 10, generator=gen)
    shipped = for_object_store({"data": data, "logits": logits, "none": None})
    assert isinstance(shipped["data"].train.x, np.ndarray) and shipped["none"] is None
    ref = ray.put(shipped)
    first, second = (from_object_store(ray.get(ref)) for _ in range(2))
    for got in (first, second):
        assert isinstance(got["data"], Dataset) and isinstance(got["data"].val, Split)
        assert torch.equal(got["data"].train.x, x) and torch.equal(got["data"].val.y, y[:500])
        assert got["data"].train.y.dtype == torch.int64 and torch.equal(got["logits"], logits)
        assert got["data"].input_shape == (1, 28, 28) and got["data"].mean == (0.1,)
    # both reads map the same memory of the object store: no copy per trial
    assert first["data"].train.x.data_ptr() == second["data"].train.x.data_ptr()
    # what it replaces: a torch tensor comes back as a new copy on every read
    tensor_ref = ray.put({"x": x})
    assert ray.get(tensor_ref)["x"].data_ptr() != ray.get(tensor_ref)["x"].data_ptr()


@pytest.mark.slow
def test_searcher_seed_makes_suggestions_reproducible(logical_gpus: None, tmp_path: Path
                                                      ) -> None:
    common = ["search.num_samples=3", "training.epochs=1", "search.grace_period=1",
              "search.max_concurrent_trials=1", "search.gpus_per_trial=0"]
    dims = ["temperature", "alpha", "lr", "width"]
    firsts = []
    for name, seed in (("a", 7), ("b", 7), ("c", 8)):
        result = _search(tmp_path, *common, f"search.seed={seed}", name=name)
        firsts.append(_first_configs(_rows(result.results_dir / "trials.csv"), dims, 3))
    assert firsts[0] == firsts[1]
    assert firsts[0] != firsts[2]
    assert all(a != c for a, c in zip(firsts[0], firsts[2]))


@pytest.mark.slow
def test_the_baseline_searcher_does_not_replay_the_distilled_ones_random_numbers(
        logical_gpus: None, tmp_path: Path) -> None:
    """One searcher over all widths per phase: with one seed for both, the baseline's first lr
    sat at the same point of its range as the distilled trial's first temperature."""
    result = _search(tmp_path, "search.baseline=true", "search.per_width=false",
                     "search.num_samples=2", "training.epochs=1", "search.grace_period=1",
                     "search.max_concurrent_trials=1", "search.gpus_per_trial=0",
                     "search.seed=7", name="phases")
    rows = _rows(result.results_dir / "trials.csv")
    first = {phase: next(r for r in rows if r["phase"] == phase)
             for phase in ("distill", "baseline")}
    # where each first draw sits in its loguniform range (quickstart: T in [1, 20], lr in
    # [3e-4, 3e-2]): the same random number would put both at one point
    t = math.log(float(first["distill"]["temperature"])) / math.log(20.0)
    lr = math.log(float(first["baseline"]["lr"]) / 3e-4) / math.log(100.0)
    assert abs(t - lr) > 1e-6, (t, lr)


@pytest.mark.slow
def test_per_width_search_tunes_every_width(logical_gpus: None, tmp_path: Path) -> None:
    result = _search(tmp_path, "search.per_width=true", "search.num_samples=6",
                     "search.space.width.values=[8,32]", "training.epochs=2",
                     "search.grace_period=1", "search.gpus_per_trial=0", "search.seed=3",
                     name="per_width")
    rows = _rows(result.results_dir / "trials.csv")
    assert Counter(r["width"] for r in rows) == {"8": 3, "32": 3}
    assert {r["status"] for r in rows} == {"TERMINATED"}
    # each width's searcher draws its own settings from search.seed
    by_width = {w: [(r["temperature"], r["alpha"], r["lr"]) for r in rows if r["width"] == w]
                for w in ("8", "32")}
    assert not set(by_width["8"]) & set(by_width["32"])


@pytest.mark.slow
def test_diverging_trial_is_recorded_and_the_search_goes_on(logical_gpus: None,
                                                           tmp_path: Path) -> None:
    # plain SGD at lr 1e12 overflows to NaN in the first epoch; 3e-3 trains
    result = _search(tmp_path, "search.num_samples=4", "training.epochs=2",
                     "search.grace_period=2", "training.optimizer=sgd",
                     "search.space={lr: {distribution: choice, values: [0.003, 1.0e+12]}}",
                     "search.gpus_per_trial=0", "search.max_concurrent_trials=1",
                     "search.seed=1", name="diverge")
    rows = _rows(result.results_dir / "trials.csv")
    assert len(rows) == 4 and {r["status"] for r in rows} == {"TERMINATED"}
    bad = [r for r in rows if r["diverged"] == "1"]
    good = [r for r in rows if r["diverged"] == "0"]
    assert bad and good, "the seed should draw both learning rates"
    for r in bad:
        assert float(r["lr"]) == 1e12
        assert "nan" in r["error"] and "lower the learning rate" in r["error"]
        assert r["stopped_early"] == "0"
        assert r["epochs"] == "0"  # it completed none (it diverged in its first)
    assert all(float(r["lr"]) == 0.003 and r["error"] == "" for r in good)
    assert result.best_config == {"lr": 0.003}
    # a diverged trial's last report is not an epoch: progress.csv holds only real epochs
    progress = _rows(result.results_dir / "progress.csv")
    assert not {p["trial_id"] for p in progress} & {r["trial_id"] for r in bad}


@pytest.mark.slow
def test_gpu_shares_pack_trials_and_fall_back_to_cpu(logical_gpus: None, tmp_path: Path
                                                     ) -> None:
    import ray

    result = _search(tmp_path, "search.num_samples=4", "training.epochs=2",
                     "search.grace_period=2", "search.gpus_per_trial=0.5",
                     "search.cpus_per_trial=2", name="gpus")
    assert ray.is_initialized(), "run_search must not shut down a Ray it did not start"
    out = result.results_dir
    run = json.loads((out / "run.json").read_text())
    assert run["hardware"]["gpus"] == 2 and run["gpus_per_trial"] == 0.5
    assert run["max_concurrent_trials"] == 4  # min(8 CPUs / 2, 2 GPUs / 0.5)
    rows = _rows(out / "trials.csv")
    assert len(rows) == 4
    # each trial saw one logical GPU (which one, Ray decides: when trials end before the next
    # start, Ray packs them all onto GPU 0, so the test does not require both to be used)
    assert {r["gpu_ids"] for r in rows} <= {"0", "1"} and all(r["gpu_ids"] for r in rows)
    last = list(_last_results(out / "search").values())
    if not torch.cuda.is_available():
        assert {r["device"] for r in last} == {"cpu"}  # a logical GPU without CUDA: CPU
    assert {r["threads"] for r in last} == {2}
    # trial actors alive at once: reuse_actors keeps one per concurrent slot
    assert 2 <= len({r["pid"] for r in last}) <= 4


@pytest.mark.slow
@pytest.mark.parametrize("override, message", [
    ("search.cpus_per_trial=16", "search.cpus_per_trial = 16 but the largest Ray node has 8"),
    ("search.gpus_per_trial=3", "search.gpus_per_trial = 3 but the largest Ray node has 2")])
def test_a_trial_no_node_can_hold_is_refused_before_writing(
        logical_gpus: None, tmp_path: Path, override: str, message: str) -> None:
    with pytest.raises(SearchError, match=message):
        _search(tmp_path, override, name="toobig")  # Tune would wait for it forever
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_final_retrainings_run_as_ray_tasks_and_match_in_process(logical_gpus: None) -> None:
    from kdsearch.config import default_cache_dir, default_data_dir
    from kdsearch.data import load_dataset
    from kdsearch.selection import Setting, training_config
    from kdsearch.tables import BASELINE, DISTILLED
    from kdsearch.retrain import Retraining, in_process
    from kdsearch.trainable import make_payload, ray_runner
    from kdsearch.teacher import get_teacher

    cfg = load_config(QUICKSTART, [*TINY_TEACHER, "training.epochs=3"])
    cache = default_cache_dir(cfg)
    data = load_dataset(cfg.dataset, data_dir=default_data_dir(cfg), cache_dir=cache)
    teacher = get_teacher(cfg, data, cache_dir=cache)

    def setting(kind: str, width: int, **values: Any) -> Setting:
        return Setting(kind, width, {"lr": 3e-3, **values}, True, False, None, None, None)

    diverging = dataclasses.replace(cfg, training=dataclasses.replace(cfg.training,
                                                                       optimizer="sgd"))
    jobs = [Retraining(0, 0, training_config(cfg, setting(DISTILLED, 8, temperature=4.0), 0), 1),
            Retraining(0, 1, training_config(cfg, setting(DISTILLED, 8, temperature=4.0), 1), 1),
            Retraining(1, 0, training_config(cfg, setting(BASELINE, 16), 0), None),
            Retraining(2, 0, training_config(diverging, setting(DISTILLED, 8, lr=1e30), 0), 1)]
    payload = make_payload(cfg, data, teacher, cpus_per_trial=1.0)  # as run_search's
    remote = dict(ray_runner(payload, gpus_per_task=0.0)(jobs))
    local = dict(in_process(data, teacher)(jobs))
    assert set(remote) == set(local) == set(jobs)
    for job in jobs[:3]:
        assert remote[job].val_acc == local[job].val_acc
        assert remote[job].state.keys() == local[job].state.keys()
        # the same weights, bit for bit, trained in a Ray worker as here
        assert all(torch.equal(remote[job].state[k], v) for k, v in local[job].state.items())
    assert remote[jobs[0]].val_acc != remote[jobs[1]].val_acc  # the seed matters
    assert remote[jobs[3]].state is None and local[jobs[3]].state is None  # diverged
    # trained in Ray's worker processes, side by side, not in this one
    workers = {r.worker for r in remote.values()}
    assert all(int(w.rsplit(":", 1)[1]) != os.getpid() for w in workers)
    assert len(workers) >= 2
    assert {r.worker for r in local.values()} == {f"{socket.gethostname()}:{os.getpid()}"}


@pytest.mark.slow
def test_a_search_run_as_a_library_prints_nothing(logical_gpus: None, tmp_path: Path,
                                                       capfd: pytest.CaptureFixture) -> None:
    from kdsearch import run_search

    capfd.readouterr()
    result = run_search(QUICKSTART, overrides=["name=quiet", *TINY_TEACHER, "training.epochs=2",
                                               "search.num_samples=4", "search.grace_period=2",
                                               "search.gpus_per_trial=0.5", "report.seeds=1"],
                        results_dir=tmp_path)
    out, err = capfd.readouterr()
    assert "final" not in out + err and "search:" not in out + err, (out + err)[-2000:]
    # the report is still made in full (its retrainings asking for the trials' GPU share)
    final = json.loads((result.results_dir / "final.json").read_text())
    assert final["retrained"] == 8 and result.report_path is not None


# --------------------------------------------------------------------------- kill and resume
def _descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                stat = Path(f"/proc/{d}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(d))
    out, todo = set(), [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            if c not in out:
                out.add(c)
                todo.append(c)
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _kill_tree(proc: subprocess.Popen) -> set[int]:
    """SIGKILL the driver's process group and every process it started (Ray's raylet, GCS,
    workers: some of them in process groups of their own)."""
    tree = _descendants(proc.pid)
    for pid in (-proc.pid, *tree):  # -pid: the whole group
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()
    return tree


RESUME_ARGS = ["search.num_samples=12", "training.epochs=30", "search.grace_period=5",
               "search.reduction_factor=3", "search.checkpoint_every_s=0",
               "search.baseline=false", "search.max_concurrent_trials=2", *TINY_TEACHER]


def _simulate_lost_checkpoint(exp_dir: Path) -> bool:
    """Make the state Tune saved name a checkpoint that was since replaced and deleted, as a
    kill between Tune deleting it and writing its next experiment state leaves it."""
    from ray.tune.execution.experiment_state import _find_newest_experiment_checkpoint
    from ray.tune.experiment import Trial
    from ray.tune.utils.serialization import _loads_with_cloudpickle

    # the kill may have torn the newest saved state (seen: an empty experiment_state-*.json):
    # mend it as the resume would, then simulate on the state the resume restores
    mend_torn_state(str(exp_dir))
    state = _loads_with_cloudpickle(Path(_find_newest_experiment_checkpoint(str(exp_dir)))
                                    .read_text())
    for json_state, metadata in state["trial_data"]:
        trial = Trial.from_json_state(json_state, stub=True)
        trial.restore_run_metadata(metadata)
        if trial.status == Trial.TERMINATED or trial.checkpoint is None:
            continue
        named = exp_dir / trial.storage.trial_dir_name / Path(trial.checkpoint.path).name
        index = int(named.name.split("_")[1])
        newer = named.with_name(f"checkpoint_{index + 1:06d}")
        if not named.exists() and newer.is_dir():
            return True  # the kill itself left it so: common with a checkpoint every epoch
        if named.is_dir():
            # as if Tune had registered one more checkpoint (this one's content: a newer one
            # on disk may hold an epoch the driver never recorded) and deleted this one
            for other in named.parent.glob("checkpoint_*"):
                if other.name > named.name:
                    shutil.rmtree(other)
            named.rename(newer)
            return True
    return False


def _run_and_kill(tmp_path: Path, *, driver_only: bool = False
                  ) -> tuple[Path, dict[str, str], list[str]]:
    """`kdsearch run` in a subprocess, SIGKILLed with its Ray about halfway through (with
    `driver_only`, the driver alone, as `kill -9 <pid>` does: then `_LEFT` holds the processes
    its Ray had started)."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    cmd = [sys.executable, "-m", "kdsearch"]
    sets = [a for s in RESUME_ARGS for a in ("--set", s)]
    with open(tmp_path / "run.out", "w") as out, open(tmp_path / "run.err", "w") as err:
        proc = subprocess.Popen([*cmd, "run", str(QUICKSTART), "--results-dir", "results",
                                 "--no-report", *sets], cwd=tmp_path, env=env, stdout=out,
                                stderr=err, start_new_session=True)
    folder = tmp_path / "results" / "quickstart"
    deadline = time.monotonic() + 240
    try:
        while True:
            assert proc.poll() is None, "the search ended before it could be killed"
            assert time.monotonic() < deadline, "no trial finished in time"
            if (folder / "trials.csv").exists() and (folder / "progress.csv").exists():
                rows = _rows(folder / "trials.csv")
                epochs = Counter(p["trial_id"] for p in _rows(folder / "progress.csv"))
                # about half done, and a trial halfway through (it has checkpoints to resume)
                if sum(r["status"] == "TERMINATED" for r in rows) >= 5 and any(
                        r["status"] == "RUNNING" and epochs[r["trial_id"]] >= 3 for r in rows):
                    break
            time.sleep(0.05)
    finally:
        if driver_only:
            _LEFT[:] = sorted(_descendants(proc.pid))
            proc.kill()
            proc.wait()
    if driver_only:
        return folder, env, cmd
    tree = _kill_tree(proc)
    deadline = time.monotonic() + 30
    while any(_alive(p) for p in tree) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(_alive(p) for p in tree), "Ray processes of the killed driver linger"
    return folder, env, cmd


_LEFT: list[int] = []  # the processes a driver killed alone had started


def assert_study_is_the_records(folder: Path) -> None:
    """optuna.db holds every trial of trials.csv, in its phase's study, with progress.csv's
    val_acc of each epoch as its intermediate values, and the state its record says."""
    import optuna

    trials, progress = _rows(folder / "trials.csv"), _rows(folder / "progress.csv")
    storage = f"sqlite:///{folder / 'optuna.db'}"
    seen = {}
    for phase in ("distill", "baseline"):
        if phase in {r["phase"] for r in trials}:
            for t in optuna.load_study(study_name=phase, storage=storage).trials:
                seen[t.user_attrs["trial_id"]] = (phase, t)
    assert set(seen) == {r["trial_id"] for r in trials}
    for r in trials:
        phase, t = seen[r["trial_id"]]
        curve = {int(p["epoch"]): float(p["val_acc"]) for p in progress
                 if p["trial_id"] == r["trial_id"]}
        assert phase == r["phase"] and t.intermediate_values == pytest.approx(curve)
        done = r["status"] == "TERMINATED" and r["diverged"] == "0"
        assert t.state.name == ("FAIL" if not done else "PRUNED" if r["stopped_early"] == "1"
                                else "COMPLETE"), r
        if t.state.name == "COMPLETE":
            assert t.value == pytest.approx(float(r["val_acc"]))


def _assert_one_whole_search(folder: Path, n: int) -> list[dict[str, str]]:
    assert_study_is_the_records(folder)  # (a resumed search's study is whole too)
    trials = _rows(folder / "trials.csv")
    assert len(trials) == n, "exactly num_samples trials"
    assert len({r["trial_id"] for r in trials}) == n
    assert {r["status"] for r in trials} == {"TERMINATED"}, trials
    progress = _rows(folder / "progress.csv")
    assert max(Counter((p["trial_id"], p["epoch"]) for p in progress).values()) == 1
    for r in trials:
        assert [int(p["epoch"]) for p in progress if p["trial_id"] == r["trial_id"]] == \
            list(range(1, int(r["epochs"]) + 1))
    return trials


@pytest.mark.slow
def test_resume_after_a_kill_that_tore_rays_saved_state(tmp_path: Path) -> None:
    # Tune copies its experiment state into the results folder in the background: a kill
    # mid-copy leaves it truncated (seen in CI), and Tuner.restore fails on it
    folder, env, cmd = _run_and_kill(tmp_path)
    state = max((folder / "search").glob("experiment_state-*.json"))
    text = state.read_text()
    state.write_text(text[:len(text) // 2])
    # Tune writes the staging copy in place (json.dump into the open file, not a rename), so
    # the kill itself can tear it too, now and then: then no whole copy of that state is left
    staged = list({p.resolve() for p in (Path(os.environ.get("RAY_TMPDIR") or
                                             tempfile.gettempdir()) / "ray").glob(
        f"session_*/artifacts/*/search/driver_artifacts/{state.name}")})  # (and session_latest)
    assert len(staged) == 1, staged
    try:
        json.loads(staged[0].read_text())
        expected = "cut short by the kill; taken whole from Ray's staging folder"
    except ValueError:
        expected = "cut short by the kill; continuing from the state saved before it"
    resumed = subprocess.run([*cmd, "resume", str(folder), "--no-report"], cwd=tmp_path,
                             env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Traceback" not in resumed.stderr, resumed.stderr[-3000:]
    assert expected in resumed.stdout, resumed.stdout[-3000:]
    _assert_one_whole_search(folder, 12)


@pytest.mark.slow
def test_resume_after_the_driver_is_killed(tmp_path: Path) -> None:
    """`kill -9` of the driver alone, then `kdsearch resume`: the search completes, and no
    process the killed driver's Ray started is left (Ray 2.60 leaves its dashboard and
    runtime-env agents running: the resume ends them)."""
    folder, env, cmd = _run_and_kill(tmp_path, driver_only=True)
    started_by_killed_run = list(_LEFT)
    time.sleep(1.0)
    lingering = [p for p in started_by_killed_run if _alive(p)]
    first_start = json.loads((folder / "run.json").read_text())["search"]["started"]
    killed_searched = max(float(p["wall_time"]) for p in _rows(folder / "progress.csv")) \
        - first_start

    before = {r["trial_id"]: r for r in _rows(folder / "trials.csv")}
    progress_before = Counter(p["trial_id"] for p in _rows(folder / "progress.csv")
                              if p["epoch"].isdigit())
    finished = {t for t, r in before.items() if r["status"] == "TERMINATED"}
    assert 5 <= len(finished) < 12
    assert _simulate_lost_checkpoint(folder / "search"), "no unfinished trial to resume"

    resumed = subprocess.run([*cmd, "resume", str(folder), "--no-report"], cwd=tmp_path,
                             env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Traceback" not in resumed.stderr, resumed.stderr[-3000:]
    assert "Warning" not in resumed.stderr, resumed.stderr[-3000:]  # (Optuna's, on re-reports)
    assert "search resumed:" in resumed.stdout
    assert "best distilled: val_acc" in resumed.stdout
    assert [p for p in started_by_killed_run if _alive(p)] == []
    # the time spent searching counts the killed run's too; the elapsed time, the pause as well
    search = json.loads((folder / "run.json").read_text())["search"]
    assert search["status"] == "finished" and search["started"] == first_start
    assert search["wall_seconds"] > killed_searched > 0
    assert search["elapsed_seconds"] == pytest.approx(search["finished"] - first_start)
    assert search["elapsed_seconds"] >= search["wall_seconds"] - 0.5
    if lingering:
        assert "processes that a killed kdsearch left running" in resumed.stdout, lingering

    trials = _rows(folder / "trials.csv")
    assert len(trials) == 12, "exactly num_samples trials"
    assert len({r["trial_id"] for r in trials}) == 12
    assert {r["status"] for r in trials} == {"TERMINATED"}, trials
    after = {r["trial_id"]: r for r in trials}
    progress = _rows(folder / "progress.csv")
    assert max(Counter((p["trial_id"], p["epoch"]) for p in progress).values()) == 1
    counts = Counter(p["trial_id"] for p in progress)
    for t in finished:  # a trial that had ended did not train again, and kept its record
        if t in after:
            assert counts[t] == progress_before[t] == int(before[t]["epochs"])
            for key in ("epochs", "val_acc", "stopped_early", "params"):
                assert after[t][key] == before[t][key]
    for t, r in after.items():
        assert counts[t] == int(r["epochs"])
        assert [int(p["epoch"]) for p in progress if p["trial_id"] == t] == \
            list(range(1, int(r["epochs"]) + 1))


def test_one_kdsearch_at_a_time_runs_a_search_folder(tmp_path: Path) -> None:
    """Two `kdsearch run`s of one name at once wrote their trials into one folder."""
    out = tmp_path / "results" / "quickstart"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from pathlib import Path; from kdsearch.folders import exclusive\n"
        f"with exclusive(Path({str(out)!r})):\n"
        "    print('held', flush=True); time.sleep(60)\n")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(SearchError, match="another kdsearch is running the search in"):
            with exclusive(out):
                pass
    finally:
        holder.kill()
        holder.wait()
    with exclusive(out):  # free again once the holder is gone
        pass
    assert list((tmp_path / "results").iterdir()) == []  # and the lock file is gone with it




def test_a_search_saved_before_the_search_module_was_split_still_restores() -> None:
    """Ray Tune's saved Tuner (tuner.pkl) of a search run by kdsearch before its search module
    was split (commit b123f3a; tests/data/tuner-before-split.pkl) names its searcher and
    scheduler by their old path (search._PhaseSearcher, _PhaseScheduler), the functions its
    status callback called there, and the trainable by the name Tune restores it under."""
    import pickle

    from kdsearch.searchers import PhaseScheduler
    from kdsearch.trainable import TRAINABLE_NAME

    # kdsearch's own test file, loaded as Tune loads it
    state = pickle.loads((REPO / "tests" / "data" / "tuner-before-split.pkl").read_bytes())
    assert isinstance(state["_tune_config"].search_alg, PhaseSearcher)
    assert isinstance(state["_tune_config"].scheduler, PhaseScheduler)
    assert state["__trainable_name"] == TRAINABLE_NAME
    assert len(state["_run_config"].callbacks) == 1  # the old status callback, replaced on resume


def _loggers_now() -> dict[str, tuple]:
    import logging

    found = {name: obj for name, obj in logging.Logger.manager.loggerDict.items()
             if isinstance(obj, logging.Logger)}
    found["(root)"] = logging.getLogger()
    return {name: (lg.level, list(lg.handlers), list(lg.filters), lg.propagate, lg.disabled)
            for name, lg in found.items()}


@pytest.mark.slow
def test_a_search_leaves_the_callers_process_as_it_found_it(tmp_path: Path) -> None:
    """Environment variables (kdsearch's for Ray Tune, and those ray.init sets for good),
    warning filters, and the loggers of Ray, Optuna and everyone else: as they were."""
    import warnings

    import optuna  # noqa: F401  (their loggers exist before the search: they must be as they were)
    import ray

    from kdsearch import run_search

    if ray.is_initialized():
        ray.shutdown()
    environ, filters, loggers = dict(os.environ), list(warnings.filters), _loggers_now()
    run_search(QUICKSTART, overrides=["name=clean", "search.num_samples=2", "training.epochs=2",
                                      "search.baseline=false", "search.grace_period=1",
                                      *TINY_TEACHER], results_dir=tmp_path, report=False)
    assert not ray.is_initialized()
    assert dict(os.environ) == environ
    assert warnings.filters == filters
    after = _loggers_now()
    assert {name: after[name] for name in loggers} == loggers
