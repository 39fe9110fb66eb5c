"""Datasets -> normalised in-memory tensors, with a seeded validation split out of the train set."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
import torch

from kdsearch.config import DatasetConfig
from kdsearch.data import TRAIN_SIZES, DataError, load_dataset, load_test, split_indices

from conftest import SHARED_DATASETS

DIGITS_TRAIN = 1797 - 359  # sklearn's 1,797 images less the fixed 20% test split
MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
               "t10k-labels-idx1-ubyte")


def _digits(tmp_path: Path, **kwargs: object):
    return load_dataset(DatasetConfig(name="digits", **kwargs), data_dir=tmp_path / "data",
                        cache_dir=tmp_path / "cache")


def _rows(x: torch.Tensor) -> set[bytes]:
    return {row.numpy().tobytes() for row in x.reshape(len(x), -1)}


@pytest.mark.parametrize("n,val", [(10, 3), (1438, 216), (60000, 5000)])
def test_split_indices_partition_the_set(n: int, val: int) -> None:
    train, valid = split_indices(n, val, seed=0)
    assert len(valid) == val and len(train) == n - val
    assert not set(train.tolist()) & set(valid.tolist())
    assert sorted(train.tolist() + valid.tolist()) == list(range(n))


def test_split_indices_follow_the_seed() -> None:
    train_a, val_a = split_indices(1000, 150, seed=7)
    train_b, val_b = split_indices(1000, 150, seed=7)
    assert torch.equal(train_a, train_b) and torch.equal(val_a, val_b)
    _, val_c = split_indices(1000, 150, seed=8)
    assert not torch.equal(val_a, val_c)


def test_digits_shapes_and_normalisation(tmp_path: Path) -> None:
    ds = _digits(tmp_path)
    assert ds.name == "digits" and ds.num_classes == 10 and ds.input_shape == (1, 8, 8)
    assert len(ds.val) == round(0.15 * DIGITS_TRAIN)  # the default for small sets
    assert len(ds.train) + len(ds.val) == DIGITS_TRAIN
    assert ds.train.x.shape == (len(ds.train), 1, 8, 8) and ds.train.x.dtype == torch.float32
    assert ds.val.x.shape == (len(ds.val), 1, 8, 8)
    assert ds.train.y.dtype == torch.int64 and set(ds.train.y.tolist()) == set(range(10))
    # normalised with the training split's own statistics
    assert abs(ds.train.x.mean().item()) < 1e-4
    assert ds.train.x.std().item() == pytest.approx(1.0, abs=1e-3)
    assert 0.2 < ds.mean[0] < 0.4  # digits' mean ink on the 0..1 scale


def test_digits_val_is_disjoint_from_train_and_covers_the_set(tmp_path: Path) -> None:
    ds = _digits(tmp_path)
    # back to sklearn's pixel scale (0..16), where every value is an exact integer
    pixels = lambda x: torch.round((x * ds.std[0] + ds.mean[0]) * 16).to(torch.uint8)  # noqa: E731
    train, val = pixels(ds.train.x), pixels(ds.val.x)
    from sklearn.datasets import load_digits
    everything = torch.from_numpy(load_digits().images.astype(np.uint8))[:, None]
    all_rows = [r.numpy().tobytes() for r in everything.reshape(len(everything), -1)]
    assert _rows(train) | _rows(val) <= set(all_rows)
    # disjoint as examples: count duplicates so that two identical images in sklearn's set
    # (there are a few) may legitimately fall on both sides
    counts: dict[bytes, int] = {}
    for r in all_rows:
        counts[r] = counts.get(r, 0) + 1
    shared = _rows(train) & _rows(val)
    assert all(counts[r] > 1 for r in shared)
    test = load_test(DatasetConfig(name="digits"), ds, data_dir=tmp_path, cache_dir=tmp_path)
    assert len(test) == 359
    assert len(train) + len(val) + len(test) == len(all_rows)


def test_digits_split_follows_split_seed(tmp_path: Path) -> None:
    a, b = _digits(tmp_path, split_seed=0), _digits(tmp_path, split_seed=0)
    assert torch.equal(a.val.x, b.val.x) and torch.equal(a.train.y, b.train.y)
    c = _digits(tmp_path, split_seed=1)
    assert len(c.val) == len(a.val)
    assert _rows(c.val.x) != _rows(a.val.x)
    # the test split never moves with split_seed
    test_a = load_test(DatasetConfig(name="digits", split_seed=0), a, data_dir=tmp_path,
                       cache_dir=tmp_path)
    test_c = load_test(DatasetConfig(name="digits", split_seed=1), a, data_dir=tmp_path,
                       cache_dir=tmp_path)
    assert torch.equal(test_a.x, test_c.x) and torch.equal(test_a.y, test_c.y)


def test_val_size_count_and_fraction(tmp_path: Path) -> None:
    assert len(_digits(tmp_path, val_size=100).val) == 100
    assert len(_digits(tmp_path, val_size=0.5).val) == round(0.5 * DIGITS_TRAIN)
    with pytest.raises(DataError, match=f"has {DIGITS_TRAIN} training examples"):
        _digits(tmp_path, val_size=DIGITS_TRAIN)


def test_mnist_from_the_real_files(datasets_dir: Path, tmp_path: Path) -> None:
    cfg = DatasetConfig(name="mnist")
    ds = load_dataset(cfg, data_dir=datasets_dir, cache_dir=tmp_path)
    assert (len(ds.train), len(ds.val)) == (55_000, 5_000)
    assert len(ds.train) + len(ds.val) == TRAIN_SIZES["mnist"]  # (the teacher cache's key)
    assert ds.input_shape == (1, 28, 28) and ds.num_classes == 10
    assert ds.train.x.shape == (55_000, 1, 28, 28) and ds.val.x.shape == (5_000, 1, 28, 28)
    assert ds.mean[0] == pytest.approx(0.1307, abs=2e-3)  # MNIST's well-known statistics
    assert ds.std[0] == pytest.approx(0.3081, abs=2e-3)
    assert np.bincount(ds.val.y.numpy(), minlength=10).min() > 400  # every class in val
    test = load_test(cfg, ds, data_dir=datasets_dir, cache_dir=tmp_path)
    assert test.x.shape == (10_000, 1, 28, 28)
    # normalised with the training split's statistics: undone with them, pixels are k/255
    pixels = test.x * ds.std[0] + ds.mean[0]
    assert torch.allclose(pixels * 255, (pixels * 255).round(), atol=1e-3)
    assert float(pixels.min()) == pytest.approx(0.0, abs=1e-5)
    assert float(pixels.max()) == pytest.approx(1.0, abs=1e-5)


def test_missing_dataset_is_one_line_naming_the_folder(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    # no files and no network: torchvision's download fails (about 2 s here, no retries)
    with pytest.raises(DataError) as info:
        load_dataset(DatasetConfig(name="mnist"), data_dir=empty, cache_dir=tmp_path / "cache")
    message = str(info.value)
    assert "\n" not in message
    assert str(empty / "MNIST") in message
    assert "data_dir" in message  # says what to do next


def test_a_truncated_dataset_file_is_named_as_damaged_not_missing(tmp_path: Path) -> None:
    from conftest import SHARED_DATASETS

    if not (SHARED_DATASETS / "MNIST" / "raw").is_dir():
        pytest.skip(f"no MNIST files at {SHARED_DATASETS}")
    raw = tmp_path / "data" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for f in (SHARED_DATASETS / "MNIST" / "raw").glob("*.gz"):
        shutil.copy(f, raw / f.name)
    images = raw / "train-images-idx3-ubyte.gz"
    images.write_bytes(images.read_bytes()[:1_000_000])
    _assert_named_as_damaged("mnist", tmp_path, raw)


def _assert_named_as_damaged(name: str, tmp_path: Path, folder: Path) -> None:
    """Loading fails in one line that names the files' folder as damaged, not as missing."""
    with pytest.raises(DataError) as info:
        load_dataset(DatasetConfig(name=name), data_dir=tmp_path / "data",
                     cache_dir=tmp_path / "cache")
    message = str(info.value)
    assert "\n" not in message and str(folder) in message and "truncated" in message, message
    assert "not found" not in message


