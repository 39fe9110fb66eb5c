"""The final evaluation's records, typed, written and read back checked: final.json
(`FinalRecord`, `FinalRow`) and latency.json (`LatencyRecord`).

The final evaluation writes final.json; the summary, the plots and the report read it, and a
later final evaluation reuses its rows. A file that is not of this format, or not well formed,
reads as None, and the next final evaluation retrains what it held. Rows written by older
kdsearch versions lack some fields (`errors`, `test_correct`, `macs`, ...): they read as None.
latency.json holds each retrained student's measured latency (`latency`). No torch, no Ray.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kdsearch import files
from kdsearch.fields import LOSSES
from kdsearch.tables import KINDS

FINAL_FILE = "final.json"
FINAL_FORMAT = 1
LATENCY_FILE = "latency.json"
LATENCY_FORMAT = 1


@dataclass(frozen=True)
class FinalRow:
    """One best setting of one kind and width, retrained with every seed, tested once."""

    kind: str  # DISTILLED or BASELINE
    tuned: bool  # False: a baseline nobody searched for (the distilled setting, alpha = 1)
    best: bool  # the best setting of its kind over all widths
    width: int
    params: int
    settings: dict[str, Any]  # the searched values the search picked
    epochs: int  # the epochs each retraining ran
    alpha: float
    trial_id: str | None  # the search trial the setting comes from
    val_acc: float | None  # that trial's last validation accuracy
    search_epochs: int | None  # the epochs that trial ran
    seeds: list[int]
    test_accs: list[float | None]  # per seed; None: it diverged or failed (see `errors`)
    # per seed, which test examples it got right (`stats.pack_correct`). None for a seed
    # without an accuracy, and for a row of an older final.json, which has none.
    test_correct: list[str | None] | None
    final_val_accs: list[float | None] | None  # per seed, its last validation accuracy
    mean: float | None  # of the seeds' test accuracies
    std: float | None  # sample standard deviation; None with one accuracy
    # per seed: None, "diverged", or the failure (out of GPU memory); None: an older row
    errors: list[str | None] | None
    diverged: int  # seeds whose loss diverged
    failed: int | None  # seeds that failed otherwise
    workers: list[str] | None  # per seed, host:pid of the process that trained it
    seconds: float | None  # training time, summed over the seeds
    spec: dict[str, Any]  # everything the retrained models depend on but the seeds
    macs: int | None = None  # multiply-accumulates of one example's forward pass
    loss: str | None = None  # the distillation loss (None in an older row, which means kd)
    # True: a loss's best setting, retrained only to compare the losses (see selection)
    extra: bool = False

    def accuracies(self) -> list[float]:
        """The test accuracies of the seeds that have one."""
        return [a for a in self.test_accs if a is not None]

    def seed_errors(self) -> list[str]:
        """Why each seed without an accuracy has none (an older row: every one diverged)."""
        errors = self.errors or [None if a is not None else "diverged" for a in self.test_accs]
        return [e for e in errors if e is not None]

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, row: dict[str, Any]) -> FinalRow:
        return cls(**{f.name: row.get(f.name, f.default) if f.default is not dataclasses.MISSING
                      else row.get(f.name) for f in dataclasses.fields(cls)})


@dataclass(frozen=True)
class TeacherResult:
    """The teacher, tested once on the test split (all None but model and key for a teacher
    known only by its logits)."""

    model: str
    key: str
    params: int | None
    val_acc: float | None
    test_acc: float | None
    # which test examples it got right (`stats.pack_correct`); None for an older final.json
    test_correct: str | None = None


@dataclass(frozen=True)
class DataSizes:
    """The examples in each split."""

    train: int
    val: int
    test: int


@dataclass(frozen=True)
class FinalRecord:
    """final.json: the whole final evaluation of a results folder."""

    kdsearch_version: str
    name: str
    created: float
    device: str  # where the retrainings ran ("cpu", "cuda", "cpu+cuda")
    seeds: list[int]
    seconds: float  # the final evaluation's wall time
    retrained: int  # models trained now
    reused: int  # settings reused from an earlier final.json
    reused_training_seconds: float | None  # their training time then, summed over seeds
    data: DataSizes | None
    teacher: TeacherResult | None
    # the sha256 of teacher.checkpoint / teacher.logits the retrainings are of, where set
    teacher_files: dict[str, str] | None
    student_model: str
    baseline_tuned: bool  # a baseline search ran and has a finished trial
    baseline_note: str  # why the baseline is untuned; "" when it is tuned
    rows: list[FinalRow]

    def best_row(self, kind: str) -> FinalRow | None:
        """The best setting of `kind` over all widths."""
        return next((r for r in self.rows if r.best and r.kind == kind), None)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"format": FINAL_FORMAT}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "teacher_files" and not value:
                continue  # (absent when there are no teacher files)
            if f.name == "rows":
                value = [r.to_json() for r in value]
            elif dataclasses.is_dataclass(value):
                value = dataclasses.asdict(value)
            out[f.name] = value
        return out

    @classmethod
    def from_json(cls, final: dict[str, Any]) -> FinalRecord:
        data, teacher = final.get("data"), final.get("teacher")
        return cls(kdsearch_version=str(final.get("kdsearch_version") or ""),
                   name=str(final.get("name") or ""), created=final.get("created") or 0.0,
                   device=str(final.get("device") or ""), seeds=list(final["seeds"]),
                   seconds=final.get("seconds") or 0.0,
                   retrained=final.get("retrained") or 0, reused=final.get("reused") or 0,
                   reused_training_seconds=final.get("reused_training_seconds"),
                   data=DataSizes(**data) if data else None,
                   teacher=TeacherResult(**{f.name: teacher.get(f.name) for f in
                                            dataclasses.fields(TeacherResult)})
                   if teacher else None,
                   teacher_files=final.get("teacher_files"),
                   student_model=str(final.get("student_model") or ""),
                   baseline_tuned=bool(final.get("baseline_tuned", True)),
                   baseline_note=str(final.get("baseline_note") or ""),
                   rows=[FinalRow.from_json(r) for r in final["rows"]])


def write_final(results_dir: Path, final: FinalRecord) -> None:
    """final.json, written atomically."""
    files.write_json(Path(results_dir) / FINAL_FILE, final.to_json())


def read_final(results_dir: Path) -> FinalRecord | None:
    """final.json if it is there, of this format and well formed; else None (retrain it)."""
    try:
        final = json.loads((Path(results_dir) / FINAL_FILE).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(final, dict) or final.get("format") != FINAL_FORMAT:
        return None
    if not _well_formed(final):
        return None  # a damaged file: retrain what it held
    return FinalRecord.from_json(final)


def _number(v: Any, optional: bool = False) -> bool:
    if v is None:
        return optional
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _count(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _well_formed(final: dict[str, Any]) -> bool:
    """final.json holds what the final evaluation reuses and the report reads, with those
    types."""
    seeds, teacher, rows = final.get("seeds"), final.get("teacher"), final.get("rows")
    if not (isinstance(seeds, list) and all(_count(x) for x in seeds) and isinstance(rows, list)):
        return False
    if not (all(_number(final.get(k), True) for k in ("created", "seconds",
                                                       "reused_training_seconds"))
            and all(final.get(k) is None or _count(final.get(k)) for k in ("retrained", "reused"))
            and isinstance(final.get("teacher_files") or {}, dict)):
        return False
    if teacher is not None and not _teacher_ok(teacher):
        return False
    data = final.get("data")
    if data is not None and not (isinstance(data, dict) and set(data) == {"train", "val", "test"}
                                 and all(_count(v) for v in data.values())):
        return False
    return all(isinstance(r, dict) and _row_ok(r, len(seeds)) for r in rows)


def _teacher_ok(teacher: Any) -> bool:
    # (params null: a teacher known by its logits alone, teacher.logits)
    return (isinstance(teacher, dict)
            and set(teacher) <= {f.name for f in dataclasses.fields(TeacherResult)}
            and isinstance(teacher.get("model", ""), str)
            and isinstance(teacher.get("key", ""), str)
            and (_count(teacher.get("params")) or teacher.get("params") is None)
            and _number(teacher.get("test_acc"), True) and _number(teacher.get("val_acc"), True)
            and isinstance(teacher.get("test_correct"), (str, type(None))))


def seeds_of(n_seeds: int, r: dict[str, Any]) -> Any:
    """A row's seeds as they must be: a list of n_seeds whole numbers (its own, if it is one)."""
    seeds = r.get("seeds")
    ok = isinstance(seeds, list) and len(seeds) == n_seeds and all(_count(x) for x in seeds)
    return seeds if ok else object()


