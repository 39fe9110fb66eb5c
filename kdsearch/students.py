"""The trained students of the final evaluation, handed back: `results/<name>/students/`.

Every retraining that did not diverge or fail leaves `<kind>-w<width>-seed<seed>.pt`. This is
the student's `state_dict`, saved with `torch.save` to a temporary file and renamed into place.
`index.json` lists these files. For each it gives the kind, width, seed, test accuracy, the
model's name and kwargs, the file's sha256, and the input shape and class count the model was
built for. Its `best` entry names each kind's best width.

`load_student` rebuilds the model, importing the user's factory as the search did. It checks
the file's sha256, then loads the weights with `torch.load(weights_only=True)`. A torn,
bit-flipped or replaced file is refused in one line and never unpickled.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from kdsearch import files
from kdsearch.builders import build_student
from kdsearch.errors import UserError, one_line
from kdsearch.results import read_config
from kdsearch.tables import BASELINE, DISTILLED

STUDENTS_DIR = "students"
INDEX_FILE = "index.json"
INDEX_FORMAT = 1


class StudentError(UserError, ValueError):
    """A student cannot be loaded. The message says which file and what to do."""


@dataclass(frozen=True)
class StudentEntry:
    """One saved student, as index.json lists it."""

    kind: str  # DISTILLED or BASELINE
    width: int
    seed: int
    test_acc: float
    file: str  # the weights' file name in students/
    sha256: str  # of that file
    model: str  # student.model
    kwargs: dict[str, Any]  # student.kwargs
    input_shape: list[int]  # one example's shape
    num_classes: int

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def file_name(kind: str, width: int, seed: int) -> str:
    """Return the file name of a saved student's weights."""
    return f"{kind}-w{width}-seed{seed}.pt"


def save_state(folder: Path, kind: str, width: int, seed: int,
               state: dict[str, torch.Tensor]) -> tuple[str, str]:
    """Write one student's weights atomically. Return (file name, sha256)."""
    folder.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in state.items()}, buf)
    blob = buf.getvalue()
    name = file_name(kind, width, seed)
    files.write_bytes(folder / name, blob)
    return name, hashlib.sha256(blob).hexdigest()


def write_index(folder: Path, entries: list[StudentEntry], best: dict[str, int | None]
                ) -> None:
    """Write index.json atomically, and delete every weights file that it does not list."""
    folder.mkdir(parents=True, exist_ok=True)
    listed = {e.file for e in entries}
    for f in folder.glob("*.pt"):
        if f.name not in listed:
            f.unlink()
    entries = sorted(entries, key=lambda e: (e.kind != DISTILLED, e.width, e.seed))
    files.write_text(folder / INDEX_FILE, json.dumps(
        {"format": INDEX_FORMAT, "best": best, "students": [e.to_json() for e in entries]},
        indent=2) + "\n")


def read_index(results_dir: Path) -> dict[str, Any]:
    """Return the checked contents of students/index.json. Raise StudentError if unusable."""
    path = Path(results_dir) / STUDENTS_DIR / INDEX_FILE
    try:
        index = json.loads(path.read_text())
    except FileNotFoundError:
        raise StudentError(f"{path}: not found; the students are saved by the final evaluation "
                           f"(`kdsearch report {results_dir}` runs it)") from None
    except (OSError, ValueError) as e:
        raise StudentError(f"{path}: unreadable ({type(e).__name__}); run `kdsearch report "
                           f"{results_dir}` to write it again") from None
    ok = isinstance(index, dict) and isinstance(index.get("students"), list) and all(
        _entry_ok(e) for e in index["students"]) and isinstance(index.get("best", {}), dict)
    if not ok:
        raise StudentError(f"{path}: not a students index; run `kdsearch report {results_dir}` "
                           f"to write it again")
    return index


def _entry_ok(e: Any) -> bool:
    """Return whether `e` is an index entry with every field of a StudentEntry, each of its type.

    Its file must be a plain name in students/, not a path elsewhere."""
    fields = {f.name for f in dataclasses.fields(StudentEntry)}
    if not (isinstance(e, dict) and set(e) == fields):
        return False
    counts = all(isinstance(e[k], int) and not isinstance(e[k], bool) and e[k] >= 0
                 for k in ("width", "seed", "num_classes"))
    return (counts and e["kind"] in (DISTILLED, BASELINE) and isinstance(e["file"], str)
            and Path(e["file"]).name == e["file"] and e["file"] not in ("", ".", "..")
            and isinstance(e["sha256"], str) and isinstance(e["model"], str)
            and isinstance(e["kwargs"], dict) and isinstance(e["test_acc"], (int, float))
            and isinstance(e["input_shape"], list)
            and all(isinstance(x, int) and x > 0 for x in e["input_shape"]))


