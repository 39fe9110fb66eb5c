"""What mattered: which searched values the val_acc depended on, per kind, width and loss.

The importances come from `optuna.importance.get_param_importances` (its default evaluator,
PED-ANOVA). They are computed over the trials of a kind of student, as trials.csv and
progress.csv record them. With search.per_width they are also computed per width, and per loss
when several losses are searched. They are written to importances.json. The report shows them
as a table and a plot, and needs no Optuna to do so.

The target is a val_acc that every trial that did not fail reached. With ASHA it is the val_acc
at ASHA's first rung, the grace period's epoch. ASHA stops trials after that rung, and its
survivors alone would say little. With FIFO it is the final val_acc. A group of fewer than
MIN_TRIALS trials, or with only one searched value, gets its count and no importances.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import optuna

from kdsearch import files
from kdsearch.config import LOSS_PARAMS, Dimension, ExperimentConfig, losses_of
from kdsearch.metrics import EPOCH, VAL_ACC
from kdsearch.optuna_space import optuna_space
from kdsearch.results import (IMPORTANCES_FILE, dimensions, loss_searched, per_width,
                              searched_widths)
from kdsearch.tables import DISTILLED, KINDS, PHASE, PROGRESS_FILE, TRIALS_FILE, read_table, read_trials

MIN_TRIALS = 10  # the fewest trials an importance is computed from


def _importance(points: list[tuple[dict[str, Any], float]], dists: dict[str, Any]
                ) -> dict[str, float] | None:
    """Return Optuna's importances of `points` (params, value), or None with too few trials."""
    study = optuna.create_study(direction="maximize")
    for params, value in points:
        try:
            trial = optuna.trial.create_trial(params={d: params[d] for d in dists},
                                              distributions=dists, value=value)
        except ValueError:  # a value outside the space (the space file was edited): not counted
            continue
        study.add_trial(trial)
    if len(study.trials) < MIN_TRIALS:
        return None
    return {k: float(v) for k, v in optuna.importance.get_param_importances(study).items()}


def _groups(cfg: ExperimentConfig, kind: str
            ) -> list[tuple[int | None, str | None, tuple[Dimension, ...]]]:
    """Return (width, loss, the dimensions it ranks) for each group of trials of `kind`.

    The first group is all the trials, over the values that every trial has (the loss among
    them, when several are searched). With search.per_width, each width is a group. When
    several losses are searched, each loss is a group, with its own parameters."""
    losses = losses_of(cfg) if kind == DISTILLED and loss_searched(cfg) else ()
    own = {p for loss in losses for p in LOSS_PARAMS[loss]}
    shared = tuple(d for d in dimensions(cfg, kind) if d.name not in own)
    out: list[tuple[int | None, str | None, tuple[Dimension, ...]]] = [(None, None, shared)]
    if per_width(cfg):
        out += [(w, None, tuple(d for d in shared if d.name != "width"))
                for w in searched_widths(cfg)]
    out += [(None, loss, tuple(d for d in dimensions(cfg, kind, loss) if d.name != "loss"))
            for loss in losses]
    return out


def write_importances(results_dir: Path, cfg: ExperimentConfig) -> dict[str, Any]:
    """Write to importances.json which searched values mattered, per group of trials.

    The groups are those of `_groups`: per kind of student, and per width or loss where those
    apply (see the module's docstring). Return what was written."""
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    rung = cfg.search.grace_period if cfg.search.scheduler == "asha" else None
    out: dict[str, Any] = {"format": 1, "target": f"val_acc at epoch {rung}" if rung
                           else "final val_acc", "min_trials": MIN_TRIALS, "groups": []}
    at_rung: dict[str, float] = {}
    for r in read_table(results_dir / PROGRESS_FILE):
        if rung is not None and int(r[EPOCH]) == rung and r.get(VAL_ACC) not in (None, ""):
            at_rung[r["trial_id"]] = float(r[VAL_ACC])
    rows = read_trials(results_dir / TRIALS_FILE)
    for kind in KINDS:
        mine = [r for r in rows if r.kind == kind]
        if not mine:
            continue
        for width, loss, dims in _groups(cfg, kind):
            points = []
            for r in mine:
                if not r.completed or r.diverged or (
                        width is not None and r.value("width") != width) or (
                        loss is not None and r.value("loss") != loss):
                    continue
                params = {d.name: r.value(d.name) for d in dims}
                value = at_rung.get(r.trial_id) if rung else r.val_acc
                if value is not None and None not in params.values():
                    points.append((params, float(value)))
            entry: dict[str, Any] = {"phase": PHASE[kind], "width": width,
                                     "trials": len(points), "importances": None}
            if loss is not None:
                entry["loss"] = loss
            if len(points) >= MIN_TRIALS and len(dims) > 1:
                entry["importances"] = _importance(points, optuna_space(dims))
            out["groups"].append(entry)
    files.write_text(results_dir / IMPORTANCES_FILE, json.dumps(out, indent=2) + "\n")
    return out
