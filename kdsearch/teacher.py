"""Train the teacher once and cache it, with its logits, by a hash of everything that sets it.

An entry is a folder `<cache_dir>/teachers/<key>-<data>/`. `key` hashes the teacher's settings.
`data` is the first 12 hex digits of the sha256 of the training and validation splits that the
teacher was trained on (or loaded for). So the teachers of two versions of a dataset are cached
side by side. An entry holds two files:

- `teacher.pt`: the weights and the logits on the training split, read with
  `torch.load(weights_only=True)`.
- `manifest.json`: the settings, the teacher's val accuracy, the sha256 of `teacher.pt` and the
  full sha256 of the splits.

Both files are written to a temporary file and renamed into place, the manifest last. So a
reader sees a whole entry or none. A truncated or bit-flipped `teacher.pt` fails its checksum.
It is reported in one line and rebuilt. Cached logits line up with the training examples only
if these are the same examples in the same order. So an entry whose manifest names other data
is not used. An entry in the older layout, `teachers/<key>/`, is used for the data it holds. A
file lock makes sure that two processes that ask for the same teacher at once train it once.

A pretrained teacher (`teacher.checkpoint`, a state_dict of teacher.model) is loaded instead of
trained. It is cached the same way. Its key holds the checkpoint file's sha256 and the model's
name and kwargs, so a new checkpoint makes a new entry. A checkpoint that does not fit the
model is refused before anything is written, and so is a model that does not fit the data. A
teacher given as a ready `nn.Module` (`run_search(teacher=...)`) is run once per process and
is not cached. A teacher that cannot run here can be given as its logits on the training rows
(`teacher.logits`, a .npy file). Such a teacher has no model and no accuracy.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from filelock import FileLock
from torch import nn

from kdsearch import files
from kdsearch.builders import build_teacher, check_output
from kdsearch.config import ExperimentConfig, TrainingConfig
from kdsearch.data import Dataset, resolved_val_size
from kdsearch.distill import FitState, evaluate, fit, predict
from kdsearch.errors import UserError, one_line, show
from kdsearch.models import MODELS, TEACHERS_WITH_DROPOUT
from kdsearch.metrics import EPOCH, VAL_ACC
from kdsearch.version import __version__

log = logging.getLogger(__name__)

CACHE_FORMAT = 2  # bump when the entry layout or the teacher's training code changes (2: cosine lr)


class TeacherError(UserError, ValueError):
    """A teacher's checkpoint or logits file does not fit. The message says how."""


@dataclass(frozen=True)
class Teacher:
    """A teacher ready for distillation: its model, its logits on data.train, its cache entry."""

    model: nn.Module | None  # in eval mode, on the dataset's device; None: logits from a file
    train_logits: torch.Tensor  # N_train x classes, in data.train order, no augmentation
    val_acc: float | None  # None: logits from a file
    key: str
    path: Path | None  # the cache entry, None when the cache was not writable
    trained_now: bool  # False: loaded from the cache


def teacher_settings(cfg: ExperimentConfig) -> dict[str, Any]:
    """Everything that determines the teacher (and nothing about the student or the search)."""
    d = cfg.dataset
    teacher = dataclasses.asdict(cfg.teacher)
    if cfg.teacher.model not in TEACHERS_WITH_DROPOUT:  # build_teacher does not pass it on
        teacher["dropout"] = None
    if cfg.teacher.model not in MODELS:  # a user's model takes its kwargs, not these
        teacher["width"] = None
    for key in ("kwargs", "checkpoint", "logits"):
        if not teacher[key]:  # unset: left out, so teachers cached without these keep their key
            del teacher[key]
    for key in ("checkpoint", "logits"):  # hash the file's content, not its path
        if key in teacher:
            teacher[key] = _file_sha256(Path(teacher[key]), f"teacher.{key}")
    if cfg.teacher.checkpoint or cfg.teacher.logits:  # not trained: no training settings
        for key in ("epochs", "batch_size", "lr", "weight_decay", "shift", "seed", "dropout"):
            teacher[key] = None
    return {"format": CACHE_FORMAT, "dataset": d.name,
            "val_size": resolved_val_size(d.name, d.val_size),
            "split_seed": d.split_seed, "teacher": teacher}