@contextlib.contextmanager
def _read_only(folders: list[Path]) -> Iterator[None]:
    """Make folders unwritable; as root, permission bits do not stop writes, the immutable flag
    does (chattr +i on ext4 and most Linux filesystems)."""
    modes = {f: f.stat().st_mode for f in folders}
    flagged: list[Path] = []
    try:
        for f in folders:
            f.chmod(0o555)
            if os.access(f, os.W_OK):  # root
                if shutil.which("chattr") is None or subprocess.run(
                        ["chattr", "+i", str(f)], capture_output=True).returncode != 0:
                    pytest.skip("running as root and chattr +i is unavailable: cannot make a "
                                "folder read-only")
                flagged.append(f)
            assert not os.access(f, os.W_OK)
        yield
    finally:
        for f in flagged:
            subprocess.run(["chattr", "-i", str(f)], check=True)
        for f, mode in modes.items():
            f.chmod(mode)


@pytest.mark.parametrize("locked", ["data folder", "raw folder only"])
def test_read_only_mnist_is_decompressed_into_the_cache(tmp_path: Path, locked: str) -> None:
    src = SHARED_DATASETS / "MNIST" / "raw"
    if not src.is_dir():
        pytest.skip(f"no MNIST files at {SHARED_DATASETS}")
    root, raw, cache = tmp_path / "ro", tmp_path / "ro" / "MNIST" / "raw", tmp_path / "cache"
    raw.mkdir(parents=True)
    for f in src.glob("*.gz"):
        shutil.copy(f, raw / f.name)
    before = sorted(p.name for p in raw.iterdir())
    folders = [root, root / "MNIST", raw] if locked == "data folder" else [raw]
    with _read_only(folders):
        ds = load_dataset(DatasetConfig(name="mnist"), data_dir=root, cache_dir=cache)
    assert (len(ds.train), len(ds.val)) == (55_000, 5_000)
    assert sorted(p.name for p in raw.iterdir()) == before  # nothing written there
    copied = {p.name for p in (cache / "datasets" / "MNIST" / "raw").iterdir()}
    assert set(MNIST_FILES) <= copied


def test_digits_read_from_the_shipped_file_equal_load_digits() -> None:
    import subprocess
    import sys

    from sklearn.datasets import load_digits

    from kdsearch.data import digits_arrays

    images, target = digits_arrays()
    bunch = load_digits()
    assert np.array_equal(images, bunch.images) and np.array_equal(target, bunch.target)
    # and loading digits does not import scikit-learn (1.3 s a process)
    code = ("import sys; from pathlib import Path; from kdsearch.config import DatasetConfig; "
            "from kdsearch.data import load_dataset; "
            "load_dataset(DatasetConfig(name='digits'), data_dir=Path('.'), cache_dir=Path('.')); "
            "print('sklearn' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "False", out.stderr[-2000:]


def test_damaged_cifar10_files_are_named_as_damaged_not_missing(tmp_path: Path) -> None:
    """CIFAR-10's files lie in cifar-10-batches-py/ itself (no raw/ as for MNIST)."""
    batches = tmp_path / "data" / "cifar-10-batches-py"
    batches.mkdir(parents=True)
    for name in ("data_batch_1", "test_batch", "batches.meta"):
        (batches / name).write_bytes(b"not a pickle")
    _assert_named_as_damaged("cifar10", tmp_path, batches)
