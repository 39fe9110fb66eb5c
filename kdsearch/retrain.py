"""One retraining of the final evaluation, and the runners that train a list of them.

A `Retraining` is one model to train from scratch: a setting's config with one seed. Every
runner trains it with `train_one`, so a model has the same weights whichever runner trained it
(for the same thread count): `in_process` (one after the other, here) or the Ray task runner of
the search side (`trainable.ray_runner`, side by side on a cluster). No Ray here.
"""

from __future__ import annotations

import os
import socket
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

import torch
from torch import nn

from kdsearch.config import ExperimentConfig
from kdsearch.data import Dataset
from kdsearch.distill import Diverged, train_student
from kdsearch.metrics import VAL_ACC
from kdsearch.teacher import Teacher


@dataclass(frozen=True)
class Retraining:
    """One model of the final evaluation: setting `index` of the selection, with one seed."""

    index: int
    seed: int
    config: ExperimentConfig  # the setting's values and training.seed = seed
    threads: int | None  # torch threads to train with; None: as many as the worker has


@dataclass
class Retrained:
    """What a retraining gives back: the student's weights on the CPU (None if it diverged or
    failed: `error` says which)."""

    state: dict[str, torch.Tensor] | None
    val_acc: float | None  # its last epoch's validation accuracy
    seconds: float
    device: str
    worker: str  # host:pid of the process that trained it
    error: str | None = None  # "diverged", or what it ran out of


# runs the retrainings and yields each with its result, in the order they finish
Runner = Callable[[list[Retraining]], Iterable[tuple[Retraining, Retrained]]]


@contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """torch's intra-op threads set to `n` inside the block (None: left as they are)."""
    if n is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def train_one(job: Retraining, data: Dataset, teacher: Teacher | None,
              factory: Callable[..., nn.Module] | None = None) -> Retrained:
    """Train one retraining's student from scratch on data.train (the same in every runner);
    `factory`: a student factory given as an object."""
    t0 = time.perf_counter()
    kd = job.config.training.alpha < 1
    where = (data.train.x.device.type, f"{socket.gethostname()}:{os.getpid()}")
    with torch_threads(job.threads):
        try:
            model, history = train_student(job.config, data, teacher=teacher if kd else None,
                                           factory=factory)
        except Diverged:
            return Retrained(None, None, time.perf_counter() - t0, *where, error="diverged")
        except torch.cuda.OutOfMemoryError as e:
            # this setting and seed fail alone, as a diverged one does: the others go on
            torch.cuda.empty_cache()
            return Retrained(None, None, time.perf_counter() - t0, *where,
                             error=out_of_memory(e))
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    return Retrained(state, history[-1][VAL_ACC], time.perf_counter() - t0, *where)


def out_of_memory(e: BaseException) -> str:
    """A CUDA out-of-memory error in one line: the first of torch's message."""
    first = next((line for line in str(e).splitlines() if line.strip()), "")
    return f"out of GPU memory: {first.strip()[:200]}"


def in_process(data: Dataset, teacher: Teacher | None,
               factory: Callable[..., nn.Module] | None = None) -> Runner:
    """The default runner: the retrainings one after the other, here."""
    def run(jobs: list[Retraining]) -> Iterator[tuple[Retraining, Retrained]]:
        for job in jobs:
            yield job, train_one(job, data, teacher, factory)
    return run