def teacher_key(cfg: ExperimentConfig) -> str:
    """Return the first 20 hex digits of the sha256 of `teacher_settings(cfg)`."""
    blob = json.dumps(teacher_settings(cfg), sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:20]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


_FILE_HASHES: dict[tuple[str, int, int], str] = {}  # (path, size, mtime_ns) -> sha256


def user_file_sha256(path: Path) -> str | None:
    """Return the sha256 of a user's file (a checkpoint or a logits file), or None if it cannot
    be read. The hash is kept by path, size and mtime, so an unchanged file is read once."""
    try:
        st = path.stat()
        key = (str(path), st.st_size, st.st_mtime_ns)
        if key not in _FILE_HASHES:
            _FILE_HASHES[key] = _sha256(path)
        return _FILE_HASHES[key]
    except OSError:
        return None


def _file_sha256(path: Path, key: str) -> str:
    found = user_file_sha256(path)
    if found is None:
        why = "no such file" if not path.exists() else "not a readable file"
        raise TeacherError(f"{key} = {show(str(path))}: cannot be read ({why}); give the path "
                           f"of the file, relative to the space file")
    return found


def data_sha256(data: Dataset) -> str:
    """Return the sha256 of the training and validation splits.

    The hash covers shapes, dtypes, inputs and labels, in order. The cached logits and val
    accuracy belong to the data with this hash. It takes about 0.1 s on MNIST."""
    h = hashlib.sha256()
    for split in (data.train, data.val):
        for t in (split.x, split.y):
            t = t.detach().cpu().contiguous()
            h.update(f"{tuple(t.shape)} {t.dtype};".encode())
            h.update(t.view(torch.uint8).numpy().data if t.numel() else b"")
    return h.hexdigest()


class CorruptEntry(Exception):
    """A cache entry that cannot be used. The message says why."""


class OtherData(CorruptEntry):
    """A whole entry for the same settings, but trained on other data."""


def _load_entry(entry: Path, cfg: ExperimentConfig, data: Dataset, data_hash: str) -> Teacher:
    manifest_path, weights_path = entry / "manifest.json", entry / "teacher.pt"
    try:
        manifest = json.loads(manifest_path.read_text())
        expected = manifest["sha256"]
        val_acc = float(manifest["val_acc"])
        trained_on = manifest.get("data_sha256")  # older entries lack it and are used as they are
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise CorruptEntry(f"unreadable manifest ({type(e).__name__})") from None
    if not 0.0 <= val_acc <= 1.0:  # also refuses NaN
        raise CorruptEntry(f"the manifest's val_acc {val_acc!r} is not an accuracy")
    if trained_on is not None and trained_on != data_hash:
        raise OtherData("holds the teacher of other data (its training and validation splits "
                        "differ from these)")
    if not weights_path.is_file():
        raise CorruptEntry("teacher.pt is missing")
    if _sha256(weights_path) != expected:
        raise CorruptEntry("teacher.pt does not match its checksum (truncated or modified)")
    try:
        blob = torch.load(weights_path, map_location="cpu", weights_only=True)
        model = _new_teacher(cfg, data)
        model.load_state_dict(blob["model"])
        logits = blob["train_logits"]
    except Exception as e:  # an unpickler refusal, a shape mismatch, a missing key
        raise CorruptEntry(f"teacher.pt does not load ({type(e).__name__})") from None
    if tuple(logits.shape) != (len(data.train), data.num_classes):
        raise CorruptEntry(f"cached logits have shape {tuple(logits.shape)}, expected "
                           f"{(len(data.train), data.num_classes)}")
    if not torch.isfinite(logits).all():
        raise CorruptEntry("cached logits hold NaN or inf")
    device = data.train.x.device
    # the settings' key, as for a teacher trained now (the entry's name adds the data hash)
    return Teacher(model.to(device).eval(), logits.to(device), val_acc, teacher_key(cfg), entry,
                   False)


