"""The results folder `results/<name>/`: what its files are called and hold, read back checked.

Every stage after the search reads the folder, never the search's code: the final evaluation,
the report, a resume. This module holds what they share: the file names, the phases and how a
trial's config names its phase, run.json (written by the search, checked when read), the ranking
of trials (`best_trial`), final.json's shape, and `SearchResult`. No torch, no Ray, no Optuna:
reading a folder needs none of them. The CSV tables have their own module, `tables`.

  config.yaml     the resolved config           run.json     search status, teacher, hardware
  search/         Ray Tune's experiment, both phases' trials
  trials.csv      every trial: config, status, final metrics (updated as trials end)
  progress.csv    every reported epoch of every trial, in the order they arrived
  optuna.db       the Optuna studies ("distill", "baseline")
  final.json      the final evaluation: each best setting retrained with K seeds, tested once
  report.md, summary.json, summary.csv, *.png    the report
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kdsearch import files
from kdsearch.config import KD_DIMENSIONS, Dimension, ExperimentConfig, load_config
from kdsearch.errors import UserError
from kdsearch.tables import TEXT_FIELDS, TRIALS_FILE, dim_column, parse_value

CONFIG_FILE = "config.yaml"
RUN_FILE = "run.json"
OPTUNA_FILE = "optuna.db"
FINAL_FILE = "final.json"
IMPORTANCES_FILE = "importances.json"  # which searched values mattered (optuna_study)
EXPERIMENT = "search"  # Ray Tune's experiment folder, both phases in one

PHASES = ("distill", "baseline")
PHASE_KEY = "phase"  # in a trial's config: the phase (search) it belongs to
PHASE_LABEL = {"distill": "distilled", "baseline": "baseline"}
DISTILLED, BASELINE = "distilled", "baseline"  # the kinds of final.json's rows
# trial statuses of a trial that will not run again; anything else (RUNNING, PENDING, PAUSED)
# means the search stopped while the trial was in flight
DONE_STATUSES = ("TERMINATED", "ERROR")
FINAL_FORMAT = 1


class SearchError(UserError, RuntimeError):
    """A search cannot start or continue: one line that says what to do."""


class ReportError(SearchError):
    """A results folder cannot be evaluated or reported: one line that says what to do."""


def write_json(path: Path, obj: Any) -> None:
    files.write_text(path, json.dumps(obj, indent=2, allow_nan=False) + "\n")


# --------------------------------------------------------------------------- phases
def phase_of(config: dict[str, Any]) -> str:
    """The phase a trial's config belongs to (set by the search's searcher)."""
    return config.get(PHASE_KEY, "distill")


def phase_dimensions(cfg: ExperimentConfig, phase: str) -> tuple[Dimension, ...]:
    """The dimensions a phase searches: the baseline drops temperature and alpha."""
    if phase == "baseline":
        return tuple(d for d in cfg.search.space if d.name not in KD_DIMENSIONS)
    return cfg.search.space


def phase_samples(cfg: ExperimentConfig, phase: str) -> int:
    """A phase's trial budget."""
    if phase == "baseline":
        return cfg.search.baseline_num_samples or cfg.search.num_samples
    return cfg.search.num_samples


def searched_widths(cfg: ExperimentConfig) -> list[int]:
    """Every student width the search can train (the config's width when it is not searched)."""
    for d in cfg.search.space:
        if d.name == "width":
            if d.values is not None:
                return [int(v) for v in d.values]
            return list(range(int(d.low), int(d.high) + 1, int(d.step or 1)))
    return [cfg.student.width]


def per_width(cfg: ExperimentConfig) -> bool:
    """search.per_width, where width is searched (without a searched width it changes nothing)."""
    return cfg.search.per_width and any(d.name == "width" for d in cfg.search.space)


def row_width(row: dict[str, Any], cfg: ExperimentConfig) -> int | None:
    """The student width a trial trained (the config's width when width was not searched)."""
    if not any(d.name == "width" for d in cfg.search.space):
        return cfg.student.width
    value = row.get("width")
    if value in (None, ""):
        return None
    return int(float(value))