def _row_ok(r: dict[str, Any], n_seeds: int) -> bool:
    if not (r.get("kind") in KINDS and isinstance(r.get("tuned"), bool)
            and isinstance(r.get("best"), bool)
            and isinstance(r.get("trial_id"), (str, type(None)))
            and _number(r.get("val_acc"), True)
            and (r.get("search_epochs") is None or _count(r.get("search_epochs")))
            and _count(r.get("width")) and _count(r.get("params")) and _count(r.get("epochs"))
            and isinstance(r.get("settings"), dict) and isinstance(r.get("spec"), dict)
            and _number(r.get("alpha")) and _number(r.get("mean"), True)
            and _number(r.get("std"), True) and _count(r.get("diverged"))
            and (r.get("macs") is None or _count(r.get("macs")))
            and r.get("loss", "kd") in LOSSES + (None,)
            and isinstance(r.get("extra", False), bool)
            and isinstance(r.get("test_accs"), list) and len(r["test_accs"]) == n_seeds
            and all(_number(a, True) for a in r["test_accs"])):
        return False
    if not (r.get("seeds") is None or r.get("seeds") == seeds_of(n_seeds, r)):
        return False
    if not (_number(r.get("seconds"), True) and (r.get("failed") is None or _count(r["failed"]))):
        return False
    for key, ok in (("workers", lambda x: isinstance(x, str)),
                    ("final_val_accs", lambda x: _number(x, True))):
        value = r.get(key)
        if value is not None and not (isinstance(value, list) and len(value) == n_seeds
                                      and all(ok(x) for x in value)):
            return False
    errors = r.get("errors")  # absent from an older final.json
    if errors is not None and not (isinstance(errors, list) and len(errors) == n_seeds
                                   and all(isinstance(e, (str, type(None))) for e in errors)):
        return False
    packed = r.get("test_correct")  # (the same)
    if packed is not None and not (
            isinstance(packed, list) and len(packed) == n_seeds
            and all((p is None) == (a is None) and (p is None or isinstance(p, str))
                    for p, a in zip(packed, r["test_accs"]))):
        return False
    return True