def _clear(entry: Path) -> None:
    """Make way for a new entry.

    Remove a file that stands where the entry's folder goes, and a folder that stands where one
    of its files goes. Also remove the old manifest, so that it cannot vouch for new weights."""
    if entry.is_symlink() or (entry.exists() and not entry.is_dir()):
        entry.unlink()
    for name in ("manifest.json", "teacher.pt"):
        path = entry / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
    (entry / "manifest.json").unlink(missing_ok=True)


def _new_teacher(cfg: ExperimentConfig, data: Dataset) -> nn.Module:
    torch.manual_seed(cfg.teacher.seed)
    return build_teacher(cfg, data.input_shape, data.num_classes)


def _load_checkpoint(cfg: ExperimentConfig, data: Dataset) -> nn.Module:
    """Return teacher.model with the weights of teacher.checkpoint, in eval mode.

    Raise a one-line TeacherError that names the first key or shape that does not match."""
    path = Path(str(cfg.teacher.checkpoint))
    where = f"teacher.checkpoint = {show(str(path))}"
    model = _new_teacher(cfg, data)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise TeacherError(f"{where}: no such file; give the path of "
                           f"torch.save(model.state_dict(), path), relative to the space file"
                           ) from None
    except Exception as e:  # an unpickler refusal, a torn file
        why = one_line(e) or type(e).__name__
        raise TeacherError(f"{where}: does not load with torch.load(weights_only=True) "
                           f"({type(e).__name__}: {why}); save the weights alone: "
                           f"torch.save(model.state_dict(), path)") from None
    if isinstance(state, dict) and set(state) == {"model", "train_logits"}:
        state = state["model"]  # a kdsearch cache entry's teacher.pt
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise TeacherError(f"{where}: holds {type(state).__name__}, not a state_dict of tensors; "
                           f"save it with torch.save(model.state_dict(), path)")
    own = model.state_dict()
    what = f"the state_dict of teacher.model = {show(cfg.teacher.model)}"
    for key, value in own.items():
        if key not in state:
            raise TeacherError(f"{where}: has no {key!r}, which {what} has "
                               f"({len(own)} entries; the file has {len(state)})")
        if tuple(state[key].shape) != tuple(value.shape):
            raise TeacherError(f"{where}: {key!r} has shape {tuple(state[key].shape)}; "
                               f"{what} has {tuple(value.shape)}")
    extra = [k for k in state if k not in own]
    if extra:
        raise TeacherError(f"{where}: has {extra[0]!r}, which {what} does not have")
    model.load_state_dict(state)
    return model.eval()


def _ready(model: nn.Module, data: Dataset, what: str) -> tuple[nn.Module, torch.Tensor, float]:
    """Check a trained teacher against the data and move it to the data's device.

    Return (model, its logits on data.train, its val accuracy)."""
    check_output(what, model, data.train.x, data.num_classes)
    model = model.to(data.train.x.device).eval()
    return model, predict(model, data.train.x), evaluate(model, data.val)[0]


def given_teacher(cfg: ExperimentConfig, data: Dataset, model: nn.Module) -> Teacher:
    """Return the Teacher of a trained model given as an object. It is run once and not cached."""
    if not isinstance(model, nn.Module):
        raise TeacherError(f"run_search(teacher=...): {type(model).__name__} is not a "
                           f"torch.nn.Module")
    model, logits, val_acc = _ready(model, data, "run_search(teacher=...)")
    return Teacher(model, logits, val_acc, teacher_key(cfg), None, False)


def logits_teacher(cfg: ExperimentConfig, data: Dataset) -> Teacher:
    """Return a Teacher that has the logits of the teacher.logits file and no model.

    The file holds a row of logits for each training row as loaded. The rows of data.train are
    picked out of it, in data.train's order."""
    path = Path(str(cfg.teacher.logits))
    where = f"teacher.logits = {show(str(path))}"
    try:
        found = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise TeacherError(f"{where}: no such file; give a .npy file (numpy.save) of the "
                           f"teacher's logits on the training rows, relative to the space file"
                           ) from None
    except Exception as e:
        raise TeacherError(f"{where}: not a .npy array of numbers ({type(e).__name__}); write "
                           f"it with numpy.save(path, logits)") from None
    rows = data.loaded_rows if data.loaded_rows is not None else len(data.train)
    expected = (rows, data.num_classes)
    if not isinstance(found, np.ndarray) or found.dtype.kind not in "fiu" \
            or tuple(found.shape) != expected:
        shape = tuple(found.shape) if isinstance(found, np.ndarray) else type(found).__name__
        raise TeacherError(f"{where}: has shape {shape} ({getattr(found, 'dtype', '?')}); "
                           f"expected {expected}: a row of {data.num_classes} logits for each "
                           f"of the {rows} training rows, in their order")
    logits = torch.from_numpy(found.astype(np.float32))
    if not torch.isfinite(logits).all():
        raise TeacherError(f"{where}: holds NaN or inf")
    if data.train_rows is not None:
        logits = logits[data.train_rows]
    return Teacher(None, logits.to(data.train.x.device), None, teacher_key(cfg), None, False)


