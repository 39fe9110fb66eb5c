"""Each retrained student's latency, measured on the machine that runs this: `measure` times the
saved students (students/) and writes latency.json, which the report reads.

A student is timed in eval mode under `torch.inference_mode`, on random inputs of its input
shape: one example (latency) and a batch of `BATCH` (throughput). After `WARMUP` calls, calls
are timed one by one until there are enough of them and enough time has passed; the median is
kept, with the spread of the one-example calls as a noise measure. The distilled and the
baseline student of a width share an architecture, but each is timed. The threads and the
device are recorded: `kdsearch latency results/<name> --threads N --device cuda` times them
again where the students will run.
"""

from __future__ import annotations

import logging
import os
import platform
import socket
import statistics
import time
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from kdsearch.errors import UserError
from kdsearch.final_record import LatencyRecord, Timing, read_latency, write_latency
from kdsearch.retrain import torch_threads
from kdsearch.students import StudentEntry, load_student, read_entries

log = logging.getLogger(__name__)

BATCH = 256  # the throughput batch
WARMUP = 5  # calls before the timed ones
MIN_CALLS = {1: 30, BATCH: 5}  # timed calls at least, by batch size ...
MIN_SECONDS = 0.1  # ... and for at least this long
MAX_SECONDS = 2.0  # a slow student: no longer than this, once 3 calls are in


class LatencyError(UserError, ValueError):
    """A latency that cannot be measured here: the message says why and what to do."""


def device_name(device: str) -> str:
    """The device as latency.json records it: "cuda: NVIDIA H100 ..." or "cpu: <processor>"."""
    if device == "cuda":
        return f"cuda: {torch.cuda.get_device_name()}"
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"cpu: {model or platform.processor() or platform.machine()}"


def time_calls(call: Callable[[], object], *, min_calls: int, sync: Callable[[], None]
               ) -> list[float]:
    """Seconds of each timed call of `call`, after the warm-up."""
    for _ in range(WARMUP):
        call()
    sync()
    times: list[float] = []
    start = time.perf_counter()
    while True:
        t0 = time.perf_counter()
        call()
        sync()
        times.append(time.perf_counter() - t0)
        spent = time.perf_counter() - start
        if (len(times) >= min_calls and spent >= MIN_SECONDS) or \
                (len(times) >= 3 and spent >= MAX_SECONDS):
            return times


def time_student(model: nn.Module, input_shape: tuple[int, ...], *, device: str
                 ) -> tuple[float, float, int, float]:
    """(one example's median ms, a batch's median ms, timed calls of one example, the spread
    of those calls) of `model` on `device`."""
    model = model.to(device).eval()
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    medians, calls, spread = {}, 0, 0.0
    with torch.inference_mode():
        for batch in (1, BATCH):
            x = torch.randn(batch, *input_shape, device=device)
            times = time_calls(lambda: model(x), min_calls=MIN_CALLS[batch], sync=sync)
            medians[batch] = 1000 * statistics.median(times)
            if batch == 1:
                calls = len(times)
                spread = (max(times) - min(times)) / statistics.median(times)
    return medians[1], medians[BATCH], calls, spread


def _first_seeds(entries: list[StudentEntry]) -> list[StudentEntry]:
    """A saved student per kind and width: its first seed's."""
    first: dict[tuple[str, int], StudentEntry] = {}
    for e in sorted(entries, key=lambda e: e.seed):
        first.setdefault((e.kind, e.width), e)
    return list(first.values())


def measure(results_dir: str | os.PathLike[str], *, device: str = "cpu", threads: int = 1,
            student: Callable[..., nn.Module] | None = None) -> LatencyRecord:
    """Time the saved students of a results folder here and write latency.json.

    Args:
        results_dir: the search's results folder.
        device: "cpu" or "cuda".
        threads: torch's intra-op threads while timing.
        student: the student factory given to run_search, when it was an object.

    Returns:
        What latency.json now holds.

    Raises:
        UserError: no saved students, no CUDA for device "cuda", a bad thread count.
    """
    results = Path(results_dir)
    if device not in ("cpu", "cuda"):
        raise LatencyError(f"--device {device}: expected cpu or cuda")
    if device == "cuda" and not torch.cuda.is_available():
        raise LatencyError("--device cuda: no CUDA GPU is visible here; time on the cpu, or "
                           "run this on the machine with the GPU")
    if threads < 1:
        raise LatencyError(f"--threads {threads}: expected an integer >= 1")
    entries = _first_seeds(read_entries(results))
    if not entries:
        raise LatencyError(f"{results}: no saved students to time; the final evaluation saves "
                           f"them (kdsearch report {results})")
    timings = []
    with torch_threads(threads):
        for e in entries:
            model = load_student(results, e.kind, e.width, e.seed, student=student)
            one, batch, calls, spread = time_student(model, tuple(e.input_shape), device=device)
            timings.append(Timing(e.kind, e.width, e.seed, one, batch, calls, spread))
    record = LatencyRecord(device=device_name(device), threads=threads,
                           torch=torch.__version__, host=socket.gethostname(),
                           created=time.time(), batch=BATCH, warmup=WARMUP, timings=timings)
    write_latency(results, record)
    log.info(f"latency: {len(timings)} students timed on {record.device}, {threads} "
             f"thread{'s' if threads > 1 else ''}")
    return record


def times_every(results_dir: Path, entries: list[StudentEntry]) -> bool:
    """Return whether latency.json times every saved student (the first seed of each kind and
    width), whatever the device and threads it was timed with."""
    found = read_latency(results_dir)
    return found is not None and all(
        found.of(e.kind, e.width) is not None for e in _first_seeds(entries))
