"""kdsearch.plots: each plot is a PNG file in the folder and a record of what it drew (its series
and their point counts); no plot, and no file, without data."""

from __future__ import annotations

from pathlib import Path

import pytest

from kdsearch.config import ExperimentConfig, config_from_dict
from kdsearch.plots import (PLOT_ALPHA, PLOT_BEST_SO_FAR, PLOT_TEMPERATURE, plot_best_so_far,
                            plot_val_acc_vs)
from kdsearch.tables import BASELINE, DISTILLED, ERROR, TERMINATED, TrialRow

PNG = b"\x89PNG\r\n\x1a\n"


def _is_png(path: Path) -> bool:
    return path.read_bytes()[:8] == PNG and path.stat().st_size > 1000


def _progress(phase: str, accs: list[str]) -> list[dict[str, str]]:
    return [{"phase": phase, "trial_id": f"{phase}{i}", "epoch": "1", "val_acc": a}
            for i, a in enumerate(accs)]


def test_best_so_far_draws_a_step_line_per_kind(tmp_path: Path) -> None:
    progress = _progress("distill", ["0.5", "0.7", "0.6"]) + _progress("baseline", ["0.4"])
    path = tmp_path / PLOT_BEST_SO_FAR
    drawn = plot_best_so_far(progress, path)
    assert drawn == {"file": PLOT_BEST_SO_FAR,
                     "title": "Search progress: best val_acc vs trial-epochs",
                     "xlabel": "trial-epochs spent",
                     "ylabel": "best validation accuracy so far (%)",
                     "series": {DISTILLED: 3, BASELINE: 1}}
    assert _is_png(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [PLOT_BEST_SO_FAR]  # no stray file


def test_best_so_far_skips_epochs_without_an_accuracy(tmp_path: Path) -> None:
    progress = _progress("distill", ["0.5", "", "0.6"]) + [{"phase": "distill"}]
    drawn = plot_best_so_far(progress, tmp_path / "p.png")
    assert drawn is not None and drawn["series"] == {DISTILLED: 2}


def test_best_so_far_without_progress_draws_nothing(tmp_path: Path) -> None:
    assert plot_best_so_far([], tmp_path / PLOT_BEST_SO_FAR) is None
    assert list(tmp_path.iterdir()) == []


def _cfg() -> ExperimentConfig:
    return config_from_dict({"search": {"space": {
        "temperature": {"distribution": "loguniform", "low": 1, "high": 20},
        "width": {"distribution": "choice", "values": [8, 16]}}}})


def _trial(i: int, width: int, temperature: float, acc: float | None, *,
           status: str = TERMINATED, early: bool = False, diverged: bool = False,
           kind: str = DISTILLED) -> TrialRow:
    return TrialRow(kind, f"t{i}", status, stopped_early=early, diverged=diverged, val_acc=acc,
                    values={"temperature": temperature, "width": width})


def test_val_acc_against_a_searched_value_draws_a_series_per_width(tmp_path: Path) -> None:
    rows = [_trial(0, 8, 2.0, 0.90), _trial(1, 8, 4.0, 0.92, early=True),
            _trial(2, 16, 8.0, 0.95), _trial(3, 16, 1.5, 0.94),
            _trial(4, 16, 3.0, 0.93),
            # not drawn: a baseline, a failed trial, a diverged one, one without an accuracy
            _trial(5, 8, 2.0, 0.97, kind=BASELINE), _trial(6, 8, 2.0, None, status=ERROR),
            _trial(7, 16, 2.0, 0.1, diverged=True), _trial(8, 16, 2.0, None)]
    path = tmp_path / PLOT_TEMPERATURE
    drawn = plot_val_acc_vs("temperature", _cfg(), rows, path)
    assert drawn is not None
    assert drawn["series"] == {"width 8": 2, "width 16": 3}
    assert drawn["file"] == PLOT_TEMPERATURE and drawn["xlabel"] == "temperature"
    assert drawn["ylabel"] == "validation accuracy (%), last epoch"
    assert "hollow: stopped early" in drawn["title"]
    assert _is_png(path)


@pytest.mark.parametrize("dim, rows", [
    ("alpha", [_trial(0, 8, 2.0, 0.9)]),  # alpha is not searched
    ("temperature", []),  # no trials
    ("temperature", [_trial(0, 8, 2.0, None, status=ERROR),
                     _trial(1, 8, 2.0, 0.9, kind=BASELINE)]),  # none that ended well
])
def test_val_acc_against_a_value_without_data_draws_nothing(tmp_path: Path, dim: str,
                                                            rows: list[TrialRow]) -> None:
    assert plot_val_acc_vs(dim, _cfg(), rows, tmp_path / PLOT_ALPHA) is None
    assert list(tmp_path.iterdir()) == []
