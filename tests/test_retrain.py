"""One retraining of the final evaluation (`kdsearch.retrain`): the same weights for the same
seed, a diverged or out-of-memory seed failing alone, and the in-process runner."""

from __future__ import annotations

import os
import socket
from typing import Any

import pytest
import torch
from torch import nn

from conftest import same_weights
from kdsearch.config import ExperimentConfig, config_from_dict
from kdsearch.data import Dataset
from kdsearch.distill import evaluate
from kdsearch.models import build_student
from kdsearch.retrain import (Retraining, in_process, out_of_memory, torch_threads, train_one)
from kdsearch.teacher import Teacher


def _cfg(seed: int = 0, **training: Any) -> ExperimentConfig:
    """A tiny retraining on digits: a width-16 student, two epochs."""
    return config_from_dict({"student": {"width": 16},
                             "training": {"epochs": 2, "batch_size": 64, "seed": seed,
                                          **training}})


@pytest.fixture(scope="module")
def teacher(digits: Dataset, digits_teacher: nn.Module,
            digits_teacher_logits: torch.Tensor) -> Teacher:
    return Teacher(digits_teacher, digits_teacher_logits, 0.89, "test-teacher", None, False)


def _model(state: dict[str, torch.Tensor], data: Dataset) -> nn.Module:
    model = build_student("mlp_student", data.input_shape, data.num_classes, width=16)
    model.load_state_dict(state)
    return model


def test_train_one_gives_the_same_weights_for_the_same_seed(digits: Dataset,
                                                            teacher: Teacher) -> None:
    job = Retraining(0, 0, _cfg(seed=0, alpha=0.3), threads=1)
    first, second = train_one(job, digits, teacher), train_one(job, digits, teacher)
    assert first.state is not None and second.state is not None
    assert same_weights(_model(first.state, digits), _model(second.state, digits))
    assert first.val_acc == second.val_acc and first.error is None
    other = train_one(Retraining(0, 1, _cfg(seed=1, alpha=0.3), threads=1), digits, teacher)
    assert other.state is not None
    assert not same_weights(_model(first.state, digits), _model(other.state, digits))


def test_train_one_reports_the_last_epochs_val_acc_and_where_it_ran(digits: Dataset,
                                                                    teacher: Teacher) -> None:
    result = train_one(Retraining(3, 0, _cfg(alpha=0.3), threads=1), digits, teacher)
    assert result.state is not None
    assert all(t.device.type == "cpu" and not t.requires_grad for t in result.state.values())
    assert result.val_acc == evaluate(_model(result.state, digits), digits.val)[0]
    assert result.val_acc > 0.5  # two epochs on digits learn something
    assert result.device == "cpu" and result.worker == f"{socket.gethostname()}:{os.getpid()}"
    assert result.seconds > 0


def test_the_teacher_matters_to_a_distilled_retraining_alone(digits: Dataset,
                                                             teacher: Teacher) -> None:
    """alpha < 1 learns from the teacher's logits; alpha = 1 (the baseline) trains without
    them: the same seed then gives other weights, and no teacher is needed."""
    kd = train_one(Retraining(0, 0, _cfg(alpha=0.3), threads=1), digits, teacher)
    alone = train_one(Retraining(0, 0, _cfg(alpha=1.0), threads=1), digits, teacher)
    without = train_one(Retraining(0, 0, _cfg(alpha=1.0), threads=1), digits, None)
    assert kd.state is not None and alone.state is not None and without.state is not None
    assert same_weights(_model(alone.state, digits), _model(without.state, digits))
    assert not same_weights(_model(kd.state, digits), _model(alone.state, digits))


def test_a_diverging_retraining_has_no_state_and_the_error_diverged(digits: Dataset) -> None:
    cfg = _cfg(alpha=1.0, optimizer="sgd", lr=1e6)
    result = train_one(Retraining(0, 0, cfg, threads=1), digits, None)
    assert (result.state, result.val_acc, result.error) == (None, None, "diverged")
    assert result.device == "cpu" and result.seconds > 0


class _OutOfMemory(nn.Module):
    """A user's student whose forward pass runs out of GPU memory."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.layer = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB\n"
                                          "(GPU 0; 79.1 GiB total capacity)")


def test_a_retraining_out_of_gpu_memory_fails_alone_with_the_first_line(digits: Dataset
                                                                       ) -> None:
    cfg = config_from_dict({"student": {"model": "oom:student", "width": 16},
                            "training": {"epochs": 1, "alpha": 1.0}})
    result = train_one(Retraining(0, 0, cfg, threads=1), digits, None, factory=_OutOfMemory)
    assert result.state is None and result.val_acc is None
    assert result.error == "out of GPU memory: CUDA out of memory. Tried to allocate 2.00 GiB"


def test_out_of_memory_is_one_line_of_at_most_two_hundred_characters() -> None:
    e = torch.cuda.OutOfMemoryError("\n\n  first line  \nsecond line")
    assert out_of_memory(e) == "out of GPU memory: first line"
    long = out_of_memory(RuntimeError("x" * 500))
    assert long == "out of GPU memory: " + "x" * 200
    assert out_of_memory(RuntimeError("")) == "out of GPU memory: "


def test_torch_threads_sets_the_count_inside_and_restores_it_after() -> None:
    before = torch.get_num_threads()
    other = 2 if before != 2 else 1
    with torch_threads(other):
        assert torch.get_num_threads() == other
    assert torch.get_num_threads() == before
    with pytest.raises(RuntimeError, match="inside"):
        with torch_threads(other):
            raise RuntimeError("inside")
    assert torch.get_num_threads() == before  # put back after an error too
    with torch_threads(None):
        assert torch.get_num_threads() == before  # None: left as it is


def test_in_process_yields_every_job_with_its_result_in_order(digits: Dataset,
                                                              teacher: Teacher) -> None:
    jobs = [Retraining(i, seed, _cfg(seed=seed, alpha=alpha, epochs=1), threads=1)
            for i, alpha in enumerate((0.3, 1.0)) for seed in (0, 1)]
    jobs.append(Retraining(2, 0, _cfg(alpha=1.0, optimizer="sgd", lr=1e6, epochs=1),
                           threads=1))
    done = list(in_process(digits, teacher)(jobs))
    assert [job for job, _ in done] == jobs
    assert [r.error for _, r in done] == [None, None, None, None, "diverged"]
    for job, result in done[:4]:  # each the same as that job trained alone
        alone = train_one(job, digits, teacher)
        assert result.state is not None and alone.state is not None
        assert same_weights(_model(result.state, digits), _model(alone.state, digits))
    assert list(in_process(digits, teacher)([])) == []
