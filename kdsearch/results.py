"""The results folder `results/<name>/`: what its files are called and hold, read back checked.

Every stage after the search reads the folder, never the search's code: the final evaluation,
the report, a resume. This module holds what they share: the file names, the two kinds of
student and what each searches, run.json (written by the search, checked when read), and the
ranking of trials (`best_trial`). Reading a folder needs no torch, no Ray and no Optuna, so this
module imports none of them. The CSV tables have their own module, `tables`. final.json has
`final_record`.

  config.yaml     the resolved config           run.json     search status, teacher, hardware
  search/         Ray Tune's experiment: the trials of both kinds
  trials.csv      every trial: config, status, final metrics (updated as trials end)
  progress.csv    every reported epoch of every trial, in the order they arrived
  optuna.db       the Optuna studies ("distill", "baseline")
  final.json      the final evaluation: each best setting retrained with K seeds, tested once
  students/       the retrained students' weights, and index.json
  report.md, summary.json, summary.csv, *.png    the report
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Iterable

from kdsearch import files
from kdsearch.config import (KD_DIMENSIONS, LOSS_PARAMS, Dimension, ExperimentConfig, load_config,
                             losses_of)
from kdsearch.errors import UserError
from kdsearch.tables import BASELINE, DISTILLED, KINDS, PHASE, TrialRow, kind_of

CONFIG_FILE = "config.yaml"
RUN_FILE = "run.json"
OPTUNA_FILE = "optuna.db"
IMPORTANCES_FILE = "importances.json"  # which searched values mattered (optuna_study)
EXPERIMENT = "search"  # Ray Tune's experiment folder: the trials of both kinds
KIND_KEY = "phase"  # the key of a trial's config that names its kind (as tables.PHASE)


class SearchError(UserError, RuntimeError):
    """A search cannot start or continue. The one-line message says what to do."""


class ReportError(SearchError):
    """A results folder cannot be evaluated or reported. The one-line message says what to do."""


# --------------------------------------------------------------------------- the two kinds
def searched_kinds(cfg: ExperimentConfig) -> list[str]:
    """Return the kinds of student the search tunes: distilled, and the baseline unless off."""
    return [k for k in KINDS if k == DISTILLED or cfg.search.baseline]


def kind_of_config(config: dict[str, Any]) -> str:
    """Return the kind of student a trial's config trains (its `phase` key)."""
    return kind_of(config.get(KIND_KEY, PHASE[DISTILLED]))


def config_of_kind(kind: str) -> dict[str, str]:
    """Return the entry that a trial's config holds to name its kind."""
    return {KIND_KEY: PHASE[kind]}


def dimensions(cfg: ExperimentConfig, kind: str, loss: str | None = None
               ) -> tuple[Dimension, ...]:
    """Return the dimensions that the search of `kind` searches.

    The baseline drops temperature, alpha and the losses' parameters. A trial of `loss` has
    that loss's own parameters and no other loss's."""
    if kind == BASELINE:
        return tuple(d for d in cfg.search.space if d.name not in KD_DIMENSIONS)
    if loss is None:
        return cfg.search.space
    others = {p for name, params in LOSS_PARAMS.items() if name != loss for p in params}
    return tuple(d for d in cfg.search.space if d.name not in others)


def dimension_names(cfg: ExperimentConfig, kind: str, loss: str | None = None) -> list[str]:
    """Return the names of `dimensions(cfg, kind, loss)`."""
    return [d.name for d in dimensions(cfg, kind, loss)]


def loss_searched(cfg: ExperimentConfig) -> bool:
    """Return whether more than one loss is searched. Each is then tuned on its own."""
    return len(losses_of(cfg)) > 1


def trial_budget(cfg: ExperimentConfig, kind: str) -> int:
    """Return how many trials the search of `kind` runs."""
    if kind == BASELINE:
        return cfg.search.baseline_num_samples or cfg.search.num_samples
    return cfg.search.num_samples


def searched_widths(cfg: ExperimentConfig) -> list[int]:
    """Return every student width the search can train (the config's width if not searched)."""
    for d in cfg.search.space:
        if d.name == "width":
            if d.values is not None:
                return [int(v) for v in d.values]
            return list(range(int(d.low), int(d.high) + 1, int(d.step or 1)))
    return [cfg.student.width]


def width_searched(cfg: ExperimentConfig) -> bool:
    """Return whether the search space has a width dimension."""
    return any(d.name == "width" for d in cfg.search.space)


def per_width(cfg: ExperimentConfig) -> bool:
    """Return search.per_width when width is searched, else False (it then changes nothing)."""
    return cfg.search.per_width and width_searched(cfg)


