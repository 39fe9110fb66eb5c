"""A model name in the config -> the model: kdsearch's built-in families, a user's entry point
("module:attribute"), or a Python object given to `run_search`.

The teacher is `Teacher(**teacher.kwargs)` (a class or a function), the student
`make_student(width=W, **student.kwargs)`; the built-in names go through the same door with the
data's input shape and class count. A user's module is found in the space file's folder
(`code_dir`), then the current directory, then the installed packages. What comes back is checked
here once, on the driver, before anything is written (`check_models`): an `nn.Module`, whose
output on two training examples has one column per class.
"""

from __future__ import annotations

import math
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from kdsearch.config import ExperimentConfig
from kdsearch.fields import is_object_name, object_name
from kdsearch.entry_points import is_entry_point, resolve
from kdsearch.errors import UserError, one_line, show
from kdsearch.models import MODELS, InputShape, count_parameters
from kdsearch.models import build_student as built_in_student
from kdsearch.models import build_teacher as built_in_teacher



class ModelError(UserError, ValueError):
    """A user's model that cannot be built or does not fit the data: the message says which."""


def code_folders(cfg: ExperimentConfig) -> list[Path]:
    """Where a user's modules are looked for first: the space file's folder, then the current
    directory (a folder that does not exist here, on another node, is skipped)."""
    folders = [Path(cfg.code_dir)] if cfg.code_dir else []
    return [f for f in (*folders, Path.cwd()) if f.is_dir()]


def _called(what: str, fn: Callable[..., Any], kwargs: dict[str, Any]) -> nn.Module:
    args = ", ".join(f"{k}={show(v)}" for k, v in kwargs.items())
    try:
        model = fn(**kwargs)
    except UserError:
        raise
    except Exception as e:
        why = one_line(e) or type(e).__name__
        raise ModelError(f"{what}: calling it with ({args}) raised {type(e).__name__}: {why}"
                         ) from None
    if not isinstance(model, nn.Module):
        raise ModelError(f"{what}: calling it with ({args}) returned {type(model).__name__}, "
                         f"not a torch.nn.Module")
    return model


def _user(section: str, cfg: ExperimentConfig, obj: Callable[..., Any] | None
          ) -> tuple[str, Callable[..., Any]]:
    name = getattr(cfg, section).model
    where = f"{section}.model = {show(name)}"
    if obj is not None:
        return where, obj
    if is_object_name(name):
        raise ModelError(f"{where} was a Python object given to run_search; pass it again "
                         f"({section}=...) to resume_search, report_search or load_student")
    if not is_entry_point(name):
        raise ModelError(f"{where} is neither a built-in model nor module:attribute")
    return where, resolve(name, where=where, folders=code_folders(cfg))


def build_student(cfg: ExperimentConfig, shape: InputShape, num_classes: int, *, width: int,
                  factory: Callable[..., nn.Module] | None = None) -> nn.Module:
    """The student of `cfg` at `width`: a built-in family, or make_student(width=W, **kwargs)."""
    name = cfg.student.model
    if factory is None and name in MODELS:
        return built_in_student(name, shape, num_classes, width=width)
    where, fn = _user("student", cfg, factory)
    return _called(where, fn, {"width": width, **cfg.student.kwargs})


def meta_student(cfg: ExperimentConfig, shape: InputShape, num_classes: int, *, width: int,
                 factory: Callable[..., nn.Module] | None = None) -> nn.Module:
    """The student on torch's meta device: its shapes without its memory, so the driver can
    count the parameters of a width too large to allocate (that trial fails alone, with the
    allocator's message, instead of the whole search). A user's factory that cannot build on
    the meta device (it fills a tensor with data, say) is built on the CPU."""
    try:
        with torch.device("meta"):
            return build_student(cfg, shape, num_classes, width=width, factory=factory)
    except ModelError:
        return build_student(cfg, shape, num_classes, width=width, factory=factory)


