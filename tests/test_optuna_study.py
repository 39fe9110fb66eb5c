"""optuna.db (`kdsearch.optuna_study`): written while the search runs, the end of each trial as
Optuna states it; driven by stand-ins for Tune's trials. (A whole search's study against its
records, also after a resume: tests/test_search.py.)"""

from __future__ import annotations

import pickle
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import optuna

from kdsearch.config import config_from_dict
from kdsearch.optuna_study import StudyWriter

CFG = config_from_dict({"training": {"epochs": 2}, "search": {"space": {
    "lr": {"distribution": "loguniform", "low": 1e-3, "high": 1e-1}}}})


def _study(folder: Path) -> list[Any]:
    assert (folder / "optuna.db").is_file()  # made whole, renamed into place
    return optuna.load_study(study_name="distill",
                             storage=f"sqlite:///{folder / 'optuna.db'}").trials


def _until(check: Any, seconds: float = 10.0) -> Any:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.05)
    raise AssertionError("not written in time")


def test_the_study_is_brought_up_to_date_while_the_search_runs(tmp_path: Path) -> None:
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    writer = StudyWriter(tmp_path, CFG, every=0.05)
    trials = {name: SimpleNamespace(trial_id=name, config={"phase": "distill", "lr": lr},
                                    last_result=None)
              for name, lr in (("a0000001", 0.01), ("a0000002", 0.02), ("a0000003", 0.05))}
    writer.on_step_begin(0, [])
    for epoch, acc in ((1, 0.5), (2, 0.6)):
        writer.on_trial_result(0, [], trials["a0000001"], {"epoch": epoch, "val_acc": acc})
    # while the trial runs: its epochs so far, as intermediate values
    running = _until(lambda: [t for t in _study(tmp_path) if len(t.intermediate_values) == 2])
    assert running[0].state.name == "RUNNING" and running[0].params == {"lr": 0.01}
    assert running[0].intermediate_values == {1: 0.5, 2: 0.6}
    assert running[0].user_attrs == {"trial_id": "a0000001"}
    pickle.dumps(writer)  # Tune keeps its callbacks in tuner.pkl
    # the ends: the full budget COMPLETE, stopped early PRUNED, diverged FAIL
    trials["a0000001"].last_result = {"epoch": 2, "val_acc": 0.6}
    writer.on_trial_complete(0, [], trials["a0000001"])
    writer.on_trial_result(0, [], trials["a0000002"], {"epoch": 1, "val_acc": 0.3})
    trials["a0000002"].last_result = {"epoch": 1, "val_acc": 0.3}
    writer.on_trial_complete(0, [], trials["a0000002"])
    trials["a0000003"].last_result = {"epoch": 0, "val_acc": 0.0, "diverged": 1}
    writer.on_trial_result(0, [], trials["a0000003"], trials["a0000003"].last_result)
    writer.on_trial_complete(0, [], trials["a0000003"])
    writer.on_experiment_end([])  # the rest written before it returns
    ended = {t.user_attrs["trial_id"]: t for t in _study(tmp_path)}
    assert {k: t.state.name for k, t in ended.items()} == {
        "a0000001": "COMPLETE", "a0000002": "PRUNED", "a0000003": "FAIL"}
    assert ended["a0000001"].value == 0.6 and ended["a0000002"].intermediate_values == {1: 0.3}
    assert ended["a0000003"].intermediate_values == {}  # a diverged report is not an epoch
