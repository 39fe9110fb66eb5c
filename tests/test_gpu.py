"""GPUs (`kdsearch.gpu`): the share each trial takes, and a Ray that reports GPUs torch cannot
use (logical GPUs on a CPU machine stand in for a driver too old or a CPU-only wheel)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
from pathlib import Path
from typing import Iterator

import pytest
import torch

from kdsearch.config import load_config
from kdsearch.data import Dataset, Split
from kdsearch.gpu import (CUDA_CONTEXT_BYTES, PACKING_LIMIT, RAY_PRECISION, check_cuda, explain,
                          gpu_share, tile, trial_bytes)

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = REPO / "search_spaces" / "quickstart.yaml"
CIFAR = REPO / "search_spaces" / "cifar10_cnn.yaml"
H200 = 141 * 10**9  # bytes
GiB = 2**30


def _fake_data(n: int, shape: tuple[int, int, int]) -> Dataset:
    x = torch.zeros(1, *shape).expand(n, *shape)  # the size without the memory
    y = torch.zeros(n, dtype=torch.long)
    return Dataset("fake", Split(x, y), Split(x[:100], y[:100]), 10, shape, (0.0,), (1.0,))


DIGITS, CIFAR_DATA = _fake_data(1437, (1, 8, 8)), _fake_data(45000, (3, 32, 32))


def _ray_units(share: float) -> int:
    """A GPU amount as Ray holds it: an integer count of 1e-4 (its FixedPoint, rounded)."""
    return int(share * RAY_PRECISION + 0.5)


def test_every_automatic_share_tiles_a_gpu_after_rays_rounding() -> None:
    for k in range(1, 65):
        units = _ray_units(tile(k))
        assert 0 < units and k * units <= RAY_PRECISION, k  # k trials fit on one GPU
        assert (k + 1) * units > RAY_PRECISION or k * units == RAY_PRECISION, k  # none wasted
    # what it replaces: 1/6 is held as 0.1667, and six of those need 1.0002 GPUs
    assert 6 * _ray_units(1 / 6) > RAY_PRECISION


def test_the_share_packs_by_the_gpus_memory_up_to_the_packing_limit() -> None:
    digits = load_config(QUICKSTART)
    # a digits MLP needs its CUDA context and a few MB: as many as the limit allows
    assert trial_bytes(digits, DIGITS) < CUDA_CONTEXT_BYTES + 10 * 2**20
    assert gpu_share(digits, DIGITS, H200) == tile(PACKING_LIMIT)
    assert gpu_share(digits, DIGITS, 2 * GiB) == tile(2)  # (2 GiB x 0.8) / ~0.6 GiB
    assert gpu_share(digits, DIGITS, GiB // 2) == 1.0  # never more than one GPU a trial
    cifar = load_config(CIFAR)
    big, small = gpu_share(cifar, CIFAR_DATA, 16 * GiB), gpu_share(cifar, CIFAR_DATA, H200)
    assert tile(PACKING_LIMIT) <= small < big <= 1.0  # more memory, more trials a GPU
    narrow = load_config(CIFAR, ["search.space.width.values=[8]"])
    assert gpu_share(narrow, CIFAR_DATA, 16 * GiB) < big  # a narrower student, a smaller share
    # a searched batch size: the share fits the largest batch, as a fixed one of that size
    searched = load_config(CIFAR, [
        "search.space.batch_size={distribution: choice, values: [128, 1024]}"])
    large = load_config(CIFAR, ["training.batch_size=1024"])
    assert gpu_share(searched, CIFAR_DATA, 16 * GiB) == gpu_share(large, CIFAR_DATA, 16 * GiB)
    # the overrides
    assert gpu_share(load_config(QUICKSTART, ["search.gpus_per_trial=0.25"]), DIGITS, H200) == 0.25
    assert gpu_share(load_config(QUICKSTART, ["search.trials_per_gpu=3"]), DIGITS, H200) == tile(3)
    # unknown memory (no probe came back): planned for a modest GPU
    assert gpu_share(cifar, CIFAR_DATA, None) == big


def test_gpus_per_trial_and_trials_per_gpu_are_one_or_the_other() -> None:
    from kdsearch.config import ConfigError

    with pytest.raises(ConfigError, match="both set the GPU share; keep one"):
        load_config(QUICKSTART, ["search.gpus_per_trial=0.5", "search.trials_per_gpu=2"])


def test_torch_says_why_it_cannot_use_cuda() -> None:
    check = check_cuda("driver")
    if torch.cuda.is_available():
        assert check.usable and check.memory and check.memory > 0 and check.gpu
        return
    assert not check.usable and check.why  # e.g. "Found no NVIDIA driver on your system..."
    line = explain([check], 1, planned_for_cpu=False)
    assert "\n" not in line and check.why in line and "--set search.gpus_per_trial=0" in line
    assert line.startswith("warning: Ray reports 1 GPU, but torch ")


@contextlib.contextmanager
def _logical_gpus(n: int) -> Iterator[None]:
    """A local Ray that reports `n` GPUs on this machine, whatever it has."""
    import ray

    saved = dict(os.environ)
    if ray.is_initialized():
        ray.shutdown()
    ray.init(address="local", num_cpus=2, num_gpus=n, include_dashboard=False,
             log_to_driver=False, logging_level="ERROR")
    try:
        yield
    finally:
        ray.shutdown()
        os.environ.clear()
        os.environ.update(saved)  # ray.init leaves variables set for good


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="here torch can use the GPU")
def test_a_gpu_torch_cannot_use_is_said_in_one_line_recorded_and_planned_for_the_cpu(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from kdsearch import run_search

    small = ["teacher.width=64", "teacher.epochs=3", "search.num_samples=4",
             "search.baseline=false", "training.epochs=2", "search.grace_period=1"]
    caplog.set_level(logging.INFO, logger="kdsearch")
    with _logical_gpus(1):
        result = run_search(QUICKSTART, overrides=small, results_dir=tmp_path, report=False)
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1 and "\n" not in warnings[0], caplog.messages
        # (this machine's driver node has the logical GPU too: one line says both)
        assert "cannot use CUDA in the trials and this driver: " in warnings[0]
        assert "the trials are planned for the CPU" in warnings[0]
        run = json.loads((result.results_dir / "run.json").read_text())
        assert run["hardware"]["gpus"] == 1 and run["gpus_per_trial"] == 0
        trials, driver = run["cuda"]
        assert trials["where"] == "trials" and not trials["usable"] and trials["why"]
        assert driver["where"] == "driver" and not driver["usable"]
        assert trials["torch_version"] == torch.__version__
        assert run["search"]["status"] == "finished"
        # planning for the CPU by hand silences it
        caplog.clear()
        quiet = run_search(QUICKSTART, overrides=[*small, "name=cpu", "search.gpus_per_trial=0"],
                           results_dir=tmp_path, report=False)
        assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
        assert any(m.startswith("search: ") for m in caplog.messages)  # (it did log)
        assert json.loads((quiet.results_dir / "run.json").read_text())["cuda"] == []