def build_teacher(cfg: ExperimentConfig, shape: InputShape, num_classes: int) -> nn.Module:
    """A new (untrained) teacher of `cfg`: a built-in family, or Teacher(**teacher.kwargs)."""
    t = cfg.teacher
    if t.model in MODELS:
        return built_in_teacher(t.model, shape, num_classes, width=t.width, dropout=t.dropout)
    where, fn = _user("teacher", cfg, None)
    return _called(where, fn, dict(t.kwargs))


def check_output(what: str, model: nn.Module, x: torch.Tensor, num_classes: int) -> None:
    """`model` maps two examples of `x` to (2, num_classes) logits, or a ModelError."""
    was_training = model.training
    model.eval()
    sample = x[:2].detach().cpu().float()
    try:
        with torch.no_grad():
            out = model.cpu()(sample)
    except Exception as e:
        why = one_line(e) or type(e).__name__
        raise ModelError(f"{what}: its forward pass on two training examples of shape "
                         f"{tuple(sample.shape)} raised {type(e).__name__}: {why}") from None
    finally:
        model.train(was_training)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (len(sample), num_classes):
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ModelError(f"{what}: its output on two training examples is {got}; expected "
                         f"({len(sample)}, {num_classes}): one logit per class "
                         f"(the data has {num_classes} classes)")


def check_inputs(cfg: ExperimentConfig, widths: list[int], x: torch.Tensor, num_classes: int,
                 factory: Callable[..., nn.Module] | None = None) -> None:
    """What the data and the students must agree on before anything trains: a shift needs
    images, and every width's student one logit per class."""
    if x.ndim != 4 and (cfg.training.shift or cfg.teacher.shift):
        raise ModelError(f"training.shift / teacher.shift move images by pixels: they need "
                         f"inputs of shape N x C x H x W, and {cfg.dataset.name}'s are "
                         f"N x {' x '.join(map(str, x.shape[1:]))}; set them to 0")
    check_student(cfg, widths, x, num_classes, factory)


def check_student(cfg: ExperimentConfig, widths: list[int], x: torch.Tensor, num_classes: int,
                  factory: Callable[..., nn.Module] | None = None) -> None:
    """Each searched width builds a student whose output fits the data (the narrowest is run;
    a wider one's parameters are only counted)."""
    shape = tuple(int(s) for s in x.shape[1:])
    where = f"student.model = {show(cfg.student.model)}"
    narrowest = min(widths)
    model = build_student(cfg, shape, num_classes, width=narrowest, factory=factory)
    check_output(f"{where} at width {narrowest}", model, x, num_classes)
    for w in widths:
        n = count_parameters(meta_student(cfg, shape, num_classes, width=w, factory=factory))
        if n == 0 or not math.isfinite(n):
            raise ModelError(f"{where} at width {w} has no parameters to train")


@dataclass(frozen=True)
class UserObjects:
    """Python objects a user gave `run_search` in place of the space file's names: the data (a
    dict, or a function that returns one), a ready (trained) teacher, a student factory. They
    reach the trials through Ray's object store (cloudpickle). None: the space file's name."""

    dataset: Any = None
    teacher: nn.Module | None = None
    student: Callable[..., nn.Module] | None = None


def with_objects(cfg: ExperimentConfig, objects: UserObjects) -> ExperimentConfig:
    """`cfg` naming the user's `objects` ("<object NAME>"): what the results folder records."""
    if objects.dataset is not None:
        cfg = dataclasses.replace(cfg, dataset=dataclasses.replace(
            cfg.dataset, name=object_name(objects.dataset)))
    if objects.teacher is not None:
        cfg = dataclasses.replace(cfg, teacher=dataclasses.replace(
            cfg.teacher, model=object_name(objects.teacher), kwargs={}, checkpoint=None,
            logits=None))
    if objects.student is not None:
        if not callable(objects.student):
            raise ModelError(f"run_search(student=...): {type(objects.student).__name__} is not "
                             f"a factory to call as student(width=W, **student.kwargs)")
        cfg = dataclasses.replace(cfg, student=dataclasses.replace(
            cfg.student, model=object_name(objects.student)))
    return cfg
