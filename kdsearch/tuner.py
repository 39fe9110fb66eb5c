"""The Ray Tune run of a search: one Tuner for both kinds of student, new or restored.

`run_tuner` builds the trainable (`trainable.run_trial` with its payload and resources), the
callbacks (kdsearch's status and Optuna study, then the user's), the searcher and scheduler
(`searchers`), and runs `Tuner.fit()` until every trial has ended. A resumed search restores
Ray Tune's saved experiment after `ray_workarounds` has mended what a killed driver can leave
behind.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
from pathlib import Path
from typing import Any, Sequence

import optuna
from ray import tune
from ray.tune.logger import JsonLoggerCallback

from kdsearch import ray_workarounds
from kdsearch.cluster import Resources
from kdsearch.config import ExperimentConfig, max_epochs
from kdsearch.metrics import VAL_ACC
from kdsearch.optuna_study import StudyWriter
from kdsearch.results import EXPERIMENT, SearchError, per_width, searched_widths, trial_budget
from kdsearch.searchers import make_search, random_search_note, unsearched_note
from kdsearch.status import StatusCallback
from kdsearch.tables import ENDED, TRIALS_FILE, read_trials
from kdsearch.trainable import TrialPayload, run_trial

log = logging.getLogger(__name__)


def experiment_path(storage_path: str) -> tuple[str, bool]:
    """Ray Tune's experiment folder under `storage_path`, and whether it is on this machine."""
    local = "://" not in storage_path
    if local:
        return str(Path(storage_path) / EXPERIMENT), True
    return storage_path.rstrip("/") + "/" + EXPERIMENT, False


def can_restore(exp_path: str, local: bool, results_dir: Path) -> bool:
    """Whether Ray Tune's saved state of an interrupted search is there to restore, once a torn
    state is mended. Without one, the search starts over, unless trials had ended: starting
    over would drop them, and a SearchError says what to do instead."""
    torn = None
    if local:
        torn = ray_workarounds.mend_torn_state(exp_path, log=log.info)
        if torn:
            log.info(f"note: Ray's saved state of this search (session {torn[0]}) was cut short "
                     f"by the kill; " + ("taken whole from Ray's staging folder" if torn[1] else
                                         "continuing from the state saved before it, or from "
                                         "the start if there is none"))
    if tune.Tuner.can_restore(exp_path) and (
            not local or any(Path(exp_path).glob("experiment_state-*.json"))):
        return True
    if torn is None:  # (a torn state set aside was noted above)
        ended = [r for r in read_trials(results_dir / TRIALS_FILE) if r.status in ENDED]
        if ended:
            raise SearchError(f"{results_dir}: Ray Tune's saved state of this search is not in "
                              f"{exp_path}, so its {len(ended)} ended trials cannot be resumed; "
                              f"put the folder (or --storage-path) back, `kdsearch report "
                              f"{results_dir}` what it has, or start over with `kdsearch run "
                              f"... --force`")
        log.info("note: the interrupted attempt saved no search state and ended no trial; "
                 "starting the search from the beginning")
    return False


def _callbacks(cfg: ExperimentConfig, results_dir: Path, budgets: dict[str, int],
               payload: TrialPayload, *, fresh: bool, concurrency: int,
               user: Sequence[tune.Callback]) -> list[Any]:
    # kdsearch's own (the status first: the study writer reads what it reconciled), Tune's
    # JSON logger with search.trial_logs: json, then the user's
    ours: list[Any] = [StatusCallback(results_dir, cfg, budgets, fresh=fresh,
                                      params_by_width=payload.params_by_width,
                                      concurrency=concurrency),
                       StudyWriter(results_dir, cfg)]
    if cfg.search.trial_logs == "json":
        ours.append(JsonLoggerCallback())
    return [*ours, *user]


