"""Datasets -> in-memory tensors, with a seeded validation split carved out of the training set.

Every dataset here fits in memory (MNIST's training set is 188 MB as float32). So it is held as
tensors on the run's device and batched with `randperm`, never through a DataLoader. The search
sees only `train` and `val`. Only the final evaluation calls `load_test`.
"""

from __future__ import annotations

import os
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from kdsearch.config import DatasetConfig
from kdsearch.fields import is_object_name
from kdsearch.entry_points import resolve
from kdsearch.errors import UserError, show
from kdsearch.user_data import user_splits

# a user's data: a function of no arguments that returns the splits, or the dict itself
DataSource = Callable[[], Any] | dict[str, Any]

# The folder under <root> where torchvision keeps each dataset's files.
_TORCHVISION_FOLDERS = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST",
                        "cifar10": "cifar-10-batches-py"}
_DIGITS_TEST_SEED = 20150309  # fixed: the digits test split never moves with split_seed
_DIGITS_TEST_FRACTION = 0.2
_DIGITS_EXAMPLES = 1797  # scikit-learn's bundled digits


class DataError(UserError, RuntimeError):
    """The dataset cannot be loaded. The message says where kdsearch looked and what to do."""


@dataclass(frozen=True)
class Split:
    """One split of a dataset: inputs and labels, as tensors on one device."""

    x: torch.Tensor  # float32, N x C x H x W (built-in sets: normalised), or a user's N x ...
    y: torch.Tensor  # int64, N

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def to(self, device: torch.device | str) -> Split:
        return Split(self.x.to(device), self.y.to(device))


@dataclass(frozen=True)
class Dataset:
    """The training and validation splits of a dataset, with what describes them."""

    name: str
    train: Split
    val: Split
    num_classes: int
    input_shape: tuple[int, ...]  # one example's: C, H, W for the built-in image sets
    # per channel, of the training split, on the 0..1 pixel scale. () for a user's data, which
    # is used as given.
    mean: tuple[float, ...]
    std: tuple[float, ...]
    # the rows of the training data as loaded (before the val split) that data.train holds, in
    # order, and how many rows were loaded. A teacher's logits file is aligned with these rows.
    train_rows: torch.Tensor | None = None
    loaded_rows: int | None = None

    def to(self, device: torch.device | str) -> Dataset:
        return Dataset(self.name, self.train.to(device), self.val.to(device), self.num_classes,
                       self.input_shape, self.mean, self.std, self.train_rows, self.loaded_rows)


def default_val_size(n_train: int) -> int:
    """Return the default number of validation examples for `n_train` training examples.

    It is 5,000 for MNIST-sized sets (as in Hinton et al. and most MNIST work), and 15% for
    small ones."""
    return 5000 if n_train >= 20000 else max(1, round(0.15 * n_train))


# training examples before the val split (the test split held out), per dataset
TRAIN_SIZES = {"digits": _DIGITS_EXAMPLES - round(_DIGITS_TEST_FRACTION * _DIGITS_EXAMPLES),
               "mnist": 60000, "fashion_mnist": 60000, "cifar10": 50000}


def resolved_val_size(name: str, val_size: float | int | None) -> float | int | None:
    """Return `val_size` in the form that names a split: None for the dataset's default count.

    So `val_size: 5000` on MNIST gives the same split, and the same teacher, as leaving it out.
    """
    n = TRAIN_SIZES.get(name)
    if val_size is None or n is None:
        return val_size
    try:
        return None if _val_count(val_size, n, name) == default_val_size(n) else val_size
    except DataError:
        return val_size  # refused when the data is loaded


def _val_count(val_size: float | int | None, n: int, name: str) -> int:
    if val_size is None:
        return default_val_size(n)
    if isinstance(val_size, float) and val_size < 1:
        count = round(val_size * n)
    else:
        count = int(val_size)
    if not 1 <= count < n:
        what = "no validation example" if count < 1 else "no training data"
        raise DataError(f"dataset.val_size = {val_size!r} leaves {what}: {name} has {n} "
                        f"training examples; use a count in [1, {n - 1}] or a fraction of at "
                        f"least {1 / n:.2g} in (0, 1)")
    return count


def _writable(path: Path) -> bool:
    probe = path
    while not probe.exists():
        probe = probe.parent
    return os.access(probe, os.W_OK)


def _files_folder(name: str, root: Path) -> Path:
    """Return the folder under `root` where torchvision keeps a dataset's files.

    It is `<Name>/raw/` for MNIST and Fashion-MNIST. For CIFAR-10 it is `cifar-10-batches-py/`,
    extracted from cifar-10-python.tar.gz."""
    folder = root / _TORCHVISION_FOLDERS[name]
    return folder if name == "cifar10" else folder / "raw"


