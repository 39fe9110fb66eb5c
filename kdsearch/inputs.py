"""A search's inputs, loaded and checked once: the dataset, the teacher, and the user's objects.

`load_inputs` reads the dataset, checks the student of every searched width against it, and gets
the teacher (cached, else trained or loaded from its checkpoint). The search, a resume and the
final evaluation take the `Inputs` it returns. Bad input fails here, before anything is written.
No Ray here.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch

from kdsearch.builders import UserObjects, check_inputs, code_folders
from kdsearch.config import ExperimentConfig, default_cache_dir, default_data_dir
from kdsearch.data import Dataset, load_dataset
from kdsearch.results import searched_widths
from kdsearch.teacher import Teacher, get_teacher

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Inputs:
    """The dataset and the teacher of a search, in memory, and the user's objects (if any)."""

    data: Dataset
    teacher: Teacher
    objects: UserObjects = field(default_factory=UserObjects)


def load_inputs(cfg: ExperimentConfig, *, device: str = "cpu",
                objects: UserObjects | None = None) -> Inputs:
    """Load the dataset of `cfg` on `device`, check every searched width's student against it,
    and get the teacher (cached, else trained: on the GPU when this process has one).

    Args:
        cfg: the search's config.
        device: where the data and the teacher go.
        objects: the Python objects given in place of the config's names.

    Returns:
        The loaded `Inputs`.

    Raises:
        UserError: a dataset, model or teacher file that cannot be used (one line).
    """
    objects = objects or UserObjects()
    cache_dir = default_cache_dir(cfg)
    data = load_dataset(cfg.dataset, data_dir=default_data_dir(cfg), cache_dir=cache_dir,
                        device=device, folders=code_folders(cfg), source=objects.dataset)
    check_inputs(cfg, searched_widths(cfg), data.train.x, data.num_classes, objects.student)
    # a missing teacher trains on this process's GPU when it has one (a cached one is read
    # without starting CUDA); the trials get CPU tensors and move them to their own device once
    teacher = get_teacher(cfg, data, cache_dir=cache_dir,
                          train_device="cuda" if torch.cuda.is_available() else None,
                          model=objects.teacher)
    how = ("given" if objects.teacher is not None else "logits from a file"
           if teacher.model is None else "cached" if not teacher.trained_now
           else "loaded from its checkpoint" if cfg.teacher.checkpoint else "trained now")
    acc = "" if teacher.val_acc is None else f", val_acc {teacher.val_acc:.4f}"
    log.info(f"teacher: {cfg.teacher.model} on {cfg.dataset.name}{acc} ({how}); "
             f"{len(data.train):,} training and {len(data.val):,} validation examples")
    return Inputs(data, teacher, objects)
