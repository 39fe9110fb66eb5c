"""A search's inputs (`kdsearch.inputs`): the dataset and the teacher loaded and checked once,
the teacher trained once and then read from the cache, bad input refused before anything is
written."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable

import pytest
import torch
from torch import nn

from conftest import same_weights
from kdsearch.builders import UserObjects
from kdsearch.config import ExperimentConfig, config_from_dict
from kdsearch.data import Dataset
from kdsearch.errors import UserError
from kdsearch.inputs import load_inputs
from kdsearch.teacher import teacher_key


def _cfg(tmp_path: Path, **sections: Any) -> ExperimentConfig:
    """digits with a tiny teacher, and the cache and data folders in `tmp_path`."""
    raw: dict[str, Any] = {
        "name": "inputs", "cache_dir": str(tmp_path / "cache"),
        "dataset": {"name": "digits", "data_dir": str(tmp_path / "data")},
        "teacher": {"epochs": 1, "width": 64},
        "search": {"space": {"width": {"distribution": "choice", "values": [8, 16]}}}}
    raw.update(sections)
    return config_from_dict(raw)


def _entries(tmp_path: Path) -> list[Path]:
    """The teacher cache's entries."""
    root = tmp_path / "cache" / "teachers"
    return sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []


def test_load_inputs_trains_the_teacher_once_then_reads_it_from_the_cache(
        tmp_path: Path, digits: Dataset, caplog: pytest.LogCaptureFixture) -> None:
    cfg = _cfg(tmp_path)
    with caplog.at_level(logging.INFO, logger="kdsearch"):
        first = load_inputs(cfg)
    data, teacher = first.data, first.teacher
    assert data.name == "digits" and data.num_classes == 10
    assert (len(data.train), len(data.val)) == (len(digits.train), len(digits.val))
    assert torch.equal(data.train.x, digits.train.x)  # the same split as the fixture's
    assert teacher.trained_now and teacher.model is not None
    assert tuple(teacher.train_logits.shape) == (len(data.train), 10)
    assert teacher.val_acc is not None and 0.0 <= teacher.val_acc <= 1.0
    assert _entries(tmp_path) == [teacher.path]  # one entry, in the config's cache
    assert teacher.key == teacher_key(cfg)
    assert first.objects == UserObjects()
    assert "(trained now)" in caplog.text

    caplog.clear()
    with caplog.at_level(logging.INFO, logger="kdsearch"):
        again = load_inputs(cfg).teacher
    assert not again.trained_now and again.path == teacher.path
    assert torch.equal(again.train_logits, teacher.train_logits)
    assert again.val_acc == teacher.val_acc
    assert again.model is not None and same_weights(again.model, teacher.model)
    assert "(cached)" in caplog.text and "(trained now)" not in caplog.text


def test_a_cached_teacher_has_the_key_of_its_settings_as_a_trained_one_does(
        tmp_path: Path) -> None:
    """run.json records the key and the final evaluation checks its inputs by it: a teacher
    read from the cache must carry the same key as the one trained for the same settings."""
    cfg = _cfg(tmp_path)
    trained, cached = load_inputs(cfg).teacher, load_inputs(cfg).teacher
    assert trained.trained_now and not cached.trained_now
    assert trained.key == cached.key == teacher_key(cfg)


def test_a_given_teacher_is_used_as_it_is_and_not_cached(
        tmp_path: Path, digits_teacher: nn.Module,
        digits_teacher_logits: torch.Tensor) -> None:
    inputs = load_inputs(_cfg(tmp_path), objects=UserObjects(teacher=digits_teacher))
    teacher = inputs.teacher
    assert teacher.model is digits_teacher and not teacher.trained_now and teacher.path is None
    assert torch.equal(teacher.train_logits, digits_teacher_logits)
    assert inputs.objects.teacher is digits_teacher
    assert _entries(tmp_path) == []


def _returns_text(width: int) -> Any:
    return f"a student of width {width}"


def _raises(width: int) -> nn.Module:
    raise RuntimeError("no such layer\n(from deep inside)")


def _three_classes(width: int) -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 3))


def _empty_when_wide(width: int) -> nn.Module:
    if width > 8:
        return nn.Sequential(nn.Flatten())
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 10))


@pytest.mark.parametrize("factory, message", [
    (_returns_text, "returned str, not a torch.nn.Module"),
    (_raises, "calling it with (width=8) raised RuntimeError: no such layer (from deep inside)"),
    (_three_classes, "at width 8: its output on two training examples is (2, 3); expected "
                     "(2, 10)"),
    (_empty_when_wide, "at width 16 has no parameters to train"),
])
def test_a_bad_student_factory_is_refused_in_one_line_before_the_teacher_trains(
        tmp_path: Path, factory: Callable[..., Any], message: str) -> None:
    with pytest.raises(UserError) as info:
        load_inputs(_cfg(tmp_path), objects=UserObjects(student=factory))
    text = str(info.value)
    assert message in text, text
    assert "\n" not in text and text.startswith("student.model = 'mlp_student'")
    assert _entries(tmp_path) == []  # refused before the teacher was trained and cached


def test_a_student_module_that_does_not_import_is_refused_in_one_line(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, student={"model": "kdsearch_no_such_module:make_student"},
               code_dir=str(tmp_path))
    with pytest.raises(UserError, match=r"module 'kdsearch_no_such_module' does not import "
                                        r"\(ModuleNotFoundError") as info:
        load_inputs(cfg)
    assert "\n" not in str(info.value)
    assert _entries(tmp_path) == []