def read_entries(results_dir: Path) -> list[StudentEntry]:
    """Return the saved students that index.json lists ([] when it lists none).

    Raise StudentError when the index cannot be read."""
    try:
        return [StudentEntry(**e) for e in read_index(results_dir)["students"]]
    except TypeError:
        raise StudentError(f"{Path(results_dir) / STUDENTS_DIR / INDEX_FILE}: not a students "
                           f"index; run `kdsearch report {results_dir}` to write it again"
                           ) from None


def _pick(index: dict[str, Any], path: Path, kind: str, width: int | None,
          seed: int | None) -> dict[str, Any]:
    if kind not in (DISTILLED, BASELINE):
        raise StudentError(f"load_student: kind = {kind!r}; expected {DISTILLED!r} or "
                           f"{BASELINE!r}")
    mine = [e for e in index["students"] if e["kind"] == kind]
    if width is None:
        width = (index.get("best") or {}).get(kind)
        if width is None and mine:
            width = max(mine, key=lambda e: e.get("test_acc") or 0)["width"]
    found = [e for e in mine if e["width"] == width and (seed is None or e["seed"] == seed)]
    if not found:
        have = ", ".join(sorted({f"width {e['width']} seed {e['seed']}" for e in mine})) or "none"
        raise StudentError(f"{path}: no {kind} student of width {width}"
                           f"{'' if seed is None else f' and seed {seed}'} (saved: {have})")
    return min(found, key=lambda e: e["seed"])


def load_student(results_dir: str | Path, kind: str = DISTILLED, width: int | None = None,
                 seed: int | None = None, *, student: Callable[..., nn.Module] | None = None
                 ) -> nn.Module:
    """Return a trained student of the final evaluation, rebuilt and loaded, in eval mode on CPU.

    `kind` is "distilled" or "baseline". With `width` None, the best width of that kind is
    loaded. With `seed` None, its first seed is loaded. `student` is the factory given to
    run_search, when it was an object."""
    results_dir = Path(results_dir)
    folder = results_dir / STUDENTS_DIR
    index = read_index(results_dir)
    entry = _pick(index, folder / INDEX_FILE, kind, width, seed)
    path = folder / entry["file"]
    try:
        blob = path.read_bytes()
    except OSError as e:
        raise StudentError(f"{path}: cannot be read ({e.strerror}); run `kdsearch report "
                           f"{results_dir}` to retrain it") from None
    if hashlib.sha256(blob).hexdigest() != entry["sha256"]:
        raise StudentError(f"{path}: does not match its sha256 in {INDEX_FILE} (truncated or "
                           f"modified); run `kdsearch report {results_dir}` to retrain it")
    try:
        state = torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
    except Exception as e:
        raise StudentError(f"{path}: does not load as weights ({type(e).__name__}); run "
                           f"`kdsearch report {results_dir}` to retrain it") from None
    cfg = read_config(results_dir)
    model = build_student(cfg, tuple(entry["input_shape"]), int(entry["num_classes"]),
                          width=int(entry["width"]), factory=student)
    try:
        model.load_state_dict(state)
    except Exception as e:
        first = one_line(e)
        raise StudentError(f"{path}: does not fit student.model = {cfg.student.model!r} at "
                           f"width {entry['width']} ({first})") from None
    return model.eval()


def kept_entries(folder: Path, wanted: list[tuple[str, int, int]]) -> list[StudentEntry]:
    """Return the index entries in `folder` for the (kind, width, seed) of reused retrainings.

    Only entries whose file is still there and whole are returned. The others are dropped:
    `load_student`, `kdsearch export` and `kdsearch latency` then lack those students."""
    try:
        index = json.loads((folder / INDEX_FILE).read_text())
        entries = [StudentEntry(**e) for e in index["students"]
                   if (e["kind"], e["width"], e["seed"]) in wanted]
    except (OSError, ValueError, KeyError, TypeError):
        return []
    out = []
    for e in entries:
        try:
            if hashlib.sha256((folder / e.file).read_bytes()).hexdigest() == e.sha256:
                out.append(e)
        except OSError:
            pass
    return out
