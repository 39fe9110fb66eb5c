"""optuna.db: the search's trials as Optuna studies, kept current while the search runs.

There is one study per phase ("distill", "baseline"). Each trial of the search is a trial of
its phase's study. It has its searched values, and each reported epoch's val_acc as an
intermediate value. Once it ends, it is COMPLETE with its final val_acc, PRUNED when ASHA
stopped it early, or FAIL when it diverged or raised.

`StudyWriter` (a Ray Tune callback) writes the trials as they come, at most every few seconds,
from a thread of its own. So `optuna-dashboard sqlite:///results/<name>/optuna.db` can watch a
running search. For a resumed search, the study is first rebuilt whole from trials.csv and
progress.csv (`export_study`), the records that a killed driver left.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState
from ray import tune

from kdsearch.config import ExperimentConfig
from kdsearch.errors import one_line
from kdsearch.metrics import EPOCH, VAL_ACC
from kdsearch.optuna_space import optuna_space
from kdsearch.results import (OPTUNA_FILE, dimensions, kind_of_config, loss_searched,
                              searched_kinds)
from kdsearch.tables import (KINDS, PHASE, PROGRESS_FILE, TRIALS_FILE, TrialRow, read_table,
                             read_trials)

log = logging.getLogger(__name__)

WRITE_EVERY_S = 3.0  # how often a running search's study is brought up to date


def _storage(path: Path) -> optuna.storages.RDBStorage:
    """Return Optuna's SQLite storage at `path`, which does not wait for the disk at each commit.

    The study is a view of trials.csv and progress.csv. If it is ever lost, it is rebuilt from
    them."""
    import sqlalchemy

    storage = optuna.storages.RDBStorage(f"sqlite:///{path}")

    @sqlalchemy.event.listens_for(storage.engine, "connect")
    def _no_fsync(connection: Any, _: Any) -> None:
        connection.execute("PRAGMA synchronous=OFF")

    storage.engine.dispose()  # the next connection takes the pragma
    return storage


def _state(*, ended: bool, ok: bool, stopped_early: bool) -> TrialState:
    """Return the Optuna state of a trial.

    It is RUNNING until the trial ends. Then it is COMPLETE, PRUNED when ASHA stopped the trial
    early, or FAIL when the trial raised or diverged."""
    if not ended:
        return TrialState.RUNNING
    return (TrialState.FAIL if not ok else
            TrialState.PRUNED if stopped_early else TrialState.COMPLETE)


def _row_state(r: TrialRow) -> TrialState:
    """Return the Optuna state of the trial that trials.csv row `r` records."""
    ok = r.completed and not r.diverged
    return _state(ended=r.ended, ok=ok, stopped_early=r.stopped_early)


def export_study(results_dir: Path, cfg: ExperimentConfig) -> None:
    """Write the search's trials, as trials.csv and progress.csv record them, into optuna.db.

    The file is written anew and renamed over the old one. It holds a study for each kind that
    the config searches, named as the `phase` column names it ("distill", "baseline")."""
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    rows = read_trials(results_dir / TRIALS_FILE)
    curves: dict[str, dict[int, float]] = {}
    for r in read_table(results_dir / PROGRESS_FILE):
        if r.get(VAL_ACC) not in (None, ""):
            curves.setdefault(r["trial_id"], {})[int(r[EPOCH])] = float(r[VAL_ACC])
    path = results_dir / OPTUNA_FILE
    tmp = results_dir / (OPTUNA_FILE + ".tmp")
    tmp.unlink(missing_ok=True)
    storage = _storage(tmp)
    for kind in KINDS:
        mine = [r for r in rows if r.kind == kind]
        if not mine and kind not in searched_kinds(cfg):
            continue
        study = optuna.create_study(study_name=PHASE[kind], storage=storage,
                                    direction="maximize")
        for r in mine:
            dims = dimensions(cfg, kind, r.value("loss") if loss_searched(cfg) else None)
            dists = optuna_space(dims)
            params = {d.name: r.value(d.name) for d in dims}
            if any(v is None for v in params.values()):
                continue
            state = _row_state(r)
            try:
                study.add_trial(optuna.trial.create_trial(
                    params=params, distributions=dists, state=state,
                    value=r.val_acc if state == TrialState.COMPLETE else None,
                    intermediate_values=curves.get(r.trial_id, {}),
                    user_attrs={"trial_id": r.trial_id}))
            except (ValueError, TypeError):
                continue
    storage.engine.dispose()
    os.replace(tmp, path)


class StudyWriter(tune.Callback):
    """Keeps optuna.db current while the search runs (see the module's docstring).

    The Tune loop only queues what happened. A thread writes it every `every` seconds, and
    writes all of it when the search ends. The study is first written whole from the records
    (empty for a new search), once the status callback has reconciled them."""

    def __init__(self, results_dir: Path, cfg: ExperimentConfig, *,
                 every: float = WRITE_EVERY_S) -> None:
        self.results_dir, self.cfg, self.every = results_dir, cfg, every
        self.queue: queue.Queue[tuple[str, Any, dict[str, Any]]] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def __getstate__(self) -> dict[str, Any]:
        # Tune pickles its callbacks into tuner.pkl. The settings travel, not the thread.
        return {"results_dir": self.results_dir, "cfg": self.cfg, "every": self.every}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["results_dir"], state["cfg"],  # type: ignore[misc]
                      every=state["every"])

    def _start(self) -> None:
        if self._thread is not None:
            return
        # a new search gets empty studies. A resumed one gets them rebuilt from the records.
        export_study(self.results_dir, self.cfg)  # made aside, then renamed into place
        self._thread = threading.Thread(target=self._write_loop, name="kdsearch-optuna",
                                        daemon=True)
        self._thread.start()

    def on_step_begin(self, iteration: int, trials: list, **info: Any) -> None:
        self._start()  # after the status callback's first step, so the records are reconciled

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict,
                        **info: Any) -> None:
        if not result.get("replayed") and not result.get("diverged"):
            self.queue.put(("epoch", trial.trial_id, {"config": trial.config,
                                                       EPOCH: int(result.get(EPOCH, 0)),
                                                       VAL_ACC: result.get(VAL_ACC)}))

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        last = trial.last_result or {}
        budget = int(trial.config.get("epochs", self.cfg.training.epochs))
        epochs = int(last.get(EPOCH, 0) or 0)
        state = _state(ended=True, ok=not last.get("diverged"), stopped_early=epochs < budget)
        self.queue.put(("end", trial.trial_id, {"config": trial.config, "state": state,
                                                VAL_ACC: last.get(VAL_ACC)}))

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.queue.put(("end", trial.trial_id, {"config": trial.config,
                                                "state": TrialState.FAIL, VAL_ACC: None}))

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        self._start()
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    # ----------------------------------------------------------------------- the writer thread
    def _write_loop(self) -> None:
        try:
            storage = _storage(self.results_dir / OPTUNA_FILE)
            studies: dict[str, int] = {}
            ids: dict[str, int] = {}  # Tune's trial id -> the Optuna trial's
            ended: set[int] = set()  # Optuna trials that have their final state
            for kind in KINDS:
                try:
                    studies[kind] = storage.get_study_id_from_name(PHASE[kind])
                except KeyError:
                    continue
                for t in storage.get_all_trials(studies[kind], deepcopy=False):
                    number = storage.get_trial_id_from_study_id_trial_number(studies[kind],
                                                                             t.number)
                    ids[t.user_attrs.get("trial_id", "")] = number
                    if t.state.is_finished():
                        ended.add(number)
            while True:
                stopping = self._stop.wait(self.every)
                self._write(storage, studies, ids, ended)
                if stopping:
                    break
            storage.engine.dispose()
        except Exception as e:  # a full disk or a locked file; the search goes on without it
            log.warning(f"note: optuna.db stopped being updated ({type(e).__name__}: "
                        f"{one_line(e)}); kdsearch resume rebuilds it")

    def _write(self, storage: Any, studies: dict[str, int], ids: dict[str, int],
               ended: set[int]) -> None:
        while True:
            try:
                event, trial_id, what = self.queue.get_nowait()
            except queue.Empty:
                return
            kind = kind_of_config(what["config"])
            if kind not in studies:
                studies[kind] = storage.create_new_study(
                    [optuna.study.StudyDirection.MAXIMIZE], PHASE[kind])
            if trial_id not in ids:
                loss = what["config"].get("loss") if loss_searched(self.cfg) else None
                dims = dimensions(self.cfg, kind, loss)
                params = {d.name: what["config"][d.name] for d in dims
                          if d.name in what["config"]}
                if len(params) < len(dims):
                    continue
                ids[trial_id] = storage.create_new_trial(
                    studies[kind], template_trial=optuna.trial.create_trial(
                        params=params, distributions=optuna_space(dims),
                        state=TrialState.RUNNING, user_attrs={"trial_id": trial_id}))
            number = ids[trial_id]
            if number in ended:
                continue  # a resumed trial that had ended keeps its record
            if event == "epoch" and what[VAL_ACC] is not None:
                storage.set_trial_intermediate_value(number, what[EPOCH], float(what[VAL_ACC]))
            elif event == "end":
                state = what["state"]
                storage.set_trial_state_values(
                    number, state, [float(what[VAL_ACC])] if state == TrialState.COMPLETE
                    else None)
                ended.add(number)
