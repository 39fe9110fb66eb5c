"""Shared fixtures: real dataset files, caches that never touch the user's home, and digits
with a small teacher for the training tests."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

# One intra-op thread, set before torch loads (and inherited by the subprocesses tests start).
# The models here are tiny: on a 2-core box shared with other jobs, torch's default of one thread
# per core thrashes (a digits fit ran 10x slower), and the results are bit-identical either way.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402  (after OMP_NUM_THREADS)

from kdsearch.config import DatasetConfig, TrainingConfig  # noqa: E402
from kdsearch.data import Dataset, load_dataset  # noqa: E402
from kdsearch.distill import fit, predict  # noqa: E402
from kdsearch.models import build_student, build_teacher  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
# The original MNIST / Fashion-MNIST files, beside the checkout (read-only there).
SHARED_DATASETS = Path(os.environ.get("KDSEARCH_TEST_DATASETS",
                                      REPO.parent / "shared" / "datasets"))


@pytest.fixture(scope="session")
def datasets_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A writable copy of the shared dataset files (torchvision decompresses next to them)."""
    if not (SHARED_DATASETS / "MNIST" / "raw").is_dir():
        pytest.skip(f"no MNIST files at {SHARED_DATASETS}; set KDSEARCH_TEST_DATASETS")
    root = tmp_path_factory.mktemp("datasets")
    for folder in ("MNIST", "FashionMNIST"):
        src = SHARED_DATASETS / folder / "raw"
        if src.is_dir():
            dst = root / folder / "raw"
            dst.mkdir(parents=True)
            for f in src.glob("*.gz"):
                shutil.copy(f, dst / f.name)
    return root


@pytest.fixture(autouse=True)
def _isolated_dirs(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
                   ) -> None:
    """Every test gets a session-wide teacher cache and no stray data dir from the environment."""
    cache = tmp_path_factory.getbasetemp() / "kdsearch-cache"
    monkeypatch.setenv("KDSEARCH_CACHE_DIR", str(cache))
    monkeypatch.delenv("KDSEARCH_DATA_DIR", raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)


# --------------------------------------------------------------------------- digits
@pytest.fixture(scope="session")
def digits(tmp_path_factory: pytest.TempPathFactory) -> Dataset:
    tmp = tmp_path_factory.mktemp("digits")
    return load_dataset(DatasetConfig(name="digits"), data_dir=tmp, cache_dir=tmp)


def student(data: Dataset, seed: int = 0, model: str = "mlp_student", width: int = 16
            ) -> torch.nn.Module:
    """A built-in student, its weights drawn from `seed`."""
    torch.manual_seed(seed)
    return build_student(model, data.input_shape, data.num_classes, width=width)


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    """The two models hold the same tensors, bit for bit."""
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture(scope="session")
def digits_teacher(digits: Dataset) -> torch.nn.Module:
    """A small teacher, about 0.89 val accuracy on digits."""
    torch.manual_seed(0)
    teacher = build_teacher("mlp_teacher", digits.input_shape, 10, width=64)
    fit(teacher, digits, TrainingConfig(alpha=1.0, epochs=5, batch_size=64, lr=1e-3))
    return teacher.eval()


@pytest.fixture(scope="session")
def digits_teacher_logits(digits: Dataset, digits_teacher: torch.nn.Module) -> torch.Tensor:
    return predict(digits_teacher, digits.train.x)
