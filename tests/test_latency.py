"""Latency (`kdsearch.latency`): each saved student timed here, written to latency.json, read
back; the timing loop's counts; bad requests refused in one line. (`kdsearch latency` on a
whole search's folder: tests/test_report.py.)"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from kdsearch.data import Dataset
from kdsearch.errors import UserError
from kdsearch.final_record import LATENCY_FILE, read_latency, write_latency
from kdsearch.latency import BATCH, MIN_CALLS, WARMUP, measure, time_calls, times_every
from kdsearch.students import read_entries
from test_export import make_folder


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory, digits: Dataset) -> Path:
    return make_folder(tmp_path_factory.mktemp("latency") / "hand", digits)


def test_every_saved_student_is_timed_and_the_record_reads_back(folder: Path) -> None:
    before = torch.get_num_threads()
    record = measure(folder, device="cpu", threads=1)
    assert torch.get_num_threads() == before  # the thread count put back
    assert {(t.kind, t.width) for t in record.timings} == {
        (k, w) for k in ("distilled", "baseline") for w in (8, 16)}
    for t in record.timings:
        assert 0 < t.batch1_ms < t.batch_ms  # a batch of 256 takes longer than one example
        assert t.repeats >= MIN_CALLS[1] and t.seed == 0
        assert t.throughput(record.batch) == pytest.approx(BATCH * 1000 / t.batch_ms)
    assert record.threads == 1 and record.batch == BATCH and record.device.startswith("cpu")
    again = read_latency(folder)
    assert again == record
    assert times_every(folder, read_entries(folder))
    assert not times_every(folder / "missing", read_entries(folder))


def test_a_record_that_misses_a_student_does_not_time_every_one(folder: Path,
                                                                tmp_path: Path) -> None:
    record = measure(folder, device="cpu", threads=2)
    write_latency(tmp_path, dataclasses.replace(record, timings=record.timings[1:]))
    assert not times_every(tmp_path, read_entries(folder))
    write_latency(tmp_path, record)  # another thread count still times every student
    assert times_every(tmp_path, read_entries(folder))


def test_a_damaged_latency_file_reads_as_not_timed(folder: Path, tmp_path: Path) -> None:
    (tmp_path / LATENCY_FILE).write_text(json.dumps({"format": 1, "timings": "x"}))
    assert read_latency(tmp_path) is None
    assert read_latency(tmp_path / "missing") is None


def test_the_timing_loop_warms_up_then_times_enough_calls() -> None:
    calls = []
    times = time_calls(lambda: calls.append(1), min_calls=7, sync=lambda: None)
    assert len(times) >= 7 and len(calls) == WARMUP + len(times)


@pytest.mark.parametrize("kwargs, message", [
    ({"threads": 0}, "--threads 0: expected an integer >= 1"),
    ({"device": "tpu"}, "--device tpu: expected cpu or cuda"),
])
def test_bad_requests_are_refused_in_one_line(folder: Path, kwargs: dict, message: str) -> None:
    with pytest.raises(UserError, match=message):
        measure(folder, **kwargs)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU")
def test_cuda_without_a_gpu_is_refused(folder: Path) -> None:
    with pytest.raises(UserError, match="no CUDA GPU is visible here"):
        measure(folder, device="cuda")


def test_a_folder_without_students_is_refused(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="index.json: not found"):
        measure(tmp_path)
