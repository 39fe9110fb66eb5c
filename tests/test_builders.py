"""kdsearch.builders: a model name -> the model (built-in, module:attribute, or an object), and
its output checked against the data once, in one line."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Iterator

import pytest
import torch
from torch import nn

from kdsearch.builders import (ModelError, UserObjects, build_student, build_teacher,
                               check_output, check_student, meta_student, with_objects)
from kdsearch.config import ExperimentConfig, config_from_dict
from kdsearch.models import MLP, count_parameters

SHAPE = (1, 8, 8)  # digits' examples
X = torch.randn(4, *SHAPE)

# A user's module: a student factory, a teacher class, a factory of the wrong output, one that
# needs real data to build, and one that raises.
NETS = """
import torch
from torch import nn


def make_student(width, depth=1):
    layers = [nn.Flatten(), nn.Linear(64, width), nn.ReLU()]
    for _ in range(depth - 1):
        layers += [nn.Linear(width, width), nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(width, 10))


class Teacher(nn.Module):
    def __init__(self, hidden=32):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, hidden), nn.ReLU(),
                                 nn.Linear(hidden, 10))

    def forward(self, x):
        return self.net(x)


def three_classes(width):
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 3))


def needs_data(width):
    # reads a value back while it builds: impossible on the meta device
    layer = nn.Linear(64, 10)
    scale = float(layer.weight.detach().abs().max())
    return nn.Sequential(nn.Flatten(), layer, nn.Linear(10, 10 * (scale > 0)))


def not_a_module(width):
    return width


def raises(width):
    raise RuntimeError("no GPU\\nhere")
"""


@pytest.fixture
def nets(tmp_path: Path) -> Iterator[Path]:
    """A user's module of models in tmp_path; removed from sys.modules after the test."""
    (tmp_path / "own_builder_nets.py").write_text(NETS)
    yield tmp_path
    sys.modules.pop("own_builder_nets", None)


def _cfg(folder: Path, *, student: dict | None = None, teacher: dict | None = None
         ) -> ExperimentConfig:
    """A config with these student and teacher sections, its user code looked for in
    `folder`."""
    return config_from_dict({"code_dir": str(folder), "student": student or {},
                             "teacher": teacher or {}})


def test_built_in_models_take_the_searched_width_and_the_teachers_settings(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, student={"width": 12}, teacher={"width": 24, "dropout": 0.25})
    student = build_student(cfg, SHAPE, 10, width=7)  # the searched width wins over the config's
    teacher = build_teacher(cfg, SHAPE, 10)
    assert isinstance(student, MLP) and student.fc1.out_features == 7
    assert isinstance(teacher, MLP) and teacher.fc1.out_features == 24
    assert teacher.dropout.p == 0.25
    assert student(X).shape == (4, 10)


def test_a_users_student_is_called_with_the_width_and_its_kwargs(nets: Path) -> None:
    cfg = _cfg(nets, student={"model": "own_builder_nets:make_student",
                              "kwargs": {"depth": 3}})
    model = build_student(cfg, SHAPE, 10, width=5)
    linears = [m for m in model if isinstance(m, nn.Linear)]
    assert [m.out_features for m in linears] == [5, 5, 5, 10]  # depth 3, then the classes
    assert model(X).shape == (4, 10)


def test_a_users_teacher_is_its_class_called_with_its_kwargs(nets: Path) -> None:
    cfg = _cfg(nets, teacher={"model": "own_builder_nets:Teacher", "kwargs": {"hidden": 9}})
    model = build_teacher(cfg, SHAPE, 10)
    assert type(model).__name__ == "Teacher" and model.net[1].out_features == 9


def test_a_factory_object_takes_the_place_of_the_configs_name(tmp_path: Path) -> None:
    # the name is never imported: the object given takes its place
    cfg = _cfg(tmp_path, student={"model": "not_installed:make", "kwargs": {"extra": 2}})
    calls: list[dict] = []

    def factory(**kwargs: int) -> nn.Module:
        calls.append(kwargs)
        return nn.Sequential(nn.Flatten(), nn.Linear(64, 10))

    build_student(cfg, SHAPE, 10, width=6, factory=factory)
    assert calls == [{"width": 6, "extra": 2}]


@pytest.mark.parametrize("name, words", [
    ("own_builder_nets:not_a_module", "returned int, not a torch.nn.Module"),
    ("own_builder_nets:raises", "raised RuntimeError: no GPU here"),
])
def test_a_factory_that_fails_is_one_line_naming_the_call(nets: Path, name: str, words: str
                                                          ) -> None:
    with pytest.raises(ModelError) as info:
        build_student(_cfg(nets, student={"model": name}), SHAPE, 10, width=4)
    message = str(info.value)
    assert "\n" not in message
    assert f"student.model = '{name}'" in message and "(width=4)" in message and words in message


