"""What mattered: which searched values the val_acc depended on, per phase and per width.

`optuna.importance.get_param_importances` (its default evaluator, PED-ANOVA) over the trials of
a phase, and of each width with search.per_width, as trials.csv and progress.csv record them;
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
from kdsearch.config import ExperimentConfig
from kdsearch.metrics import EPOCH, VAL_ACC
from kdsearch.optuna_space import optuna_space
from kdsearch.results import IMPORTANCES_FILE, dimensions, per_width, searched_widths
from kdsearch.tables import KINDS, PHASE, PROGRESS_FILE, TRIALS_FILE, read_table, read_trials

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
        dims = dimensions(cfg, kind)
        points = []
        for r in rows:
            if r.kind != kind or not r.completed or r.diverged:
                continue
            params = {d.name: r.value(d.name) for d in dims}
            value = at_rung.get(r.trial_id) if rung else r.val_acc
            if value is not None and None not in params.values():
                points.append((params, float(value)))
        if not any(r.kind == kind for r in rows):
            continue
        groups: list[tuple[Any, list[tuple[dict[str, Any], float]]]] = [(None, points)]
        if per_width(cfg):
            groups += [(w, [p for p in points if p[0].get("width") == w])
                       for w in searched_widths(cfg)]
        for width, group in groups:
            kept = tuple(d for d in dims if not (width is not None and d.name == "width"))
            entry: dict[str, Any] = {"phase": PHASE[kind], "width": width,
                                     "trials": len(group), "importances": None}
            if len(group) >= MIN_TRIALS and len(kept) > 1:
                entry["importances"] = _importance(group, optuna_space(kept))
            out["groups"].append(entry)
    files.write_text(results_dir / IMPORTANCES_FILE, json.dumps(out, indent=2) + "\n")
    return out