def row_width(row: TrialRow, cfg: ExperimentConfig) -> int | None:
    """Return the student width a trial trained (the config's width if width was not searched)."""
    if not width_searched(cfg):
        return cfg.student.width
    return row.width(cfg.student.width)


# --------------------------------------------------------------------------- ranking
def best_trial(rows: Iterable[TrialRow], kind: str, dims: list[str]
               ) -> tuple[dict[str, Any], TrialRow] | None:
    """Return the best trial of `kind` that ended with a val_acc, by `rank_key`, or None.

    The result is (its searched values, its row)."""
    ok = [r for r in rows if r.kind == kind and r.ended_ok]
    if not ok:
        return None
    top = max(ok, key=rank_key)
    # a loss's own parameters are absent from the trials of other losses
    return {d: top.value(d) for d in dims if top.value(d) is not None}, top


def rank_key(row: TrialRow) -> tuple[bool, float, float, float, str]:
    """Return the key that trials are ranked by. The best trial has the largest key.

    Trials that ran their full budget come first. Then the highest final val_acc wins. Equal
    val_acc is common, since a val split of a few hundred examples moves in steps of 1/n. Among
    equal val_acc, the lower val_loss wins, then the smaller student, then the trial id. So the
    pick never depends on the order in which trials ended."""
    def low(v: float | None) -> float:
        return -v if v is not None and math.isfinite(v) else -math.inf

    assert row.val_acc is not None
    return (not row.stopped_early, row.val_acc, low(row.val_loss),
            low(None if row.params is None else float(row.params)), row.trial_id)


def fmt_setting(v: Any) -> str:
    """Return a searched value as a status line shows it: floats to 3 significant digits."""
    if isinstance(v, float):
        return f"{v:.3g}"
    return str(v)


# --------------------------------------------------------------------------- config.yaml
def read_config(results_dir: Path) -> ExperimentConfig:
    """Return the config a search ran with (its results folder's config.yaml).

    Raise ReportError when the folder has no config.yaml."""
    path = results_dir / CONFIG_FILE
    if not path.is_file():
        raise ReportError(f"{results_dir}: no {CONFIG_FILE}; pass the results folder of a search "
                          f"(results/<name>)")
    return load_config(path)


# --------------------------------------------------------------------------- run.json
def write_run(results_dir: Path, run: dict[str, Any]) -> None:
    """Write `run` to the folder's run.json, atomically."""
    files.write_text(results_dir / RUN_FILE, json.dumps(run, indent=2, default=str))


def search_state(run: dict[str, Any]) -> dict[str, Any]:
    """Return run.json's `search` entry: the search's status ("started", "finished") and time.

    The entry covers both phases in one. An older run.json has no `search` entry. It keeps a
    state per phase under `phases` instead. Such a search is finished when every phase is, and
    its wall time is the sum of theirs."""
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
    "search.started": _NUMBER, "search.finished": _NUMBER, "search.run_started": _NUMBER,
    "search.elapsed_seconds": _NUMBER,
    "hardware.cpus": _NUMBER, "hardware.gpus": _NUMBER, "hardware.nodes": _NUMBER}


def check_run(run: Any, path: Path) -> dict[str, Any]:
    """Return run.json's contents after checking the types that kdsearch reads from it.

    Raise SearchError when a type is wrong."""
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
    """Return run.json, checked. Raise SearchError when there is none (not a search's folder)."""
    try:
        run = json.loads((results_dir / RUN_FILE).read_text())
    except (OSError, ValueError):
        raise SearchError(f"{results_dir}: no readable {RUN_FILE}; this is not a kdsearch "
                          f"results folder (pass results/<name> of a search)") from None
    return check_run(run, results_dir / RUN_FILE)


def read_run_if_any(results_dir: Path) -> dict[str, Any]:
    """Return run.json, checked, or {} when it cannot be read (a report still has trials.csv)."""
    try:
        run = json.loads((results_dir / RUN_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return check_run(run, results_dir / RUN_FILE)


def read_importances(results_dir: Path) -> dict[str, Any] | None:
    """Return importances.json (what mattered, written on the search's side), or None.

    None also stands for a file of the wrong shape."""
    try:
        found = json.loads((Path(results_dir) / IMPORTANCES_FILE).read_text())
    except (OSError, ValueError):
        return None
    ok = isinstance(found, dict) and isinstance(found.get("groups"), list) and all(
        isinstance(g, dict) and isinstance(g.get("trials"), int)
        and isinstance(g.get("importances"), (dict, type(None))) for g in found["groups"])
    return found if ok else None