def test_an_object_name_without_its_object_is_refused(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, student={"model": "<object make>"})
    with pytest.raises(ModelError, match=r"Python object given to run_search; pass it again"):
        build_student(cfg, SHAPE, 10, width=4)


def test_check_output_refuses_the_wrong_number_of_logits_in_one_line(nets: Path) -> None:
    cfg = _cfg(nets, student={"model": "own_builder_nets:three_classes"})
    with pytest.raises(ModelError) as info:
        check_student(cfg, [4, 8], X, 10)
    message = str(info.value)
    assert "\n" not in message
    assert "at width 4" in message  # the narrowest width is the one run
    assert "output on two training examples is (2, 3); expected (2, 10)" in message


def test_check_output_names_a_forward_pass_that_raises_and_keeps_the_mode() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(10, 10))  # 64 inputs do not fit
    model.train()
    with pytest.raises(ModelError) as info:
        check_output("student.model = 'x'", model, X, 10)
    message = str(info.value)
    assert "\n" not in message
    assert "forward pass on two training examples of shape (2, 1, 8, 8) raised RuntimeError" \
        in message
    assert model.training  # put back in training mode
    good = nn.Sequential(nn.Flatten(), nn.Linear(64, 10)).eval()
    check_output("student.model = 'x'", good, X, 10)
    assert not good.training


def test_check_output_refuses_an_output_that_is_not_a_tensor() -> None:
    class Pair(nn.Module):
        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return x, x

    with pytest.raises(ModelError, match=r"output on two training examples is tuple"):
        check_output("teacher.model = 'pair'", Pair(), X, 10)


def test_meta_student_counts_the_parameters_of_a_width_too_large_to_allocate(
        tmp_path: Path) -> None:
    width = 2**20  # fc2 alone holds 2**40 weights: 4 TiB in float32
    model = meta_student(_cfg(tmp_path), SHAPE, 10, width=width)
    assert all(p.device.type == "meta" for p in model.parameters())
    expected = (64 * width + width) + (width * width + width) + (width * 10 + 10)
    assert count_parameters(model) == expected


def test_meta_student_builds_a_factory_that_needs_data_on_the_cpu(nets: Path) -> None:
    cfg = _cfg(nets, student={"model": "own_builder_nets:needs_data"})
    model = meta_student(cfg, SHAPE, 10, width=4)
    assert all(p.device.type == "cpu" for p in model.parameters())
    assert count_parameters(model) == 64 * 10 + 10 + 10 * 10 + 10


def test_check_student_refuses_a_width_without_parameters(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)

    def empty_above_four(width: int) -> nn.Module:
        # the narrowest width is run; a wider one's parameters are only counted
        if width > 4:
            return nn.Sequential(nn.Flatten(), nn.Identity())
        return nn.Sequential(nn.Flatten(), nn.Linear(64, 10))

    check_student(cfg, [4], X, 10, factory=empty_above_four)
    with pytest.raises(ModelError, match=r"at width 8 has no parameters to train"):
        check_student(cfg, [4, 8], X, 10, factory=empty_above_four)


def test_with_objects_records_each_object_by_name(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, teacher={"model": "my_nets:Teacher", "kwargs": {"hidden": 3}})

    def load_my_data() -> dict:
        return {}

    def make_student(width: int) -> nn.Module:
        return nn.Linear(64, 10)

    teacher = nn.Linear(64, 10)
    named = with_objects(cfg, UserObjects(dataset=load_my_data, teacher=teacher,
                                          student=make_student))
    assert named.dataset.name == "<object test_with_objects_records_each_object_by_name." \
                                 "<locals>.load_my_data>"
    assert named.teacher.model == "<object Linear>" and named.teacher.kwargs == {}
    assert named.student.model.startswith("<object ") and "make_student" in named.student.model
    # nothing given: the config as it was
    assert with_objects(cfg, UserObjects()) == cfg


def test_with_objects_refuses_a_student_that_is_not_callable(tmp_path: Path) -> None:
    # a name where the object goes: a slip between the two ways of naming a student
    with pytest.raises(ModelError, match=r"run_search\(student=...\): str is not a factory"):
        with_objects(_cfg(tmp_path), UserObjects(student="my_nets:make_student"))
