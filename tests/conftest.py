"""Shared fixtures: real dataset files, and caches that never touch the user's home."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

# One intra-op thread, set before torch loads (and inherited by the subprocesses tests start).
# The models here are tiny: on a 2-core box shared with other jobs, torch's default of one thread
# per core thrashes (a digits fit ran 10x slower), and the results are bit-identical either way.
os.environ.setdefault("OMP_NUM_THREADS", "1")

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