# --------------------------------------------------------------------------- latency.json
@dataclass(frozen=True)
class Timing:
    """One student's measured latency: the median time of a forward pass in eval mode."""

    kind: str
    width: int
    seed: int  # the retraining whose saved weights were timed
    batch1_ms: float  # one example
    batch_ms: float  # a batch of `LatencyRecord.batch` examples
    repeats: int  # timed calls of one example, after the warm-up
    spread: float  # (slowest - fastest) / median of the batch-1 calls, a noise measure

    def throughput(self, batch: int) -> float:
        """Examples a second at the large batch (`LatencyRecord.batch`)."""
        return 0.0 if self.batch_ms <= 0 else batch * 1000.0 / self.batch_ms


@dataclass(frozen=True)
class LatencyRecord:
    """latency.json: where and how the students were timed, and each one's timing."""

    device: str  # "cpu" or "cuda", with the GPU's name
    threads: int  # torch's intra-op threads
    torch: str
    host: str
    created: float
    batch: int  # the throughput batch
    warmup: int  # calls before the timed ones
    timings: list[Timing]

    def of(self, kind: str, width: int) -> Timing | None:
        return next((t for t in self.timings if t.kind == kind and t.width == width), None)

    def to_json(self) -> dict[str, Any]:
        out = {"format": LATENCY_FORMAT, **dataclasses.asdict(self)}
        return out

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> LatencyRecord:
        timings = [Timing(**t) for t in d["timings"]]
        return cls(**{**{k: d[k] for k in ("device", "threads", "torch", "host", "created",
                                           "batch", "warmup")}, "timings": timings})


def write_latency(results_dir: Path, record: LatencyRecord) -> None:
    """latency.json, written atomically."""
    files.write_json(Path(results_dir) / LATENCY_FILE, record.to_json())


def read_latency(results_dir: Path) -> LatencyRecord | None:
    """latency.json if it is there and whole, else None (the report says it was not timed)."""
    try:
        d = json.loads((Path(results_dir) / LATENCY_FILE).read_text())
        if d.get("format") != LATENCY_FORMAT:
            return None
        record = LatencyRecord.from_json(d)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    ok = all(t.kind in KINDS and _count(t.width) and _number(t.batch1_ms) and _number(t.batch_ms)
             for t in record.timings)
    return record if ok else None
