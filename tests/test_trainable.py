"""kdsearch.trainable without Ray actors: the payload a search puts in the object store once, its
tensors as NumPy arrays and back, and a trial actor's copy of them, moved once per search."""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import torch

from kdsearch.config import ExperimentConfig, config_from_dict
from kdsearch.data import Dataset
from kdsearch.models import build_student, count_parameters
from kdsearch.teacher import Teacher
from kdsearch.trainable import (TrialPayload, for_object_store, from_object_store, make_payload,
                                trial_inputs)

WIDTHS = [8, 16, 32]


def _cfg(**training: int) -> ExperimentConfig:
    """A digits search over widths and lr; the teacher's width is the digits_teacher fixture's."""
    space = {"width": {"distribution": "choice", "values": WIDTHS},
             "lr": {"distribution": "loguniform", "low": 1e-3, "high": 1e-1}}
    return config_from_dict({"dataset": {"name": "digits"}, "teacher": {"width": 64},
                             "training": training, "search": {"space": space}})


def _teacher(data: Dataset, model: torch.nn.Module | None = None) -> Teacher:
    """A teacher of fixed logits (one row per training example), its model optional."""
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(len(data.train), data.num_classes, generator=gen)
    return Teacher(model, logits, 0.9, "key", None, False)


def test_make_payload_holds_arrays_and_each_widths_parameter_count(digits: Dataset) -> None:
    teacher = _teacher(digits)
    payload = make_payload(_cfg(), digits, teacher, cpus_per_trial=2.0)
    assert isinstance(payload.data.train.x, np.ndarray)
    assert isinstance(payload.data.val.y, np.ndarray)
    assert isinstance(payload.teacher_logits, np.ndarray)
    np.testing.assert_array_equal(payload.teacher_logits, teacher.train_logits.numpy())
    np.testing.assert_array_equal(payload.data.train.x, digits.train.x.numpy())
    assert payload.params_by_width == {
        w: count_parameters(build_student("mlp_student", digits.input_shape, 10, width=w))
        for w in WIDTHS}
    assert payload.config["search"]["space"]["width"]["values"] == WIDTHS  # plain values
    assert payload.cpus_per_trial == 2.0
    # an offline teacher travels as its logits alone
    assert payload.teacher_state is None and payload.teacher_model is None


def test_each_payload_has_its_own_token(digits: Dataset) -> None:
    a = make_payload(_cfg(), digits, None, cpus_per_trial=1.0)
    b = make_payload(_cfg(), digits, None, cpus_per_trial=1.0)
    assert a.token != b.token
    assert a.teacher_logits is None  # no teacher: no logits


def test_an_online_teacher_travels_as_its_weights_or_whole(digits: Dataset,
                                                           digits_teacher: torch.nn.Module
                                                           ) -> None:
    cfg = _cfg(shift=1)  # a shifted image needs the teacher's logits computed in the trial
    payload = make_payload(cfg, digits, _teacher(digits, digits_teacher), cpus_per_trial=1.0)
    assert payload.teacher_model is None
    state = digits_teacher.state_dict()
    assert set(payload.teacher_state) == set(state)
    assert all(isinstance(v, np.ndarray) for v in payload.teacher_state.values())
    np.testing.assert_array_equal(payload.teacher_state["fc1.weight"], state["fc1.weight"])
    # a teacher given to run_search as an object has no name to build it by: it travels whole
    named = dataclasses.replace(cfg, teacher=dataclasses.replace(cfg.teacher,
                                                                 model="<object MLP>"))
    whole = make_payload(named, digits, _teacher(digits, digits_teacher), cpus_per_trial=1.0)
    assert whole.teacher_state is None
    assert whole.teacher_model is not digits_teacher  # a copy
    assert torch.equal(whole.teacher_model.fc1.weight, digits_teacher.fc1.weight)


def test_a_dataset_goes_to_arrays_and_back_unchanged(digits: Dataset) -> None:
    arrays = for_object_store(digits)
    assert isinstance(arrays, Dataset)
    assert isinstance(arrays.train.x, np.ndarray) and isinstance(arrays.train_rows, np.ndarray)
    assert arrays.input_shape == digits.input_shape and arrays.mean == digits.mean
    back = from_object_store(arrays)
    for split in ("train", "val"):
        for name in ("x", "y"):
            got, want = getattr(getattr(back, split), name), getattr(getattr(digits, split), name)
            assert isinstance(got, torch.Tensor) and got.dtype == want.dtype
            assert torch.equal(got, want)
    assert torch.equal(back.train_rows, digits.train_rows)
    assert back.loaded_rows == digits.loaded_rows and back.name == digits.name
    # the tensors share the arrays' memory: a trial maps the object store without a copy
    assert back.train.x.data_ptr() == arrays.train.x.ctypes.data


def test_read_only_arrays_become_tensors_without_a_warning() -> None:
    # Ray's object store hands out read-only arrays
    array = np.arange(6, dtype=np.float32).reshape(2, 3)
    array.setflags(write=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = from_object_store({"logits": array, "note": "kept"})
    assert caught == []
    assert torch.equal(got["logits"], torch.arange(6, dtype=torch.float32).reshape(2, 3))
    assert got["note"] == "kept"


def _payload(digits: Dataset, teacher: Teacher | None = None) -> TrialPayload:
    return make_payload(_cfg(), digits, teacher, cpus_per_trial=1.0)


def test_trial_inputs_are_moved_once_per_token(digits: Dataset) -> None:
    payload = _payload(digits, _teacher(digits))
    data, logits, teacher = trial_inputs(payload, "cpu")
    assert isinstance(data.train.x, torch.Tensor) and torch.equal(data.train.x, digits.train.x)
    assert torch.equal(logits, torch.from_numpy(payload.teacher_logits))
    assert teacher is not None and teacher.train_logits is logits
    # a second trial of the same search in this actor: the same tensors, not moved again
    again = trial_inputs(dataclasses.replace(payload, replay={}), "cpu")
    assert again[0] is data and again[1] is logits and again[2] is teacher


def test_trial_inputs_are_keyed_anew_for_another_search(digits: Dataset) -> None:
    first = _payload(digits, _teacher(digits))
    data, _, _ = trial_inputs(first, "cpu")
    other = _payload(digits)  # another search's payload, without a teacher
    data2, logits2, teacher2 = trial_inputs(other, "cpu")
    assert data2 is not data and torch.equal(data2.val.x, data.val.x)
    assert logits2 is None and teacher2 is None
    # the first search's tensors were let go: asking again moves them again
    assert trial_inputs(first, "cpu")[0] is not data


def test_trial_inputs_build_an_online_teacher_from_its_weights(digits: Dataset,
                                                               digits_teacher: torch.nn.Module
                                                               ) -> None:
    cfg = _cfg(shift=1)
    payload = make_payload(cfg, digits, _teacher(digits, digits_teacher), cpus_per_trial=1.0)
    _, _, teacher = trial_inputs(payload, "cpu")
    assert teacher is not None and teacher.model is not digits_teacher
    assert not teacher.model.training
    x = digits.val.x[:5]
    with torch.no_grad():
        assert torch.equal(teacher.model(x), digits_teacher.eval()(x))

