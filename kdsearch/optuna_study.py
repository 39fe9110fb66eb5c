"""optuna.db: the search's trials as Optuna studies, one per phase ("distill", "baseline"), for
`optuna.load_study` and optuna-dashboard.

Written from trials.csv once the search has ended (to a temporary file, then renamed): each
trial with its searched values, COMPLETE with its final val_acc, PRUNED when ASHA stopped it
early, FAIL when it diverged or raised.
"""

from __future__ import annotations

import os
from pathlib import Path

import optuna

from kdsearch.arms import optuna_space
from kdsearch.config import ExperimentConfig
from kdsearch.results import OPTUNA_FILE, PHASES, phase_dimensions
from kdsearch.tables import TRIALS_FILE, dim_column, parse_value, read_table


def export_study(results_dir: Path, cfg: ExperimentConfig) -> None:
    """Write the searched trials into an Optuna study file that optuna.load_study opens."""
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    rows = read_table(results_dir / TRIALS_FILE)
    path = results_dir / OPTUNA_FILE
    tmp = results_dir / (OPTUNA_FILE + ".tmp")
    tmp.unlink(missing_ok=True)
    storage = f"sqlite:///{tmp}"
    study = None
    for phase in PHASES:
        dims = phase_dimensions(cfg, phase)
        dists = optuna_space(dims)
        phase_rows = [r for r in rows if r.get("phase") == phase]
        if not phase_rows:
            continue
        study = optuna.create_study(study_name=phase, storage=storage, direction="maximize")
        for r in phase_rows:
            params = {d.name: parse_value(r.get(dim_column(d.name))) for d in dims}
            if any(v in (None, "") for v in params.values()):
                continue
            done = r.get("status") == "TERMINATED" and not int(r.get("diverged") or 0)
            state = (optuna.trial.TrialState.FAIL if not done else
                     optuna.trial.TrialState.PRUNED if int(r.get("stopped_early") or 0) else
                     optuna.trial.TrialState.COMPLETE)
            try:
                study.add_trial(optuna.trial.create_trial(
                    params=params, distributions=dists, state=state,
                    value=float(r["val_acc"]) if state == optuna.trial.TrialState.COMPLETE
                    else None,
                    user_attrs={"trial_id": r["trial_id"], "epochs": parse_value(r.get("epochs")),
                                "val_acc": parse_value(r.get("val_acc"))}))
            except (ValueError, TypeError):
                continue
    del study
    if tmp.exists():
        os.replace(tmp, path)