def incomplete_trials(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Trials the search left in flight (status RUNNING, PENDING, PAUSED): a killed search."""
    return [r for r in rows if r.get("status") not in DONE_STATUSES]


# --------------------------------------------------------------------------- ranking
def best_trial(rows: list[dict[str, Any]], phase: str, dims: list[str]
               ) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """The best finished trial of `phase` (by `rank_key`): (its searched values, its row)."""
    ok = [r for r in rows if r.get("phase") == phase and r.get("status") == "TERMINATED"
          and not int(r.get("diverged") or 0) and r.get("val_acc") not in (None, "")]
    if not ok:
        return None
    top = max(ok, key=rank_key)
    return ({d: parse_value(top.get(dim_column(d))) for d in dims},
            {k: v if k in TEXT_FIELDS else parse_value(v) for k, v in top.items()})


def rank_key(row: dict[str, Any]) -> tuple[bool, float, float, float, str]:
    """How trials are ranked (the best is the largest): those that ran their full budget first;
    then the highest final val_acc; among equal val_acc (common: a val split of a few hundred
    examples moves in steps of 1/n) the lower val_loss, then the smaller student, then the
    trial id, so the pick never depends on the order trials ended in."""
    def number(key: str) -> float:
        try:
            v = float(row.get(key))  # type: ignore[arg-type]
        except (TypeError, ValueError):
            return math.inf
        return v if math.isfinite(v) else math.inf

    return (not int(row.get("stopped_early") or 0), float(row["val_acc"]), -number("val_loss"),
            -number("params"), str(row.get("trial_id") or ""))


def fmt_setting(v: Any) -> str:
    """A searched value as a status line shows it: floats to 3 significant digits."""
    if isinstance(v, float):
        return f"{v:.3g}"
    return str(v)


@dataclass
class SearchResult:
    """What a search found: the best settings, their metrics, and every trial as a table."""

    results_dir: Path
    best_config: dict[str, Any]
    best_metrics: dict[str, Any]
    baseline_config: dict[str, Any] | None
    baseline_metrics: dict[str, Any] | None
    report_path: Path | None = None

    @property
    def trials(self) -> Any:
        """All trials (distilled and baseline) as a pandas DataFrame."""
        import pandas as pd

        return pd.read_csv(self.results_dir / TRIALS_FILE, dtype=dict.fromkeys(TEXT_FIELDS, str))

    def summary_line(self) -> str:
        acc = self.best_metrics.get("val_acc")
        setting = ", ".join(f"{k}={fmt_setting(v)}" for k, v in self.best_config.items())
        line = f"best distilled: val_acc {float(acc):.4f} ({setting})"
        if self.baseline_metrics:
            line += f"; best baseline: val_acc {float(self.baseline_metrics['val_acc']):.4f}"
        line += f"; results in {self.results_dir}"
        if self.report_path:
            line += f"; report {self.report_path}"
        return line


# --------------------------------------------------------------------------- config.yaml
def read_config(results_dir: Path) -> ExperimentConfig:
    """The config a search ran with (its results folder's config.yaml), or a ReportError."""
    path = results_dir / CONFIG_FILE
    if not path.is_file():
        raise ReportError(f"{results_dir}: no {CONFIG_FILE}; pass the results folder of a search "
                          f"(results/<name>)")
    return load_config(path)


# --------------------------------------------------------------------------- run.json
def write_run(results_dir: Path, run: dict[str, Any]) -> None:
    files.write_text(results_dir / RUN_FILE, json.dumps(run, indent=2, default=str))


def search_state(run: dict[str, Any]) -> dict[str, Any]:
    """run.json's `search` entry: the status ("started", "finished") and wall time of the search,
    both phases in one. kdsearch before 2026-11-23 ran a Tuner per phase and kept them per phase
    under `phases`: such a search is finished when every phase is, and took their sum."""
    if "search" in run or not run.get("phases"):
        return run.get("search") or {}
    old = [v or {} for v in run["phases"].values()]
    return {"status": "finished" if all(v.get("status") == "finished" for v in old)
            else "started", "wall_seconds": sum(float(v.get("wall_seconds") or 0.0) for v in old)}


_NUMBER = ((int, float), "a number")
_RUN_SHAPE: dict[str, tuple[type | tuple[type, ...], str]] = {
    "storage_path": (str, "a path"), "storage_is_results_dir": (bool, "true or false"),
    "max_concurrent_trials": _NUMBER, "gpus_per_trial": _NUMBER,
    "search.status": (str, "a status"), "search.wall_seconds": _NUMBER,
    "search.started": _NUMBER, "search.finished": _NUMBER,
    "hardware.cpus": _NUMBER, "hardware.gpus": _NUMBER, "hardware.nodes": _NUMBER}


def check_run(run: Any, path: Path) -> dict[str, Any]:
    """run.json's contents with the types kdsearch reads from it checked, or a SearchError."""
    damaged = "kdsearch writes this file; restore it from a copy of the folder"
    if not isinstance(run, dict):
        raise SearchError(f"{path}: not a JSON object; {damaged}")
    for section in ("search", "hardware", "teacher", "phases"):
        if section in run and not isinstance(run[section], dict):
            raise SearchError(f"{path}: {section} = {_short(run[section])} is not an object; "
                              f"{damaged}")
    for phase, state in (run.get("phases") or {}).items():  # the older layout
        if not isinstance(state, dict) or not isinstance(state.get("wall_seconds", 0),
                                                         (int, float)):
            raise SearchError(f"{path}: phases.{phase} = {_short(state)} is not a phase's "
                              f"state; {damaged}")
    for key, (kinds, what) in _RUN_SHAPE.items():
        section, _, name = key.rpartition(".")
        holder = run.get(section) if section else run
        value = holder.get(name) if isinstance(holder, dict) else None
        if value is not None and (not isinstance(value, kinds) or (
                kinds is _NUMBER[0] and isinstance(value, bool))):
            raise SearchError(f"{path}: {key} = {_short(value)} is not {what}; {damaged}")
    return run


def _short(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def read_run(results_dir: Path) -> dict[str, Any]:
    """run.json, checked; a SearchError when there is none (not a search's folder)."""
    try:
        run = json.loads((results_dir / RUN_FILE).read_text())
    except (OSError, ValueError):
        raise SearchError(f"{results_dir}: no readable {RUN_FILE}; this is not a kdsearch "
                          f"results folder (pass results/<name> of a search)") from None
    return check_run(run, results_dir / RUN_FILE)


def read_run_if_any(results_dir: Path) -> dict[str, Any]:
    """run.json, checked, or {} when it cannot be read (a report still has trials.csv)."""
    try:
        run = json.loads((results_dir / RUN_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return check_run(run, results_dir / RUN_FILE)


def read_importances(results_dir: Path) -> dict[str, Any] | None:
    """importances.json (what mattered, written on the search's side), or None without one."""
    try:
        found = json.loads((Path(results_dir) / IMPORTANCES_FILE).read_text())
    except (OSError, ValueError):
        return None
    ok = isinstance(found, dict) and isinstance(found.get("groups"), list) and all(
        isinstance(g, dict) and isinstance(g.get("trials"), int)
        and isinstance(g.get("importances"), (dict, type(None))) for g in found["groups"])
    return found if ok else None


# --------------------------------------------------------------------------- final.json
def read_final(results_dir: Path) -> dict[str, Any] | None:
    """final.json if it is there, of this format and well formed; else None (retrain it)."""
    try:
        final = json.loads((Path(results_dir) / FINAL_FILE).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(final, dict) or final.get("format") != FINAL_FORMAT:
        return None
    return final if _well_formed(final) else None  # a damaged file: retrain what it held


def _well_formed(final: dict[str, Any]) -> bool:
    """final.json holds what evaluate_final reuses and the report reads, with those types."""
    def number(v: Any, optional: bool = False) -> bool:
        if v is None:
            return optional
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

    def count(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and v >= 0

    seeds, teacher, rows = final.get("seeds"), final.get("teacher"), final.get("rows")
    if not (isinstance(seeds, list) and all(count(x) for x in seeds) and isinstance(rows, list)):
        return False
    # (params null: a teacher known by its logits alone, teacher.logits)
    if teacher is not None and not (isinstance(teacher, dict)
                                    and (count(teacher.get("params"))
                                         or teacher.get("params") is None)
                                    and number(teacher.get("test_acc"), True)
                                    and number(teacher.get("val_acc"), True)):
        return False
    data = final.get("data")
    if data is not None and not (isinstance(data, dict) and all(count(v) for v in data.values())):
        return False
    for r in rows:
        if not (isinstance(r, dict) and r.get("kind") in (DISTILLED, BASELINE)
                and isinstance(r.get("tuned"), bool) and isinstance(r.get("best"), bool)
                and isinstance(r.get("trial_id"), (str, type(None)))
                and number(r.get("val_acc"), True)
                and (r.get("search_epochs") is None or count(r.get("search_epochs")))
                and count(r.get("width")) and count(r.get("params")) and count(r.get("epochs"))
                and isinstance(r.get("settings"), dict) and isinstance(r.get("spec"), dict)
                and number(r.get("alpha")) and number(r.get("mean"), True)
                and number(r.get("std"), True) and count(r.get("diverged"))
                and isinstance(r.get("test_accs"), list) and len(r["test_accs"]) == len(seeds)
                and all(number(a, True) for a in r["test_accs"])):
            return False
        errors = r.get("errors")  # absent from final.json written before it was kept
        if errors is not None and not (isinstance(errors, list) and len(errors) == len(seeds)
                                       and all(isinstance(e, (str, type(None))) for e in errors)):
            return False
        packed = r.get("test_correct")  # (the same)
        if packed is not None and not (
                isinstance(packed, list) and len(packed) == len(seeds)
                and all((p is None) == (a is None) and (p is None or isinstance(p, str))
                        for p, a in zip(packed, r["test_accs"]))):
            return False
    return True
