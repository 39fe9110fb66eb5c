"""The results folder's CSV tables, trials.csv and progress.csv: their columns, written
atomically, and read back with every cell checked.

kdsearch writes these tables itself, but they are plain files that a user can open, edit or
damage, and `kdsearch report` and `kdsearch resume` read them back. A value that is not what the
column holds (a word where a number goes, a NaN accuracy, bytes that are not text) is reported in
one line that names the file, the line, the column and the value, instead of surfacing later as
a traceback in whatever code first uses it. No torch, no Ray.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any, Callable

from kdsearch import files
from kdsearch.errors import UserError

TRIALS_FILE = "trials.csv"
PROGRESS_FILE = "progress.csv"

# trials.csv: these columns first, then each searched dimension's
TRIAL_FIELDS = ("phase", "trial_id", "status", "stopped_early", "diverged", "error", "epochs",
                "epoch_budget",
                "val_acc", "best_val_acc", "val_loss", "train_loss", "training_seconds",
                "params", "node", "gpu_ids")
# "epochs" in trials.csv is the epochs a trial ran; a searched `epochs` (its budget) goes to
# "epoch_budget", which every trial has
EPOCH_BUDGET = "epoch_budget"
# columns that hold text even when they look like numbers: Tune's trial ids are 8 hex digits, so
# "76e61933" would read as a float (inf) and "01234567" as an int without its leading 0
TEXT_FIELDS = frozenset({"phase", "trial_id", "status", "error", "node", "gpu_ids"})
PROGRESS_FIELDS = ("phase", "trial_id", "epoch", "val_acc", "val_loss", "train_loss",
                   "epoch_seconds", "wall_time")


def dim_column(name: str) -> str:
    """The trials.csv column that holds the searched dimension `name`."""
    return EPOCH_BUDGET if name == "epochs" else name


def parse_value(v: Any) -> Any:
    """A cell as the number it holds (int, else float), else as it is."""
    if not isinstance(v, str):
        return v
    for cast in (int, float):
        try:
            return cast(v)
        except ValueError:
            pass
    return v


def write_table(path: Path, rows: list[dict[str, Any]],
                first_fields: tuple[str, ...] = TRIAL_FIELDS) -> None:
    """`rows` as a CSV file (atomically): `first_fields`, then any other key in row order."""
    fields: list[str] = list(first_fields)
    for r in rows:
        for k in r:
            if k not in fields:
                fields.append(k)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if v is None else v) for k, v in r.items()})
    files.write_text(path, buf.getvalue())


class TableError(UserError, ValueError):
    """A results table that kdsearch cannot read back."""


def _number(finite: bool) -> Callable[[str], bool]:
    def check(v: str) -> bool:
        x = float(v)
        return math.isfinite(x) or not finite

    return check


def _integer(v: str) -> bool:
    x = float(v)
    return math.isfinite(x) and x.is_integer() and x >= 0


def _flag(v: str) -> bool:
    return v in ("0", "1")


TRIAL_STATUSES = ("PENDING", "RUNNING", "PAUSED", "TERMINATED", "ERROR")  # Ray Tune's

# column -> (check, what it holds); empty cells are allowed (not yet known, not searched)
_FINITE = (_number(True), "a finite number")
_ANY = (_number(False), "a number")
_COUNT = (_integer, "a whole number >= 0")
_FLAG = (_flag, "0 or 1")
COLUMNS: dict[str, tuple[Callable[[str], bool], str]] = {
    "stopped_early": _FLAG, "diverged": _FLAG, "epochs": _COUNT, "epoch_budget": _COUNT,
    "epoch": _COUNT, "val_acc": _FINITE, "best_val_acc": _FINITE,
    "val_loss": _ANY, "train_loss": _ANY,  # a diverged trial's loss is NaN or inf
    "training_seconds": _FINITE, "epoch_seconds": _FINITE, "wall_time": _FINITE,
    "params": _COUNT, "temperature": _FINITE, "alpha": _FINITE, "lr": _FINITE,
    "weight_decay": _FINITE, "width": _COUNT, "batch_size": _COUNT,
    # a misspelt status would count a finished trial as interrupted
    "status": (lambda v: v in TRIAL_STATUSES, "one of " + ", ".join(TRIAL_STATUSES)),
    "phase": (lambda v: v in ("distill", "baseline"), "distill or baseline")}
REQUIRED = ("phase", "trial_id", "status")
REQUIRED_PROGRESS = ("phase", "trial_id", "epoch")


def read_table(path: Path, required: tuple[str, ...] | None = None) -> list[dict[str, str]]:
    """The rows of a results table ([] when the file is missing), or a TableError. The columns
    every row needs: `required`, else progress.csv's or trials.csv's by the file's name."""
    if required is None:
        required = REQUIRED_PROGRESS if path.name == PROGRESS_FILE else REQUIRED
    if not path.exists():
        return []
    damaged = ("kdsearch writes this file; restore it from a copy of the folder, or run the "
               "search again")
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            rows = list(reader)
            header = reader.fieldnames or []
    except UnicodeDecodeError as e:
        raise TableError(f"{path}: not UTF-8 text (byte {e.start}); {damaged}") from None
    except (OSError, csv.Error) as e:
        why = getattr(e, "strerror", None) or str(e)
        raise TableError(f"{path}: cannot be read ({why}); {damaged}") from None
    if rows:
        missing = [c for c in required if c not in header]
        if missing:
            raise TableError(f"{path}: no column {', '.join(missing)}; {damaged}")
    for line, row in enumerate(rows, start=2):  # line 1 is the header
        if None in row:  # more cells than the header has
            raise TableError(f"{path}: line {line} has more cells than the header; {damaged}")
        for col in required:
            if not row.get(col):
                raise TableError(f"{path}: line {line}: {col} is empty; {damaged}")
        for col, (check, what) in COLUMNS.items():
            value = row.get(col)
            if value in (None, ""):
                continue
            try:
                ok = check(value)
            except ValueError:
                ok = False
            if not ok:
                raise TableError(f"{path}: line {line}: {col} = {value[:40]!r} is not {what}; "
                                 f"{damaged}")
    return rows
