"""What run_search returns (`kdsearch.search_result`): the answer read from summary.json, every
trial as a table with its ids kept as written, and the one-line summary."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from kdsearch.search_result import Answer, Pick, SearchResult, read_answer
from kdsearch.tables import write_table

PICK = {"kind": "distilled", "width": 16, "params": 1530, "macs": 1500, "mean": 0.95,
        "std": 0.004, "lower": 0.94, "meets": "shown", "settings": {"lr": 0.01},
        "latency_ms": 0.02}


def _summary(folder: Path, answer: Any, text: str = "The smallest student: width 16.") -> None:
    (folder / "summary.json").write_text(json.dumps({"answer_text": text, "answer": answer}))


def test_read_answer_reads_the_answer_of_summary_json(tmp_path: Path) -> None:
    _summary(tmp_path, {"target": {"kind": "within_teacher", "value": 1.0}, "needed": 0.96,
                        "distilled": PICK, "baseline": {**PICK, "kind": "baseline",
                                                        "width": 64, "params": 9000},
                        "factor": 5.88})
    answer = read_answer(tmp_path)
    assert answer == Answer(
        "The smallest student: width 16.", {"kind": "within_teacher", "value": 1.0}, 0.96,
        Pick("distilled", 16, 1530, 1500, 0.95, 0.004, 0.94, {"lr": 0.01}, 0.02),
        Pick("baseline", 64, 9000, 1500, 0.95, 0.004, 0.94, {"lr": 0.01}, 0.02), 5.88)


def test_an_answer_with_no_student_that_meets_the_target_reads_as_none_picks(
        tmp_path: Path) -> None:
    """A pick written before some fields were kept (macs, lower, latency) reads them as None."""
    brief = {"kind": "distilled", "width": 8, "params": 700, "mean": 0.9}
    _summary(tmp_path, {"target": {"kind": "accuracy", "value": 99.0}, "needed": 0.99,
                        "distilled": brief, "baseline": None}, text="")
    answer = read_answer(tmp_path)
    assert answer is not None
    assert answer.distilled == Pick("distilled", 8, 700, None, 0.9, None, None, {}, None)
    assert (answer.baseline, answer.factor, answer.text) == (None, None, "")


@pytest.mark.parametrize("summary", [
    None,  # no summary.json
    "{torn",
    json.dumps({"answer_text": "x"}),  # a summary without an answer
    json.dumps({"answer": ["not", "an", "answer"]}),
    json.dumps({"answer": {"needed": 0.9}}),  # no target
    json.dumps({"answer": {"target": {}, "distilled": {"kind": "distilled"}}}),  # a torn pick
    json.dumps([1, 2]),
])
def test_read_answer_is_none_without_a_whole_summary(tmp_path: Path, summary: str | None
                                                     ) -> None:
    if summary is not None:
        (tmp_path / "summary.json").write_text(summary)
    assert read_answer(tmp_path) is None
    assert SearchResult(tmp_path, {}, {}, None, None).answer is None


def test_search_result_answer_is_the_folders_answer(tmp_path: Path) -> None:
    result = SearchResult(tmp_path, {}, {}, None, None)
    assert result.answer is None  # before the report
    _summary(tmp_path, {"target": {"kind": "accuracy", "value": 90.0}, "distilled": PICK})
    assert result.answer == read_answer(tmp_path) and result.answer is not None
    assert result.answer.distilled is not None and result.answer.distilled.width == 16


def test_trials_keep_ids_that_look_like_numbers_as_text(tmp_path: Path) -> None:
    """Tune's trial ids are 8 hex digits: "76e61933" would read as inf, "01234567" as 1234567
    and "1e000000" as 1.0."""
    ids = ["76e61933", "01234567", "1e000000", "00000000"]
    rows = [{"phase": "distill", "trial_id": t, "status": "TERMINATED", "stopped_early": 0,
             "diverged": 0, "epochs": 4, "val_acc": 0.9 + i / 100, "node": "10.0.0.1:1e5",
             "gpu_ids": "0", "error": "", "lr": 0.01, "width": 16}
            for i, t in enumerate(ids)]
    write_table(tmp_path / "trials.csv", rows)
    table = SearchResult(tmp_path, {}, {}, None, None).trials
    assert list(table["trial_id"]) == ids
    assert list(table["node"]) == ["10.0.0.1:1e5"] * 4
    assert list(table["gpu_ids"]) == ["0"] * 4
    assert list(table["val_acc"]) == pytest.approx([0.90, 0.91, 0.92, 0.93])
    assert list(table["width"]) == [16] * 4  # other columns are numbers


def test_the_summary_line_names_both_kinds_the_folder_and_the_report(tmp_path: Path) -> None:
    result = SearchResult(tmp_path, {"lr": 0.0123456, "width": 16}, {"val_acc": 0.95},
                          None, None)
    assert result.summary_line() == (f"best distilled: val_acc 0.9500 (lr=0.0123, width=16); "
                                     f"results in {tmp_path}")
    both = SearchResult(tmp_path, {"lr": 0.01}, {"val_acc": "0.95"}, {"lr": 0.02},
                        {"val_acc": 0.9}, report_path=tmp_path / "report.md")
    assert both.summary_line() == (f"best distilled: val_acc 0.9500 (lr=0.01); best baseline: "
                                   f"val_acc 0.9000; results in {tmp_path}; report "
                                   f"{tmp_path / 'report.md'}")