def _torchvision_root(name: str, root: Path, fallback: Path) -> Path:
    """Return the root to give torchvision: `root`, or a writable copy of its files.

    torchvision decompresses next to the .gz files, and extracts CIFAR-10's archive into root.
    If it would write into a read-only folder, the files are copied to `fallback`."""
    folder = _files_folder(name, root)
    if name == "cifar10":
        archive = root / "cifar-10-python.tar.gz"
        if folder.is_dir() or not archive.is_file() or _writable(root):
            return root  # extracted batches are only read
        fallback.mkdir(parents=True, exist_ok=True)
        if not (fallback / archive.name).exists():
            shutil.copy2(archive, fallback / archive.name)
        return fallback
    if not folder.is_dir() or _writable(folder):  # torchvision writes into raw/, not root
        return root
    target = fallback / _TORCHVISION_FOLDERS[name] / "raw"
    target.mkdir(parents=True, exist_ok=True)
    for f in folder.iterdir():
        if f.is_file() and not (target / f.name).exists():
            shutil.copy2(f, target / f.name)
    return fallback


def _load_torchvision(name: str, root: Path, fallback: Path
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    import torchvision  # imported here: digits runs need no torchvision start-up cost

    cls = {"mnist": torchvision.datasets.MNIST, "fashion_mnist": torchvision.datasets.FashionMNIST,
           "cifar10": torchvision.datasets.CIFAR10}[name]
    use_root = _torchvision_root(name, root, fallback)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            train = cls(str(use_root), train=True, download=True)
            test = cls(str(use_root), train=False, download=True)
    except Exception as e:  # torchvision raises URLError, RuntimeError, OSError...
        where = use_root / _TORCHVISION_FOLDERS[name]
        files_at = _files_folder(name, use_root)
        present = sorted(f.name for f in files_at.glob("*")) if files_at.is_dir() else []
        if present:  # the files are there: torchvision could not read them (or a download ran)
            raise DataError(
                f"{name}: the files under {files_at} ({', '.join(present[:4])}"
                f"{', ...' if len(present) > 4 else ''}) do not load ({type(e).__name__}: "
                f"{str(e).splitlines()[0][:120] if str(e) else ''}); one may be truncated or "
                f"missing: replace them with the original files (delete the decompressed ones "
                f"beside them too)") from None
        raise DataError(
            f"{name}: files not found under {where} and the download failed "
            f"({type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''}); put the "
            f"original files there (torchvision layout) or point dataset.data_dir / "
            f"KDSEARCH_DATA_DIR at a folder that has them") from None
    def arrays(ds: object) -> tuple[np.ndarray, np.ndarray]:
        data = ds.data  # type: ignore[attr-defined]
        data = data.numpy() if isinstance(data, torch.Tensor) else np.asarray(data)
        targets = ds.targets  # type: ignore[attr-defined]
        targets = targets.numpy() if isinstance(targets, torch.Tensor) else np.asarray(targets)
        if data.ndim == 3:
            data = data[:, None, :, :]  # N x 1 x H x W
        else:
            data = data.transpose(0, 3, 1, 2)  # CIFAR: N x H x W x C -> N x C x H x W
        return data.astype(np.float32) / 255.0, targets.astype(np.int64)
    return (*arrays(train), *arrays(test))


def digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """Return scikit-learn's digits as (1797 x 8 x 8 pixel values 0..16, labels).

    The digits are read straight from the CSV that scikit-learn ships, which `load_digits`
    parses. The file is found without importing scikit-learn. Importing `sklearn.datasets`
    takes 1.3 s, while the read takes 25 ms, and the quickstart would pay the import in every
    process. Where the file is not found, `load_digits` is used.
    """
    import importlib.util

    spec = importlib.util.find_spec("sklearn")
    for root in (spec.submodule_search_locations or []) if spec else []:
        path = Path(root) / "datasets" / "data" / "digits.csv.gz"
        if path.is_file():
            table = np.loadtxt(path, delimiter=",")
            if table.shape == (_DIGITS_EXAMPLES, 65):
                return table[:, :-1].reshape(-1, 8, 8), table[:, -1].astype(np.int64)
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return bunch.images, bunch.target


def _load_digits() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    images, target = digits_arrays()
    x = (images.astype(np.float32) / 16.0)[:, None, :, :]  # 1797 x 1 x 8 x 8, 0..1
    y = target.astype(np.int64)
    perm = np.random.default_rng(_DIGITS_TEST_SEED).permutation(len(y))
    n_test = round(_DIGITS_TEST_FRACTION * len(y))
    test, train = perm[:n_test], perm[n_test:]
    return x[train], y[train], x[test], y[test]


def _raw(cfg: DatasetConfig, data_dir: Path, fallback: Path
         ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    if cfg.name == "digits":
        return _load_digits()
    return _load_torchvision(cfg.name, data_dir, fallback)


def split_indices(n: int, val_count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (train, val) indices, each sorted, from a permutation seeded with `seed`.

    The same seed gives the same split."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[val_count:].sort().values, perm[:val_count].sort().values


def _stats(x: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    mean = x.mean(axis=(0, 2, 3), dtype=np.float64)
    std = x.std(axis=(0, 2, 3), dtype=np.float64)
    return tuple(float(m) for m in mean), tuple(float(max(s, 1e-6)) for s in std)


def _normalise(x: np.ndarray, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    m = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    return (torch.from_numpy(np.ascontiguousarray(x)) - m) / s


def _user_source(cfg: DatasetConfig, folders: list[Path], source: DataSource | None
                 ) -> tuple[str, DataSource]:
    where = f"dataset.name = {show(cfg.name)}"
    if source is not None:
        return where, source
    if is_object_name(cfg.name):
        raise DataError(f"{where} was a Python object given to run_search; pass it again "
                        f"(dataset=...) to resume_search or report_search")
    return where, resolve(cfg.name, where=where, folders=folders)


def _load_user(cfg: DatasetConfig, folders: list[Path], source: DataSource | None
               ) -> tuple[dict[str, tuple[torch.Tensor, torch.Tensor]], int]:
    where, found = _user_source(cfg, folders, source)
    return user_splits(found, where)


def is_builtin(cfg: DatasetConfig) -> bool:
    """Return whether dataset.name is one of the built-in datasets."""
    return cfg.name in TRAIN_SIZES


def load_dataset(cfg: DatasetConfig, *, data_dir: Path, cache_dir: Path,
                 device: torch.device | str = "cpu", folders: list[Path] | None = None,
                 source: DataSource | None = None) -> Dataset:
    """Return the train and val splits as tensors on `device`. The test split is not loaded.

    A built-in set is normalised with its training split's statistics. A user's data is used as
    it is. It comes from `source`, or from a function named in dataset.name and looked for in
    `folders`."""
    if source is not None or not is_builtin(cfg):
        splits, num_classes = _load_user(cfg, folders or [], source)
        x, y = splits["train"]
        if "val" in splits:
            rows = torch.arange(len(y))
            train, val = Split(x, y), Split(*splits["val"])
        else:
            n_val = _val_count(cfg.val_size, len(y), cfg.name)
            rows, val_idx = split_indices(len(y), n_val, cfg.split_seed)
            train, val = Split(x[rows], y[rows]), Split(x[val_idx], y[val_idx])
        shape = tuple(int(s) for s in x.shape[1:])
        return Dataset(cfg.name, train, val, num_classes, shape, (), (), rows,
                       len(y)).to(device)
    x, y, _, _ = _raw(cfg, data_dir, cache_dir / "datasets")
    n_val = _val_count(cfg.val_size, len(y), cfg.name)
    train_idx, val_idx = split_indices(len(y), n_val, cfg.split_seed)
    xt, xv = x[train_idx.numpy()], x[val_idx.numpy()]
    mean, std = _stats(xt)
    train = Split(_normalise(xt, mean, std), torch.from_numpy(y[train_idx.numpy()]))
    val = Split(_normalise(xv, mean, std), torch.from_numpy(y[val_idx.numpy()]))
    c, h, w = x.shape[1:]
    ds = Dataset(cfg.name, train, val, int(y.max()) + 1, (int(c), int(h), int(w)), mean, std,
                 train_idx, len(y))
    return ds.to(device)


def load_test(cfg: DatasetConfig, dataset: Dataset, *, data_dir: Path, cache_dir: Path,
              device: torch.device | str = "cpu", folders: list[Path] | None = None,
              source: DataSource | None = None) -> Split:
    """Return the held-out test split, normalised like `dataset` (a user's split as it is).

    Only the final evaluation calls this."""
    if source is not None or not is_builtin(cfg):
        splits, _ = _load_user(cfg, folders or [], source)
        return Split(*splits["test"]).to(device)
    _, _, xs, ys = _raw(cfg, data_dir, cache_dir / "datasets")
    return Split(_normalise(xs, dataset.mean, dataset.std), torch.from_numpy(ys)).to(device)
