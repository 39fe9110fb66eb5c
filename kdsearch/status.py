"""The live status of a search, as a Ray Tune callback.

The callback logs a line per ended trial, and a line on the running trials every
`PROGRESS_EVERY_S` seconds. It keeps trials.csv and progress.csv current as results arrive.

Each ended trial prints its kind, how many of its kind's trials have ended, its val_acc and
setting, the counts of running, finished, early-stopped and failed trials, and the best so far.
While trials run, a line says the epoch each running trial is at and estimates the time left.
trials.csv is rewritten (atomically) as trials start and end. progress.csv gets a row per
reported epoch. On resume, the records that a killed driver left are reconciled with the
trials Ray restored (`ray_workarounds`, part 4).
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
from kdsearch.results import dimension_names, fmt_setting, kind_of_config
from kdsearch.tables import (ERROR, PAUSED, PENDING, PHASE, PROGRESS_FIELDS, PROGRESS_FILE, RUNNING,
                             TERMINATED, TRIALS_FILE, TrialRow, write_table, write_trials)

log = logging.getLogger(__name__)

PROGRESS_EVERY_S = 30.0  # how often a line says where the running trials are


class StatusCallback(tune.Callback):
    """Logs a status line per ended trial and keeps trials.csv and progress.csv current.

    `budgets` holds the trial budget of each kind of student. On resume (`fresh` False), the
    callback reloads what it wrote before the driver died. It reconciles that with the trials
    Ray restored (`ray_workarounds.reload_records`, `drop_unseen`, `rewind_epochs`):

    - A trial recorded as ended is left as it is. The trainable replays its result.
    - Rows of trials that Ray's last experiment state never saw are dropped.
    - Epochs that a resumed trial trains again replace the rows they had. So progress.csv holds
      one row per (trial_id, epoch).
    """

    def __init__(self, results_dir: Path, cfg: ExperimentConfig, budgets: dict[str, int], *,
                 fresh: bool, params_by_width: dict[int, int] | None = None,
                 concurrency: int = 1) -> None:
        self.results_dir, self.cfg, self.budgets = results_dir, cfg, budgets
        self.fresh, self.params_by_width = fresh, params_by_width or {}
        self.concurrency = concurrency  # trials at once, for the estimate of the time left
        self._said = time.monotonic()  # when the last progress line was logged
        self.dims = {k: dimension_names(cfg, k) for k in budgets}
        self.records: dict[str, TrialRow] = {}
        self.finished: set[str] = set()  # trials that ended before this driver started
        self.epochs: dict[str, dict[int, float]] = {}  # trial -> epoch -> epoch_seconds
        self.best = {k: float("nan") for k in budgets}
        self._progress = results_dir / PROGRESS_FILE
        self._repaired = fresh

    def setup(self, **info: Any) -> None:
        if self.fresh:
            # the search starts from scratch, so rows of an earlier, killed attempt are void
            write_table(self.results_dir / TRIALS_FILE, [])
            write_table(self._progress, [], PROGRESS_FIELDS)
            return
        self.records, self.epochs = ray_workarounds.reload_records(self.results_dir)
        self.finished = {t for t, r in self.records.items() if r.completed}
        for t in self.finished:
            r = self.records[t]
            if r.ended_ok:
                self._better(r.kind, r.val_acc)

    def _better(self, kind: str, acc: float | None) -> None:
        if kind in self.best and acc is not None:
            best = self.best[kind]
            self.best[kind] = acc if math.isnan(best) else max(best, acc)

    def on_step_begin(self, iteration: int, trials: list, **info: Any) -> None:
        if self._repaired:
            return
        self._repaired = True  # the first step sees the restored trials, nothing new yet
        self.finished -= ray_workarounds.drop_unseen(self.results_dir, self.records, self.epochs,
                                                     {t.trial_id for t in trials})
        self.write_trials()
        log.info(f"search resumed: {len(self.finished)} of {sum(self.budgets.values())} "
                 f"trials had finished")

    def record(self, trial: Any, status: str, error: str = "",
               last: dict[str, Any] | None = None) -> TrialRow:
        """Update in memory the trials.csv row of `trial` (a Tune Trial), and return it.

        The row holds the trial's status, metrics and settings. `last` is the result being
        processed, since Tune sets trial.last_result only after the callbacks. By default it is
        the trial's last result."""
        last = last if last is not None else (trial.last_result or {})
        old = self.records.get(trial.trial_id)
        acc = last.get(VAL_ACC)
        best = old.best_val_acc if old else None
        if acc is not None:
            best = max(best, float(acc)) if best is not None else float(acc)
        diverged = bool(last.get("diverged", 0))
        epochs = int(last.get(EPOCH, 0) or 0)
        budget = int(trial.config.get("epochs", self.cfg.training.epochs))  # may be searched
        kind = kind_of_config(trial.config)
        width = int(trial.config.get("width", self.cfg.student.width))
        # a trial that failed before its first report gets its width's count
        params = last.get("params", old.params if old else None) or \
            self.params_by_width.get(width)
        row = TrialRow(
            kind=kind, trial_id=trial.trial_id, status=status,
            stopped_early=status == TERMINATED and not diverged and epochs < budget,
            diverged=diverged, error=error or last.get("error", "") or "", epochs=epochs,
            epoch_budget=budget, val_acc=None if acc is None else float(acc),
            best_val_acc=best, val_loss=last.get(VAL_LOSS), train_loss=last.get(TRAIN_LOSS),
            training_seconds=sum(self.epochs.get(trial.trial_id, {}).values()),
            params=params, node=last.get("node", old.node if old else ""),
            gpu_ids=last.get("gpu_ids", old.gpu_ids if old else ""),
            values={**(old.values if old else {}),
                    **{n: trial.config.get(n) for n in self.dims.get(kind, []) if n != "epochs"}})
        self.records[trial.trial_id] = row
        return row

    def write_trials(self) -> None:
        """Rewrite trials.csv (atomically) from the records."""
        write_trials(self.results_dir / TRIALS_FILE, self.records.values())

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        if trial.trial_id in self.finished:
            return
        self.record(trial, RUNNING)
        self.write_trials()

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict,
                        **info: Any) -> None:
        if trial.trial_id in self.finished or result.get("replayed"):
            return
        if result.get("diverged"):  # not an epoch; the trial ends on it (see trainable.run_trial)
            return
        epoch = int(result.get(EPOCH, 0))
        seen = self.epochs.setdefault(trial.trial_id, {})
        ray_workarounds.rewind_epochs(self.results_dir, seen, trial.trial_id, epoch)
        seen[epoch] = float(result.get(EPOCH_SECONDS, 0.0))
        self.record(trial, RUNNING, last=result)
        with open(self._progress, "a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=PROGRESS_FIELDS, extrasaction="ignore")
            if f.tell() == 0:
                w.writeheader()
            w.writerow({"phase": PHASE[kind_of_config(trial.config)],
                        "trial_id": trial.trial_id, "wall_time": round(time.time(), 3),
                        **result})
        if time.monotonic() - self._said >= PROGRESS_EVERY_S:
            self._said = time.monotonic()
            log.info(self.progress_line())

    def progress_line(self) -> str:
        """Return a line on where the search is.

        The line gives the trials ended, the epoch each running trial is at, and an estimate of
        the time left. The estimate is the trial-epochs left, at the mean epoch time so far."""
        rows = list(self.records.values())
        ended = [r for r in rows if r.ended]
        running = [r for r in rows if r.status == RUNNING]
        total = sum(self.budgets.values())
        at = ", ".join(f"{r.kind} w{r.width(self.cfg.student.width)} epoch {r.epochs}/"
                       f"{r.epoch_budget}" for r in running[:6])
        more = f" and {len(running) - 6} more" if len(running) > 6 else ""
        line = f"search: {len(ended)} of {total} trials ended; running: {at or 'none'}{more}"
        seconds = [s for epochs in self.epochs.values() for s in epochs.values()]
        if not seconds:
            return line
        # a trial not yet started is assumed to run as many epochs as the ended trials did on
        # average (ASHA stops most early). While none has ended, it is assumed to run them all.
        per_trial = (sum(r.epochs for r in ended) / len(ended) if ended
                     else float(self.cfg.training.epochs))
        left = sum(max(0, (r.epoch_budget or 0) - r.epochs) for r in running) \
            + max(0, total - len(rows)) * per_trial
        eta = left * (sum(seconds) / len(seconds)) / max(1, self.concurrency)
        return f"{line}; about {_minutes(eta)} left"

    def on_trial_complete(self, iteration: int, trials: list, trial: Any,
                          **info: Any) -> None:
        if trial.trial_id in self.finished:
            return
        row = self.record(trial, TERMINATED)
        if row.ended_ok:
            self._better(row.kind, row.val_acc)
        self.write_trials()
        self._log(row)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        if trial.trial_id in self.finished:
            return
        err = ""
        if trial.error_file and Path(trial.error_file).exists():
            lines = [ln for ln in Path(trial.error_file).read_text().splitlines() if ln]
            err = lines[-1][:300] if lines else ""
        row = self.record(trial, ERROR, err or "the trial raised")
        self.write_trials()
        self._log(row)

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        for t in trials:
            if t.trial_id in self.finished:
                continue
            if t.trial_id not in self.records or t.status in (PENDING, PAUSED):
                self.record(t, t.status)
        self.write_trials()

    def _log(self, row: TrialRow) -> None:
        """Log the status line of an ended trial: its result, and its kind's counts so far."""
        counts = {"running": 0, "done": 0, "early": 0, "failed": 0}
        for r in self.records.values():
            if r.kind != row.kind:
                continue
            if r.status == RUNNING:
                counts["running"] += 1
            elif r.failed or r.diverged:
                counts["failed"] += 1
            elif r.status == TERMINATED:
                counts["early" if r.stopped_early else "done"] += 1
        finished = counts["done"] + counts["early"] + counts["failed"]
        what = ("diverged" if row.diverged else "failed" if row.failed else
                f"stopped at epoch {row.epochs}" if row.stopped_early else "done")
        setting = " ".join(f"{n}={fmt_setting(row.value(n))}" for n in self.dims.get(row.kind, [])
                           if row.value(n) is not None)  # skips another loss's parameters
        best = self.best.get(row.kind, float("nan"))
        acc = "-" if row.val_acc is None else f"{row.val_acc:.4f}"
        log.info(f"[{PHASE[row.kind]} {finished}/{self.budgets.get(row.kind, 0)}] {what}: "
                 f"val_acc {acc} ({setting}) | running {counts['running']}, done "
                 f"{counts['done']}, stopped early {counts['early']}, failed {counts['failed']} "
                 f"| best {'-' if math.isnan(best) else f'{best:.4f}'}")


def _minutes(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.1f} min"
