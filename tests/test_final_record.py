"""The final evaluation's records (`kdsearch.final_record`): final.json and latency.json written,
read back whole, and refused (read as None) when damaged or of another format."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from kdsearch.final_record import (FINAL_FILE, FINAL_FORMAT, LATENCY_FILE, LATENCY_FORMAT,
                                   DataSizes, FinalRecord, FinalRow, LatencyRecord,
                                   TeacherResult, Timing, read_final, read_latency, write_final,
                                   write_latency)


def _row(kind: str = "distilled", width: int = 16, **edit: Any) -> FinalRow:
    fields: dict[str, Any] = dict(
        kind=kind, tuned=True, best=True, width=width, params=1234,
        settings={"lr": 0.01, "width": width}, epochs=4,
        alpha=0.3 if kind == "distilled" else 1.0, trial_id="76e61933", val_acc=0.95,
        search_epochs=4, seeds=[0, 1, 2], test_accs=[0.9, None, 0.92],
        test_correct=["AAEC", None, "AAED"], final_val_accs=[0.93, None, 0.94], mean=0.91,
        std=0.014, errors=[None, "diverged", None], diverged=1, failed=0,
        workers=["host:1", "host:1", "host:2"], seconds=3.5,
        spec={"kind": kind, "width": width, "config": "0123456789abcdef"}, macs=1200)
    fields.update(edit)
    return FinalRow(**fields)


def _record(**edit: Any) -> FinalRecord:
    fields: dict[str, Any] = dict(
        kdsearch_version="1.2.3", name="run", created=1700000000.5, device="cpu",
        seeds=[0, 1, 2], seconds=12.25, retrained=6, reused=0, reused_training_seconds=0.0,
        data=DataSizes(1149, 289, 359),
        teacher=TeacherResult("mlp_teacher", "k" * 20, 100000, 0.96, 0.97, "AAEE"),
        teacher_files={"checkpoint": "ab" * 32}, student_model="mlp_student",
        baseline_tuned=True, baseline_note="",
        rows=[_row(), _row("baseline", best=False, alpha=1.0)])
    fields.update(edit)
    return FinalRecord(**fields)


# --------------------------------------------------------------------------- final.json
def test_a_final_record_survives_json_and_the_file_unchanged(tmp_path: Path) -> None:
    record = _record()
    assert FinalRecord.from_json(json.loads(json.dumps(record.to_json()))) == record
    write_final(tmp_path, record)
    written = json.loads((tmp_path / FINAL_FILE).read_text())
    assert written["format"] == FINAL_FORMAT and written["rows"][0]["test_accs"][1] is None
    assert read_final(tmp_path) == record


def test_a_record_without_teacher_files_leaves_the_key_out(tmp_path: Path) -> None:
    record = _record(teacher_files=None, teacher=None, data=None)
    assert "teacher_files" not in record.to_json()
    write_final(tmp_path, record)
    assert read_final(tmp_path) == record


def test_a_non_finite_number_is_never_written_into_final_json(tmp_path: Path) -> None:
    """JSON has no NaN: a record holding one fails to write, and no file is left."""
    with pytest.raises(ValueError):
        write_final(tmp_path, _record(rows=[_row(mean=math.nan)]))
    assert not (tmp_path / FINAL_FILE).exists()


def test_rows_written_before_the_newer_fields_read_them_as_none(tmp_path: Path) -> None:
    row = _row().to_json()
    for newer in ("errors", "test_correct", "final_val_accs", "failed", "workers", "seconds",
                  "macs"):
        del row[newer]
    final = {**_record().to_json(), "rows": [row]}
    del final["teacher"]["test_correct"]
    (tmp_path / FINAL_FILE).write_text(json.dumps(final))
    record = read_final(tmp_path)
    assert record is not None
    old = record.rows[0]
    assert (old.errors, old.test_correct, old.final_val_accs, old.failed, old.workers,
            old.seconds, old.macs) == (None,) * 7
    assert record.teacher is not None and record.teacher.test_correct is None
    # an older row's seeds without an accuracy all diverged
    assert old.seed_errors() == ["diverged"] and old.accuracies() == [0.9, 0.92]


def test_seed_errors_and_accuracies_of_a_row() -> None:
    row = _row(test_accs=[None, 0.8, None], errors=["diverged", None, "out of GPU memory: x"],
               test_correct=[None, "AA", None])
    assert row.accuracies() == [0.8]
    assert row.seed_errors() == ["diverged", "out of GPU memory: x"]


def test_best_row_is_the_best_setting_of_its_kind() -> None:
    best_d = _row(width=32)
    record = _record(rows=[_row(width=8, best=False), best_d,
                           _row("baseline", best=False, alpha=1.0)])
    assert record.best_row("distilled") is best_d
    assert record.best_row("baseline") is None


def test_a_missing_unreadable_or_other_format_final_json_reads_as_none(tmp_path: Path) -> None:
    assert read_final(tmp_path) is None
    path = tmp_path / FINAL_FILE
    for text in ("{torn", "[1, 2]", json.dumps({**_record().to_json(), "format": 0}),
                 json.dumps({k: v for k, v in _record().to_json().items() if k != "format"})):
        path.write_text(text)
        assert read_final(tmp_path) is None, text
    path.unlink()
    path.mkdir()  # a folder where the file goes
    assert read_final(tmp_path) is None


@pytest.mark.parametrize("edit", [
    # fewer accuracies than seeds (as an older row, without errors or per-example results)
    {"test_accs": [0.9, 0.92], "errors": None, "test_correct": None},
    {"test_accs": [0.9, "0.91", 0.92]},
    {"test_accs": [0.9, 1e400, 0.92]},  # inf
    {"val_acc": "high"},
    {"width": True},  # a bool is not a count
    {"params": -1},
    {"epochs": 4.5},
    {"alpha": None},
    {"kind": "distil"},
    {"tuned": 1},
    {"trial_id": 76},
    {"settings": []},
    {"errors": [None, "diverged"]},  # fewer errors than seeds
    {"errors": [None, 1, None]},
    {"test_correct": ["AAEC", "AAEC", "AAED"]},  # a result for a seed without an accuracy
    {"test_correct": ["AAEC", None, None]},  # none for a seed with one
    {"macs": -5},
    # fields a later final evaluation sums or reads: a string there crashed it
    {"seconds": "1.5"},
    {"failed": -1},
    {"workers": ["host:1", 2, "host:3"]},
    {"final_val_accs": [0.9, 0.9]},
    {"seeds": [0, 1]},
])
def test_a_damaged_row_makes_final_json_read_as_none(tmp_path: Path,
                                                     edit: dict[str, Any]) -> None:
    final = _record().to_json()
    final["rows"][0] = {**final["rows"][0], **edit}
    (tmp_path / FINAL_FILE).write_text(json.dumps(final))
    assert read_final(tmp_path) is None
    final["rows"][0] = _row().to_json()  # the same file, whole
    (tmp_path / FINAL_FILE).write_text(json.dumps(final))
    assert read_final(tmp_path) is not None


@pytest.mark.parametrize("edit", [
    {"seeds": [0, -1, 2]},
    {"seeds": "012"},
    {"rows": {"0": {}}},
    {"rows": ["a row"]},
    {"teacher": {"model": "mlp_teacher", "key": "k", "params": 10, "test_acc": 0.9,
                 "val_acc": 0.9, "colour": "red"}},  # a key no teacher has
    {"teacher": {"model": "mlp_teacher", "key": "k", "params": 10, "test_acc": "0.9"}},
    {"data": {"train": 1, "val": 1}},
    {"data": {"train": 1, "val": 1, "test": -1}},
    {"seconds": "3"},
    {"created": None, "reused_training_seconds": "x"},
    {"teacher_files": ["sha"]},
])
def test_a_damaged_record_makes_final_json_read_as_none(tmp_path: Path,
                                                        edit: dict[str, Any]) -> None:
    (tmp_path / FINAL_FILE).write_text(json.dumps({**_record().to_json(), **edit}))
    assert read_final(tmp_path) is None


def test_a_teacher_known_by_its_logits_alone_reads_back(tmp_path: Path) -> None:
    record = _record(teacher=TeacherResult("mlp_teacher", "k" * 20, None, None, None))
    write_final(tmp_path, record)
    assert read_final(tmp_path) == record


# --------------------------------------------------------------------------- latency.json
def _latency(**edit: Any) -> LatencyRecord:
    fields: dict[str, Any] = dict(
        device="cpu", threads=1, torch="2.5.0", host="box", created=1700000000.0, batch=256,
        warmup=5, timings=[Timing("distilled", 16, 0, 0.05, 2.0, 50, 0.1),
                           Timing("baseline", 16, 0, 0.06, 2.5, 50, 0.2)])
    fields.update(edit)
    return LatencyRecord(**fields)


def test_a_latency_record_survives_the_file_unchanged(tmp_path: Path) -> None:
    record = _latency()
    write_latency(tmp_path, record)
    assert json.loads((tmp_path / LATENCY_FILE).read_text())["format"] == LATENCY_FORMAT
    back = read_latency(tmp_path)
    assert back == record
    assert back is not None and back.of("baseline", 16) == record.timings[1]
    assert back.of("distilled", 32) is None


def test_throughput_is_examples_a_second_at_the_large_batch() -> None:
    timing = Timing("distilled", 16, 0, 0.05, 2.0, 50, 0.1)
    assert timing.throughput(256) == pytest.approx(128000.0)
    assert Timing("distilled", 16, 0, 0.05, 0.0, 50, 0.1).throughput(256) == 0.0


@pytest.mark.parametrize("text", [
    "{torn",
    "[1, 2]",
    json.dumps({**_latency().to_json(), "format": 99}),
    json.dumps({k: v for k, v in _latency().to_json().items() if k != "host"}),
    json.dumps({**_latency().to_json(), "timings": [{"kind": "distilled"}]}),
    json.dumps({**_latency().to_json(), "timings": [
        {**_latency().to_json()["timings"][0], "kind": "teacher"}]}),
    json.dumps({**_latency().to_json(), "timings": [
        {**_latency().to_json()["timings"][0], "width": -16}]}),
    json.dumps({**_latency().to_json(), "timings": [
        {**_latency().to_json()["timings"][0], "batch1_ms": "fast"}]}),
])
def test_a_damaged_latency_json_reads_as_none(tmp_path: Path, text: str) -> None:
    assert read_latency(tmp_path) is None  # no file
    (tmp_path / LATENCY_FILE).write_text(text)
    assert read_latency(tmp_path) is None
