"""The results folder's CSV tables, trials.csv and progress.csv: their columns, the typed row of
trials.csv (`TrialRow`), written atomically, and read back with every cell checked.

kdsearch writes these tables itself, but they are plain files that a user can open, edit or
damage, and `kdsearch report` and `kdsearch resume` read them back. A value that is not what the
column holds (a word where a number goes, a NaN accuracy, bytes that are not text) is reported in
one line that names the file, the line, the column and the value. It does not surface later as
a traceback in whatever code first uses it. No torch, no Ray.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from kdsearch import files
from kdsearch.errors import UserError

TRIALS_FILE = "trials.csv"
PROGRESS_FILE = "progress.csv"

# The two kinds of student a search tunes and a report compares: the student distilled from the
# teacher, and the student trained alone (alpha = 1), the baseline.
DISTILLED, BASELINE = "distilled", "baseline"
KINDS = (DISTILLED, BASELINE)
# The `phase` column of the tables, a trial's config and optuna.db's study names call the
# distilled search "distill". Files written by every kdsearch version use these values.
PHASE = {DISTILLED: "distill", BASELINE: "baseline"}
KIND_OF_PHASE = {phase: kind for kind, phase in PHASE.items()}

# Ray Tune's trial statuses. A trial that ended has TERMINATED (it returned, ran its budget,
# was stopped early by ASHA, or diverged) or ERROR (it raised). Any other status means the
# search stopped while the trial was in flight.
PENDING, RUNNING, PAUSED, TERMINATED, ERROR = "PENDING", "RUNNING", "PAUSED", "TERMINATED", "ERROR"
TRIAL_STATUSES = (PENDING, RUNNING, PAUSED, TERMINATED, ERROR)
ENDED = (TERMINATED, ERROR)

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


def kind_of(phase: str) -> str:
    """The kind of student a phase value (a table's `phase` column, a trial config's) trains."""
    return KIND_OF_PHASE[phase]


# --------------------------------------------------------------------------- a trial's row
@dataclass(frozen=True)
class TrialRow:
    """One trial of the search, as trials.csv records it."""

    kind: str  # DISTILLED or BASELINE
    trial_id: str
    status: str  # one of TRIAL_STATUSES
    stopped_early: bool = False  # ASHA stopped it before its epoch budget
    diverged: bool = False  # its loss became NaN or infinite
    error: str = ""  # why it failed or diverged
    epochs: int = 0  # the epochs it ran
    epoch_budget: int | None = None  # the epochs it was given (searched, or training.epochs)
    val_acc: float | None = None  # at its last epoch
    best_val_acc: float | None = None
    val_loss: float | None = None
    train_loss: float | None = None
    training_seconds: float | None = None
    params: int | None = None  # the student's parameter count
    node: str = ""
    gpu_ids: str = ""
    # every other column: the searched values by dimension name (a searched `epochs` is
    # `epoch_budget`)
    values: Mapping[str, Any] = field(default_factory=dict)

    @property
    def ended(self) -> bool:
        """The trial will not run again: it ended, well or not."""
        return self.status in ENDED

    @property
    def completed(self) -> bool:
        """The trial's function returned (status TERMINATED): it ran its budget, ASHA stopped
        it, or it diverged."""
        return self.status == TERMINATED

    @property
    def ended_ok(self) -> bool:
        """The trial ended with a validation accuracy: it did not raise and did not diverge."""
        return self.completed and not self.diverged and self.val_acc is not None

    @property
    def failed(self) -> bool:
        """The trial raised (status ERROR)."""
        return self.status == ERROR

    def value(self, name: str) -> Any:
        """The trial's value of the searched dimension `name` (None when it has none)."""
        return self.epoch_budget if name == "epochs" else self.values.get(name)

    def width(self, fixed: int) -> int | None:
        """The student width the trial trained: its searched width, else `fixed` (the config's
        width, when width is not searched). None: a searched width the row lacks."""
        if "width" not in self.values:
            return fixed
        return None if self.values["width"] is None else int(self.values["width"])

    def metrics(self) -> dict[str, Any]:
        """The row as plain values, by column name (`SearchResult.best_metrics`)."""
        return {k: v for k, v in self.to_csv().items()}

    def to_csv(self) -> dict[str, Any]:
        """The row's cells by column, in trials.csv's order (None: an empty cell)."""
        out: dict[str, Any] = {"phase": PHASE[self.kind]}
        for name in TRIAL_FIELDS[1:]:
            out[name] = getattr(self, name)
        out["stopped_early"], out["diverged"] = int(self.stopped_early), int(self.diverged)
        out.update(self.values)
        return out

    @classmethod
    def from_csv(cls, cells: Mapping[str, str]) -> TrialRow:
        """A checked row of trials.csv (see `read_table`) as a TrialRow."""
        def number(name: str, cast: Callable[[Any], Any] = float) -> Any:
            v = cells.get(name)
            return None if v in (None, "") else cast(float(v))

        return cls(kind=kind_of(cells["phase"]), trial_id=cells["trial_id"],
                   status=cells["status"],
                   stopped_early=cells.get("stopped_early") == "1",
                   diverged=cells.get("diverged") == "1",
                   error=cells.get("error") or "",
                   epochs=number("epochs", int) or 0, epoch_budget=number(EPOCH_BUDGET, int),
                   val_acc=number("val_acc"), best_val_acc=number("best_val_acc"),
                   val_loss=number("val_loss"), train_loss=number("train_loss"),
                   training_seconds=number("training_seconds"), params=number("params", int),
                   node=cells.get("node") or "", gpu_ids=cells.get("gpu_ids") or "",
                   values={k: None if v in (None, "") else parse_value(v)
                           for k, v in cells.items() if k not in TRIAL_FIELDS})


def read_trials(path: Path) -> list[TrialRow]:
    """trials.csv's rows, checked (`read_table`), as TrialRows ([] without the file)."""
    return [TrialRow.from_csv(cells) for cells in read_table(path)]


def write_trials(path: Path, rows: Iterable[TrialRow]) -> None:
    """trials.csv, written atomically from `rows`."""
    write_table(path, [r.to_csv() for r in rows])


def in_flight(rows: Iterable[TrialRow]) -> list[TrialRow]:
    """The trials a search left in flight (RUNNING, PENDING, PAUSED): a killed search."""
    return [r for r in rows if not r.ended]


# --------------------------------------------------------------------------- writing
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


# --------------------------------------------------------------------------- reading
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
    "phase": (lambda v: v in KIND_OF_PHASE, " or ".join(KIND_OF_PHASE))}
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