def _tuner(cfg: ExperimentConfig, trainable: Any, run_config: tune.RunConfig, *,
           restore_from: str | None, kinds: list[str], total: int, concurrency: int
           ) -> tune.Tuner:
    """A new Tuner for both kinds' trials, or the one saved at `restore_from`."""
    if restore_from is not None:
        ray_workarounds.repair_checkpoints(restore_from)
        tuner = tune.Tuner.restore(restore_from, trainable=trainable, resume_unfinished=True,
                                   resume_errored=True)
        ray_workarounds.restore_callbacks(tuner, run_config.callbacks or [])
        return tuner
    searcher, scheduler = make_search(cfg, kinds)
    tune_config = tune.TuneConfig(metric=VAL_ACC, mode="max", search_alg=searcher,
                                  scheduler=scheduler, num_samples=total,
                                  max_concurrent_trials=concurrency, reuse_actors=True)
    return tune.Tuner(trainable, tune_config=tune_config, run_config=run_config)


def run_tuner(cfg: ExperimentConfig, kinds: list[str], results_dir: Path, storage_path: str,
              payload: TrialPayload, resources: Resources, *, restore: bool,
              callbacks: Sequence[tune.Callback] = ()) -> None:
    """Run the trials of both kinds in one Tuner (see `searchers.PhaseSearcher`); return when
    all have ended. `restore`: continue the search saved under `storage_path`. Raises
    KeyboardInterrupt when the search was interrupted (Ctrl-C) before its last trial ended."""
    budgets = {k: trial_budget(cfg, k) for k in kinds}
    total = sum(budgets.values())
    exp_path, local = experiment_path(storage_path)
    restore = restore and can_restore(exp_path, local, results_dir)
    if not restore and local:
        shutil.rmtree(exp_path, ignore_errors=True)  # a killed attempt that saved no state yet
    replay = ray_workarounds.finished_trials(results_dir) if restore else {}
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, payload=dataclasses.replace(payload, replay=replay)),
        {"cpu": resources.cpus_per_trial, "gpu": resources.gpus_per_trial})
    run_config = tune.RunConfig(
        name=EXPERIMENT, storage_path=storage_path, verbose=0,
        callbacks=_callbacks(cfg, results_dir, budgets, payload, fresh=not restore,
                             concurrency=resources.concurrency, user=callbacks),
        failure_config=tune.FailureConfig(max_failures=cfg.search.max_failures),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=1))
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    # Tune's own per-trial loggers, all of them or none (read when fit() starts;
    # process.restored puts it back); the JSON logger alone is one of the callbacks
    os.environ["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] = \
        "0" if cfg.search.trial_logs == "all" else "1"
    tuner = _tuner(cfg, trainable, run_config, restore_from=exp_path if restore else None,
                   kinds=kinds, total=total, concurrency=resources.concurrency)
    if local:
        ray_workarounds.keep_tuner_copy(exp_path)
    log_start(cfg, kinds, budgets, resources.concurrency)
    with ray_workarounds.sigint_handler_kept():
        grid = tuner.fit()
    # Tune catches Ctrl-C (SIGINT) itself: fit() then returns early, with its state saved, as
    # if the search had ended. Fewer ended trials than planned means it was interrupted: it
    # must not be marked finished, nor the report run on half a search.
    ended = grid.num_terminated + grid.num_errors
    if ended < total:
        raise KeyboardInterrupt(f"search interrupted after {ended} of {total} trials")


def log_start(cfg: ExperimentConfig, kinds: list[str], budgets: dict[str, int],
              concurrency: int) -> None:
    """Say what the search is about to run."""
    s, widths = cfg.search, searched_widths(cfg)
    counts = " and ".join(f"{budgets[k]} {k}" for k in kinds)
    split = (f", split evenly over {len(widths)} widths" if per_width(cfg) and len(widths) > 1
             else "")
    log.info(f"search: {counts} trials of {cfg.student.model} on {cfg.dataset.name}"
             f"{', side by side' if len(kinds) > 1 else ''}, {s.algorithm.upper()} + "
             f"{s.scheduler.upper()}, up to {max_epochs(cfg)} epochs each, "
             f"{concurrency} at a time{split}")
    for note in (unsearched_note(cfg, kinds), random_search_note(cfg, kinds)):
        if note:
            log.info(note)
    log.info("search: starting the trial workers (each imports torch and Ray first)")