def train_teacher(cfg: ExperimentConfig, data: Dataset, *, device: str | None = None
                  ) -> tuple[nn.Module, torch.Tensor, float]:
    """Train the teacher from scratch, or load it when teacher.checkpoint is set.

    Training runs on `device` (default: the data's device). Return (model in eval mode, its
    logits on data.train, its val accuracy), on the data's device."""
    if cfg.teacher.checkpoint is not None:
        return _ready(_load_checkpoint(cfg, data), data,
                      f"teacher.model = {show(cfg.teacher.model)}")
    home = data.train.x.device
    if device is not None and torch.device(device) != home:
        model, logits, val_acc = train_teacher(cfg, data.to(device))
        return model.to(home), logits.to(home), val_acc
    t = cfg.teacher
    model = _new_teacher(cfg, data)
    check_output(f"teacher.model = {show(t.model)}", model, data.train.x, data.num_classes)
    model = model.to(home)
    training = TrainingConfig(epochs=t.epochs, batch_size=t.batch_size, lr=t.lr,
                              weight_decay=t.weight_decay, alpha=1.0, shift=t.shift, seed=t.seed)
    bar = None
    shown = log.isEnabledFor(logging.INFO)  # progress only where INFO messages are shown
    if shown and sys.stderr.isatty():
        from tqdm import tqdm
        bar = tqdm(total=t.epochs, desc=f"teacher {t.model} on {cfg.dataset.name}", unit="epoch",
                   file=sys.stderr, leave=True)
    every = max(1, t.epochs // 10)  # into a log file: a line per tenth of the epochs, no bar

    def report(metrics: dict[str, float], state: FitState) -> None:
        if bar is not None:
            bar.update(1)
            bar.set_postfix(val_acc=f"{metrics[VAL_ACC]:.4f}")
        elif shown and int(metrics[EPOCH]) % every == 0:
            log.info(f"teacher {t.model} on {cfg.dataset.name}: epoch "
                     f"{int(metrics[EPOCH])}/{t.epochs}, val_acc {metrics[VAL_ACC]:.4f}")

    history = fit(model, data, training, report=report)
    if bar is not None:
        bar.close()
    model.eval()
    return model, predict(model, data.train.x), history[-1][VAL_ACC]


def _cached(entry: Path, cfg: ExperimentConfig, data: Dataset, data_hash: str,
            why: list[str] | None = None) -> Teacher | None:
    """Return the entry's teacher if the entry is there, whole and of this data, else None.

    When an entry is there but cannot be used, the reason is appended to `why`."""
    if not (entry / "manifest.json").exists():
        return None
    try:
        return _load_entry(entry, cfg, data, data_hash)
    except CorruptEntry as e:
        if why is not None:
            why.append(str(e) if isinstance(e, OtherData) else f"is corrupted: {e}")
        return None


def _stamp(entry: Path, data_hash: str, lock: FileLock) -> None:
    """Record `data_hash` in the manifest of an older entry.

    An older entry has no hash of its data. It is used as it is, and its first use records the
    hash."""
    path = entry / "manifest.json"
    try:
        if "data_sha256" in json.loads(path.read_text()):
            return
        with lock:
            manifest = json.loads(path.read_text())
            manifest.setdefault("data_sha256", data_hash)
            files.write_text(path, json.dumps(manifest, indent=2), durable=True)
    except (OSError, ValueError, TypeError):
        pass  # the manifest changed meanwhile or cannot be written; a later use records it


def _check_model(cfg: ExperimentConfig, data: Dataset) -> None:
    """Check that the teacher to train or load fits the data, before the cache is touched.

    With a checkpoint, the checkpoint must load into the model. Without one, the model must
    build and give one logit per class. Raise TeacherError or ModelError otherwise."""
    if cfg.teacher.checkpoint is not None:
        _load_checkpoint(cfg, data)
    else:
        check_output(f"teacher.model = {show(cfg.teacher.model)}", _new_teacher(cfg, data),
                     data.train.x, data.num_classes)


def _from_cache(root: Path, key: str, cfg: ExperimentConfig, data: Dataset, data_hash: str,
                why: list[str]) -> Teacher | None:
    """Return the cached teacher of these settings and this data, or None.

    Look first in the entry `<key>-<data>`. Then look in an entry of the older layout,
    `teachers/<key>`, and use it if it holds this data."""
    cached = _cached(root / f"{key}-{data_hash[:12]}", cfg, data, data_hash, why)
    if cached is not None:
        return cached
    older = _cached(root / key, cfg, data, data_hash)  # an entry of other data is left alone
    if older is not None and older.path is not None:
        try:
            _stamp(older.path, data_hash, FileLock(str(root / f"{key}.lock")))
        except OSError:
            pass
    return older


def _building(cfg: ExperimentConfig) -> str:
    """What making a cache entry does, in words."""
    if cfg.teacher.checkpoint is not None:
        return "computing the teacher's logits from teacher.checkpoint"
    return "training the teacher"


def get_teacher(cfg: ExperimentConfig, data: Dataset, *, cache_dir: Path,
                train_device: str | None = None, model: nn.Module | None = None) -> Teacher:
    """Return the teacher for `cfg` and `data`, from the cache when it is there.

    Otherwise train the teacher (or load it from its checkpoint) once, under a file lock, and
    cache it. Training runs on `train_device` (default: the data's device). A cached teacher is
    loaded without using `train_device`. Each dataset has its own entry, so a subset and the
    full set have separate entries. A teacher given as `model`, or as teacher.logits, is used
    as it is and is not cached."""
    if model is not None:
        return given_teacher(cfg, data, model)
    if cfg.teacher.logits is not None:
        return logits_teacher(cfg, data)
    key = teacher_key(cfg)
    data_hash = data_sha256(data)
    root = cache_dir / "teachers"
    entry = root / f"{key}-{data_hash[:12]}"
    why: list[str] = []
    cached = _from_cache(root, key, cfg, data, data_hash, why)
    if cached is not None:
        return cached
    _check_model(cfg, data)  # bad input is refused before anything is written
    try:
        root.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(root / f"{entry.name}.lock"))
        with lock:
            pass
    except OSError as e:
        log.warning(f"kdsearch: teacher cache {cache_dir} is not writable ({e.strerror})"
                    + "".join(f" and its entry {entry} {w}" for w in why)
                    + f"; {_building(cfg)} in memory without caching it (set "
                      f"KDSEARCH_CACHE_DIR to a writable folder)")
        model, logits, val_acc = train_teacher(cfg, data, device=train_device)
        return Teacher(model, logits, val_acc, key, None, True)
    for w in why:
        log.warning(f"kdsearch: teacher cache entry {entry} {w}; {_building(cfg)} again")
    with lock:
        # another process may have built it while we waited for the lock
        cached = _cached(entry, cfg, data, data_hash)
        if cached is not None:
            return cached
        model, logits, val_acc = train_teacher(cfg, data, device=train_device)
        _clear(entry)
        entry.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        blob = {"model": state, "train_logits": logits.detach().cpu()}
        files.write_atomic(entry / "teacher.pt", lambda f: torch.save(blob, f), durable=True)
        manifest = {"key": key, "sha256": _sha256(entry / "teacher.pt"), "val_acc": val_acc,
                    "data_sha256": data_hash, "settings": teacher_settings(cfg),
                    "kdsearch_version": __version__}
        files.write_text(entry / "manifest.json", json.dumps(manifest, indent=2), durable=True)
        return Teacher(model, logits, val_acc, key, entry, True)
