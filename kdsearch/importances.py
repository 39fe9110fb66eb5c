"""What mattered: which searched values the val_acc depended on, per kind, width and loss.

`optuna.importance.get_param_importances` (its default evaluator, PED-ANOVA) over the trials of
a kind of student, of each width with search.per_width, and of each loss when several are
searched, as trials.csv and progress.csv record them;
written to importances.json, which the report shows as a table and a plot (no Optuna needed
there). The target is the val_acc every trial that did not fail reached: at ASHA's first rung
(the grace period's epoch; ASHA stops trials after it, and its survivors alone would say
little), or the final val_acc with FIFO. A group of fewer than MIN_TRIALS trials, or with one
searched value only, gets its count and no importances.
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
    study = optuna.create_study(direction="maximize")
    for params, value in points:
        try:
            trial = optuna.trial.create_trial(params={d: params[d] for d in dists},
                                              distributions=dists, value=value)
        except ValueError:  # a value outside the space (a space file edited since): not counted
            continue
        study.add_trial(trial)
    if len(study.trials) < MIN_TRIALS:
        return None
    return {k: float(v) for k, v in optuna.importance.get_param_importances(study).items()}


def _groups(cfg: ExperimentConfig, kind: str
            ) -> list[tuple[int | None, str | None, tuple[Dimension, ...]]]:
    """(width, loss, the dimensions it ranks) of each group of trials of `kind`: all of them
    over the values every trial has (the loss among them, when several are searched), each
    width with search.per_width, each loss with its own parameters."""
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
    """Per kind of student (and per width, with search.per_width), which searched values
    mattered (see the module's docstring), to importances.json; returns what it wrote."""
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
