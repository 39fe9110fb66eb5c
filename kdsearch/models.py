"""The built-in model families and the one table from a model name to its constructor.

MLPs, from the "seed 000" blog post: the teacher is 784-1200-1200-10 with dropout 0.5 (2,395,210
parameters on MNIST). The student is 784-W-W-10 (16,330 parameters at the post's W = 20).

CNNs, from the "seed 001" blog post: TeacherNet, StudentNet and Student2Net, with BatchNorm.
Global average pooling replaces torchex's GlobalAvgPool2d. The max-pools are padded, so that
every input from 8x8 (digits) to 32x32 (CIFAR-10) keeps at least one pixel. `width` is the
first conv's channel count (96 in the post). The other layers scale by the same factor.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn

from kdsearch.config import STUDENT_MODELS, TEACHER_MODELS

InputShape = tuple[int, ...]  # one example's shape: C, H, W for images


class MLP(nn.Module):
    """Two hidden ReLU layers, with dropout after each linear layer as in "seed 000"'s teacher."""

    def __init__(self, in_features: int, width: int, num_classes: int, dropout: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(in_features, width)
        self.fc2 = nn.Linear(width, width)
        self.fc3 = nn.Linear(width, num_classes)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        x = self.relu(self.dropout(self.fc1(x)))
        x = self.relu(self.dropout(self.fc2(x)))
        return self.fc3(x)


def _scaled(channels: tuple[int, ...], width: int) -> list[int]:
    return [max(1, round(c * width / 96)) for c in channels]


def _conv(cin: int, cout: int, stride: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, stride=stride, padding=1), nn.BatchNorm2d(cout), nn.ReLU()]


def _pool() -> nn.Module:
    return nn.MaxPool2d(kernel_size=3, stride=2, padding=1)


class CNN(nn.Module):
    def __init__(self, features: list[nn.Module], out_channels: int, num_classes: int):
        super().__init__()
        self.conv = nn.Sequential(*features)
        self.fc = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(out_channels,
                                                                                  num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(x))


def cnn_teacher(shape: InputShape, num_classes: int, width: int = 96) -> CNN:
    """The TeacherNet of "seed 001": five 3x3 conv layers with BatchNorm, four max-pools."""
    c1, c2, c3, c4, c5 = _scaled((96, 256, 384, 384, 256), width)
    layers = [*_conv(shape[0], c1), _pool(), *_conv(c1, c2), _pool(), *_conv(c2, c3),
              *_conv(c3, c4), _pool(), *_conv(c4, c5), _pool()]
    return CNN(layers, c5, num_classes)


def cnn_student(shape: InputShape, num_classes: int, width: int = 96) -> CNN:
    """The StudentNet of "seed 001": three conv layers, the first two with stride 2."""
    c1, c2, c3 = _scaled((96, 256, 256), width)
    layers = [*_conv(shape[0], c1, 2), _pool(), *_conv(c1, c2, 2), *_conv(c2, c3)]
    return CNN(layers, c3, num_classes)


def cnn_student2(shape: InputShape, num_classes: int, width: int = 96) -> CNN:
    """The Student2Net of "seed 001": two max-pools on the input, then two conv layers."""
    c1, c2 = _scaled((96, 256), width)
    layers = [_pool(), _pool(), *_conv(shape[0], c1), _pool(), *_conv(c1, c2, 2)]
    return CNN(layers, c2, num_classes)


def mlp_teacher(shape: InputShape, num_classes: int, width: int = 1200,
                dropout: float = 0.5) -> MLP:
    return MLP(math.prod(shape), width, num_classes, dropout)


def mlp_student(shape: InputShape, num_classes: int, width: int = 20) -> MLP:
    return MLP(math.prod(shape), width, num_classes)


# The one table from a model name to its constructor.
MODELS: dict[str, Callable[..., nn.Module]] = {
    "mlp_teacher": mlp_teacher,
    "mlp_student": mlp_student,
    "cnn_teacher": cnn_teacher,
    "cnn_student": cnn_student,
    "cnn_student2": cnn_student2,
}
assert set(MODELS) == set(TEACHER_MODELS) | set(STUDENT_MODELS)


TEACHERS_WITH_DROPOUT = frozenset({"mlp_teacher"})  # the others take no dropout setting


def build_teacher(name: str, shape: InputShape, num_classes: int, *, width: int | None = None,
                  dropout: float = 0.5) -> nn.Module:
    kwargs: dict[str, float] = {} if width is None else {"width": width}
    if name in TEACHERS_WITH_DROPOUT:
        kwargs["dropout"] = dropout
    return MODELS[name](shape, num_classes, **kwargs)


def build_student(name: str, shape: InputShape, num_classes: int, *, width: int) -> nn.Module:
    return MODELS[name](shape, num_classes, width=width)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, shape: InputShape) -> int:
    """The multiply-accumulates of one example's forward pass in eval mode: the matrix products
    and convolutions, as torch's FlopCounterMode counts them (two FLOPs each)."""
    from torch.utils.flop_counter import FlopCounterMode

    was_training = model.training
    model.eval()
    first = next(iter(model.parameters()), None)
    x = torch.zeros(1, *shape, device=first.device if first is not None else "cpu")
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(x)
    finally:
        model.train(was_training)
    return int(counter.get_total_flops()) // 2
