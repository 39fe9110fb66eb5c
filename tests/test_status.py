"""The live status callback (`kdsearch.status`): what trials.csv records of each trial and what
the status line says, driven by stand-ins for Tune's trials."""

from __future__ import annotations

import csv
import logging
import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from kdsearch.config import config_from_dict
from kdsearch.ray_workarounds import finished_trials
from kdsearch.results import best_trial
from kdsearch.status import StatusCallback
from kdsearch.tables import TrialRow


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_a_searched_epoch_budget_does_not_overwrite_the_epochs_a_trial_ran(tmp_path: Path
                                                                           ) -> None:
    """trials.csv's `epochs` is the epochs run; a searched `epochs` goes to `epoch_budget`. The
    resume replays the epochs run to ASHA, and the retraining takes the searched budget."""
    cfg = config_from_dict({"training": {"epochs": 10}, "search": {"space": {
        "lr": {"distribution": "loguniform", "low": 1e-3, "high": 1e-1},
        "epochs": {"distribution": "choice", "values": [5, 20]}}}})
    callback = StatusCallback(tmp_path, cfg, {"distilled": 2}, fresh=True)
    callback.setup()
    for trial_id, budget, ran, acc in (("a0000001", 20, 2, 0.8), ("a0000002", 5, 5, 0.7)):
        trial = SimpleNamespace(trial_id=trial_id, config={"phase": "distill", "lr": 0.01,
                                                           "epochs": budget},
                                last_result={"epoch": ran, "val_acc": acc, "val_loss": 0.5,
                                             "train_loss": 0.4, "diverged": 0})
        callback.record(trial, "TERMINATED")
    callback.write_trials()
    rows = _rows(tmp_path / "trials.csv")
    assert [(r["epochs"], r["epoch_budget"], r["stopped_early"]) for r in rows] == [
        ("2", "20", "1"), ("5", "5", "0")]
    assert {k: v["epoch"] for k, v in finished_trials(tmp_path).items()} == {
        "a0000001": 2, "a0000002": 5}
    settings, best = best_trial([TrialRow.from_csv(r) for r in rows], "distilled",
                                ["lr", "epochs"])
    assert settings["epochs"] == 5 and best.trial_id == "a0000002"  # full budget first


def test_trials_csv_and_the_live_status_record_what_each_trial_ran(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The status line shows a searched epoch budget, not the epochs run; a diverged trial
    records the epochs it completed; a trial that failed before its first report still has its
    width's parameter count."""
    cfg = config_from_dict({"training": {"epochs": 10}, "student": {"width": 16},
                            "search": {"space": {
                                "lr": {"distribution": "loguniform", "low": 1e-3, "high": 1e-1},
                                "epochs": {"distribution": "choice", "values": [5, 20]}}}})
    callback = StatusCallback(tmp_path, cfg, {"distilled": 3}, fresh=True,
                              params_by_width={16: 1530})
    callback.setup()
    caplog.set_level(logging.INFO, logger="kdsearch")

    def trial(trial_id: str, last: dict[str, Any] | None) -> SimpleNamespace:
        return SimpleNamespace(trial_id=trial_id, config={"phase": "distill", "lr": 0.01,
                                                          "epochs": 20},
                               last_result=last, error_file=None)

    callback.on_trial_complete(0, [], trial("a0000001", {
        "epoch": 2, "val_acc": 0.8, "val_loss": 0.5, "train_loss": 0.4, "diverged": 0,
        "params": 1530}))
    assert "stopped at epoch 2: val_acc 0.8000 (lr=0.01 epochs=20)" in caplog.messages[-1]
    callback.on_trial_complete(0, [], trial("a0000002", {
        "epoch": 1, "val_acc": 0.0, "val_loss": math.nan,
        "train_loss": math.nan, "diverged": 1, "error": "training loss became nan"}))
    callback.on_trial_error(0, [], trial("a0000003", None))
    # a running trial's row follows the result being reported (Tune updates last_result after)
    running = trial("a0000004", {"epoch": 1, "val_acc": 0.5, "diverged": 0})
    callback.on_trial_result(0, [], running, {"epoch": 2, "val_acc": 0.6, "diverged": 0})
    assert (callback.records["a0000004"].epochs, callback.records["a0000004"].val_acc) == (2, 0.6)
    rows = {r["trial_id"]: r for r in _rows(tmp_path / "trials.csv")}
    assert (rows["a0000002"]["epochs"], rows["a0000002"]["diverged"]) == ("1", "1")
    assert rows["a0000003"]["status"] == "ERROR" and rows["a0000003"]["params"] == "1530"


def test_while_trials_run_a_line_says_their_epochs_and_the_time_left(
        tmp_path: Path, caplog: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """Long epochs left the console silent until a trial ended: every PROGRESS_EVERY_S seconds
    a line gives each running trial's epoch and an estimate of the time left."""
    import kdsearch.status

    cfg = config_from_dict({"training": {"epochs": 10}, "student": {"width": 16}, "search": {
        "space": {"lr": {"distribution": "loguniform", "low": 1e-3, "high": 1e-1}}}})
    callback = StatusCallback(tmp_path, cfg, {"distilled": 4}, fresh=True, concurrency=2)
    callback.setup()
    caplog.set_level(logging.INFO, logger="kdsearch")

    def trial(trial_id: str) -> SimpleNamespace:
        return SimpleNamespace(trial_id=trial_id, config={"phase": "distill", "lr": 0.01},
                               last_result=None, error_file=None)

    a, b = trial("a0000001"), trial("a0000002")
    callback.on_trial_result(0, [], a, {"epoch": 1, "val_acc": 0.5, "epoch_seconds": 2.0})
    assert not any(m.startswith("search:") for m in caplog.messages)  # not yet: 30 s apart
    monkeypatch.setattr(kdsearch.status, "PROGRESS_EVERY_S", 0.0)
    callback.on_trial_result(0, [], b, {"epoch": 3, "val_acc": 0.6, "epoch_seconds": 2.0})
    line = caplog.messages[-1]
    assert line.startswith("search: 0 of 4 trials ended; running: distilled w16 epoch 1/10, "
                           "distilled w16 epoch 3/10"), line
    # left: 9 + 7 epochs of the running trials, 2 trials of 10 not started; 2 s an epoch, 2 at
    # a time: (16 + 20) * 2 / 2 = 36 s
    assert line.endswith("; about 36 s left"), line
