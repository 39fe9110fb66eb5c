"""The live status of a search: a line per ended trial, and trials.csv and progress.csv kept
current as results arrive (a Ray Tune callback).

Each ended trial prints its phase, how many of its phase's trials have ended, its val_acc and
setting, the counts of running, finished, early-stopped and failed trials, and the best so far.
trials.csv is rewritten (atomically) as trials start and end; progress.csv gets a row per
reported epoch. On resume the records a killed driver left are reconciled with the trials Ray
restored (`ray_workarounds`, part 4).
"""

from __future__ import annotations

import logging
import csv
import math
import time
from pathlib import Path
from typing import Any

from ray import tune

from kdsearch import ray_workarounds
from kdsearch.config import ExperimentConfig
from kdsearch.metrics import EPOCH, EPOCH_SECONDS, TRAIN_LOSS, VAL_ACC, VAL_LOSS
from kdsearch.results import fmt_setting, phase_dimensions, phase_of
from kdsearch.tables import (EPOCH_BUDGET, PROGRESS_FIELDS, PROGRESS_FILE, TRIALS_FILE, dim_column,
                             write_table)

log = logging.getLogger(__name__)


class StatusCallback(tune.Callback):
    """Prints a live status line per trial and keeps trials.csv / progress.csv current.

    `budgets`: each phase's trial budget. On resume (`fresh` False) it reloads what it wrote
    before the driver died and reconciles it with the trials Ray restored
    (`ray_workarounds.reload_records`, `drop_unseen`, `rewind_epochs`): a trial recorded as
    ended is left as it is (the trainable replays its result), rows of trials that Ray's last
    experiment state never saw are dropped, and epochs a resumed trial trains again replace the
    rows they had, so progress.csv holds one row per (trial_id, epoch).
    """

    def __init__(self, results_dir: Path, cfg: ExperimentConfig, budgets: dict[str, int], *,
                 quiet: bool, fresh: bool, params_by_width: dict[int, int] | None = None
                 ) -> None:
        self.results_dir, self.cfg, self.budgets, self.quiet = results_dir, cfg, budgets, quiet
        self.fresh, self.params_by_width = fresh, params_by_width or {}
        self.dims = {p: [d.name for d in phase_dimensions(cfg, p)] for p in budgets}
        self.records: dict[str, dict[str, Any]] = {}
        self.finished: set[str] = set()  # trials that ended before this driver started
        self.epochs: dict[str, dict[int, float]] = {}  # trial -> epoch -> epoch_seconds
        self.best = {p: float("nan") for p in budgets}
        self._progress = results_dir / PROGRESS_FILE
        self._repaired = fresh

    def setup(self, **info: Any) -> None:
        if self.fresh:
            # the search (re)started from scratch: rows of an earlier, killed attempt are void
            write_table(self.results_dir / TRIALS_FILE, [])
            write_table(self._progress, [], PROGRESS_FIELDS)
            return
        self.records, self.epochs = ray_workarounds.reload_records(self.results_dir)
        self.finished = {t for t, r in self.records.items() if r.get("status") == "TERMINATED"}
        for t in self.finished:
            r = self.records[t]
            if r.get("val_acc") not in (None, "") and not int(r.get("diverged") or 0):
                self._better(r.get("phase", "distill"), float(r["val_acc"]))

    def _better(self, phase: str, acc: float) -> None:
        if phase in self.best:
            best = self.best[phase]
            self.best[phase] = acc if math.isnan(best) else max(best, acc)

    def on_step_begin(self, iteration: int, trials: list, **info: Any) -> None:
        if self._repaired:
            return
        self._repaired = True  # the first step sees the restored trials, nothing new yet
        self.finished -= ray_workarounds.drop_unseen(self.results_dir, self.records, self.epochs,
                                                     {t.trial_id for t in trials})
        self.write_trials()
        if not self.quiet:
            log.info(f"search resumed: {len(self.finished)} of {sum(self.budgets.values())} "
                     f"trials had finished")

    def record(self, trial: Any, status: str, error: str = "",
               last: dict[str, Any] | None = None) -> dict[str, Any]:
        """Update (in memory) and return the trials.csv row of `trial` (a Tune Trial): its
        status, metrics and settings. `last`: the result being processed (Tune sets
        trial.last_result after callbacks); by default the trial's last result."""
        last = last if last is not None else (trial.last_result or {})
        rec = self.records.get(trial.trial_id, {})
        best = rec.get("best_val_acc")
        acc = last.get(VAL_ACC)
        if acc is not None:
            best = max(float(best), float(acc)) if best not in (None, "") else float(acc)
        diverged = bool(last.get("diverged", 0))
        epochs = int(last.get(EPOCH, 0) or 0)
        # epochs may be searched
        budget = int(trial.config.get("epochs", self.cfg.training.epochs))
        phase = phase_of(trial.config)
        rec.update({"phase": phase, "trial_id": trial.trial_id, "status": status,
                    "stopped_early": int(status == "TERMINATED" and not diverged
                                         and epochs < budget),
                    "diverged": int(diverged),
                    "error": error or last.get("error", "") or "",
                    "epochs": epochs, EPOCH_BUDGET: budget,
                    "val_acc": acc, "best_val_acc": best,
                    "val_loss": last.get(VAL_LOSS), "train_loss": last.get(TRAIN_LOSS),
                    "training_seconds": sum(self.epochs.get(trial.trial_id, {}).values()),
                    # (a trial that failed before its first report: its width's count)
                    "params": last.get("params", rec.get("params")) or
                    self.params_by_width.get(
                        int(trial.config.get("width", self.cfg.student.width))),
                    "node": last.get("node", rec.get("node", "")),
                    "gpu_ids": last.get("gpu_ids", rec.get("gpu_ids", ""))})
        for name in self.dims.get(phase, []):
            if dim_column(name) == name:
                rec[name] = trial.config.get(name)
        self.records[trial.trial_id] = rec
        return rec

    def write_trials(self) -> None:
        """trials.csv, rewritten (atomically) from the records."""
        write_table(self.results_dir / TRIALS_FILE, list(self.records.values()))

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        if trial.trial_id in self.finished:
            return
        self.record(trial, "RUNNING")
        self.write_trials()

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict,
                        **info: Any) -> None:
        if trial.trial_id in self.finished or result.get("replayed"):
            return
        if result.get("diverged"):  # not an epoch: the trial ends on it (see trainable.run_trial)
            return
        epoch = int(result.get(EPOCH, 0))
        seen = self.epochs.setdefault(trial.trial_id, {})
        ray_workarounds.rewind_epochs(self.results_dir, seen, trial.trial_id, epoch)
        seen[epoch] = float(result.get(EPOCH_SECONDS, 0.0))
        self.record(trial, "RUNNING", last=result)
        with open(self._progress, "a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=PROGRESS_FIELDS, extrasaction="ignore")
            if f.tell() == 0:
                w.writeheader()
            w.writerow({"phase": phase_of(trial.config), "trial_id": trial.trial_id,
                        "wall_time": round(time.time(), 3), **result})

    def on_trial_complete(self, iteration: int, trials: list, trial: Any,
                          **info: Any) -> None:
        if trial.trial_id in self.finished:
            return
        rec = self.record(trial, "TERMINATED")
        if not rec["diverged"] and rec["val_acc"] is not None:
            self._better(rec["phase"], float(rec["val_acc"]))
        self.write_trials()
        self._print(rec)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        if trial.trial_id in self.finished:
            return
        err = ""
        if trial.error_file and Path(trial.error_file).exists():
            lines = [ln for ln in Path(trial.error_file).read_text().splitlines() if ln]
            err = lines[-1][:300] if lines else ""
        rec = self.record(trial, "ERROR", err or "the trial raised")
        self.write_trials()
        self._print(rec)

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        for t in trials:
            if t.trial_id in self.finished:
                continue
            if t.trial_id not in self.records or t.status in ("PENDING", "PAUSED"):
                self.record(t, t.status)
        self.write_trials()

    def _print(self, rec: dict[str, Any]) -> None:
        if self.quiet:
            return
        phase = rec["phase"]
        counts = {"running": 0, "done": 0, "early": 0, "failed": 0}
        for r in self.records.values():
            if r.get("phase") != phase:
                continue
            if r["status"] == "RUNNING":
                counts["running"] += 1
            elif r["status"] == "ERROR" or int(r.get("diverged") or 0):
                counts["failed"] += 1
            elif r["status"] == "TERMINATED":
                counts["early" if int(r.get("stopped_early") or 0) else "done"] += 1
        finished = counts["done"] + counts["early"] + counts["failed"]
        what = ("diverged" if int(rec.get("diverged") or 0) else
                "failed" if rec["status"] == "ERROR" else
                f"stopped at epoch {rec['epochs']}" if int(rec["stopped_early"]) else
                "done")
        acc = rec.get("val_acc")
        setting = " ".join(f"{n}={fmt_setting(rec.get(dim_column(n)))}"
                           for n in self.dims.get(phase, []))
        best = self.best.get(phase, float("nan"))
        log.info(f"[{phase} {finished}/{self.budgets.get(phase, 0)}] {what}: val_acc "
                 f"{'-' if acc in (None, '') else f'{float(acc):.4f}'} ({setting}) | running "
                 f"{counts['running']}, done {counts['done']}, stopped early {counts['early']}, "
                 f"failed {counts['failed']} | best "
                 f"{'-' if math.isnan(best) else f'{best:.4f}'}")

