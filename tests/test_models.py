"""The seed model families: their parameter counts and that every one fits every input size."""

from __future__ import annotations

import pytest
import torch

from kdsearch.config import STUDENT_MODELS, TEACHER_MODELS
from kdsearch.models import (MODELS, build_student, build_teacher, count_parameters,
                             mlp_student, mlp_teacher)

MNIST = (1, 28, 28)
SHAPES = [(1, 28, 28), (1, 8, 8), (3, 32, 32)]


def test_mlp_parameter_counts_match_the_seed() -> None:
    # 784*1200+1200 + 1200*1200+1200 + 1200*10+10, and 784*20+20 + 20*20+20 + 20*10+10
    assert count_parameters(mlp_teacher(MNIST, 10)) == 2_395_210
    assert count_parameters(build_teacher("mlp_teacher", MNIST, 10)) == 2_395_210
    assert count_parameters(mlp_student(MNIST, 10, width=20)) == 16_330
    assert count_parameters(build_student("mlp_student", MNIST, 10, width=20)) == 16_330


def test_the_table_holds_every_configurable_model() -> None:
    assert set(MODELS) == set(TEACHER_MODELS) | set(STUDENT_MODELS)


@pytest.mark.parametrize("shape", SHAPES, ids=["mnist", "digits", "cifar10"])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_model_gives_one_logit_per_class(name: str, shape: tuple[int, int, int]) -> None:
    torch.manual_seed(0)
    model = MODELS[name](shape, 10, width=8)
    x = torch.randn(3, *shape)
    model.train()
    assert model(x).shape == (3, 10)
    model.eval()
    out = model(x[:1])  # one example in eval mode (BatchNorm uses running statistics)
    assert out.shape == (1, 10) and torch.isfinite(out).all()


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_model_at_its_default_width(name: str) -> None:
    model = MODELS[name]((3, 32, 32), 10)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize("name", ["cnn_teacher", "cnn_student", "cnn_student2"])
def test_cnn_width_is_the_first_conv_and_scales_the_rest(name: str) -> None:
    narrow, wide = MODELS[name](MNIST, 10, width=24), MODELS[name](MNIST, 10, width=48)
    first = next(m for m in narrow.modules() if isinstance(m, torch.nn.Conv2d))
    assert first.out_channels == 24

    def channels(model: torch.nn.Module) -> list[int]:
        return [m.out_channels for m in model.modules() if isinstance(m, torch.nn.Conv2d)]

    # every conv layer scales with the width, not the first alone
    assert [2 * c for c in channels(narrow)] == channels(wide)
    assert count_parameters(narrow) < count_parameters(wide)


def test_student_width_sets_both_hidden_layers() -> None:
    model = build_student("mlp_student", (1, 8, 8), 10, width=7)
    assert (model.fc1.out_features, model.fc2.out_features) == (7, 7)
    assert count_parameters(model) == 64 * 7 + 7 + 7 * 7 + 7 + 7 * 10 + 10


def test_mlp_teacher_has_dropout_and_the_student_none() -> None:
    torch.manual_seed(0)
    x = torch.randn(4, *MNIST)
    teacher = build_teacher("mlp_teacher", MNIST, 10, width=64, dropout=0.5).train()
    assert not torch.equal(teacher(x), teacher(x))  # dropout draws a new mask each call
    teacher.eval()
    assert torch.equal(teacher(x), teacher(x))
    student = build_student("mlp_student", MNIST, 10, width=20).train()
    assert torch.equal(student(x), student(x))
    no_dropout = build_teacher("mlp_teacher", MNIST, 10, width=64, dropout=0.0).train()
    assert torch.equal(no_dropout(x), no_dropout(x))
