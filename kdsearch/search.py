"""The search: Ray Tune with Optuna's TPE and ASHA. The only module that imports Ray or Optuna.

Flow: config -> dataset + cached teacher (once, in the driver) -> `tune.with_parameters` puts the
data and the teacher's logits in Ray's object store once, as arrays each trial maps without a
copy -> every trial builds a student from its config and runs `distill.fit`, reporting each epoch
(with a checkpoint every few seconds) -> side by side in the same Tuner, a baseline search of the
student alone (alpha = 1) on the same budget -> the results folder -> the report, whose final
retrainings run as Ray tasks on the same object-store data (`_ray_runner`).

Results folder `results/<name>/` (all paths inside it relative, so it can be copied):
  config.yaml     the resolved config           run.json     search status, teacher, hardware
  search/         Ray Tune's experiment, both phases' trials
  trials.csv      every trial: config, status, final metrics (updated as trials end)
  progress.csv    every reported epoch of every trial, in the order they arrived
  optuna.db       the Optuna studies ("distill", "baseline"): optuna.load_study / optuna-dashboard
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import json
import logging
import math
import os
import platform
import re
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

import numpy as np
import torch

from kdsearch import __version__, files
from kdsearch.config import (KD_DIMENSIONS, UserError, Dimension, ExperimentConfig,
                             SearchConfig, check_searchable, config_from_dict, default_cache_dir,
                             default_data_dir, dump_config, largest, load_config, max_epochs,
                             read_yaml, with_params)
from kdsearch.data import Dataset, load_dataset
from kdsearch.distill import (EPOCH, TRAIN_LOSS, VAL_ACC, VAL_LOSS, Diverged, FitState,
                              train_student)
from kdsearch.models import build_student, count_parameters
from kdsearch.tables import read_table
from kdsearch.teacher import Teacher, get_teacher

if TYPE_CHECKING:  # final.py imports this module
    from kdsearch.final import Retrained, Retraining, Runner

PHASES = ("distill", "baseline")
PHASE_KEY = "phase"  # in a trial's config: the phase (search) it belongs to
PHASE_LABEL = {"distill": "distilled", "baseline": "baseline"}
EXPERIMENT = "search"  # Ray Tune's experiment folder, both phases in one
RUN_FILE = "run.json"
TRIALS_FILE = "trials.csv"
PROGRESS_FILE = "progress.csv"
OPTUNA_FILE = "optuna.db"
CONFIG_FILE = "config.yaml"


class SearchError(UserError, RuntimeError):
    """A search cannot start or continue: one line that says what to do."""


# --------------------------------------------------------------------------- the trainable
_DEVICE_DATA: dict[str, tuple[str, Dataset, torch.Tensor | None, Teacher | None]] = {}


def _tensors_as(convert: Any, obj: Any) -> Any:
    """`obj` with every tensor (or array) inside its dicts and dataclasses put through `convert`."""
    if isinstance(obj, dict):
        return {k: _tensors_as(convert, v) for k, v in obj.items()}
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.replace(obj, **{f.name: _tensors_as(convert, getattr(obj, f.name))
                                           for f in dataclasses.fields(obj)})
    if isinstance(obj, (torch.Tensor, np.ndarray)):
        return convert(obj)
    return obj


def _for_object_store(tensors: Any) -> Any:
    """CPU tensors as NumPy arrays, which a trial maps from Ray's object store without a copy:
    a torch tensor is unpickled into a copy, for every trial (0.17 s for MNIST's training set)."""
    return _tensors_as(lambda t: t.cpu().numpy(), tensors)


def _from_object_store(arrays: Any) -> Any:
    """The tensors of `_for_object_store`, sharing the object store's read-only memory."""
    with warnings.catch_warnings():
        # read-only: the trial never writes to its inputs (fit gathers and copies them)
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return _tensors_as(torch.from_numpy, arrays)


def _trial_inputs(payload: dict[str, Any], device: str
                  ) -> tuple[Dataset, torch.Tensor | None, Teacher | None]:
    """The payload's tensors on this trial's device, moved once per actor (reuse_actors=True).

    Keyed by the search's token, not id(payload): Ray deserialises the payload afresh for every
    trial, and a freed payload's id can come back for another search's data.
    """
    key = payload["token"]
    hit = _DEVICE_DATA.get(key)
    if hit is not None and hit[0] == device:
        return hit[1], hit[2], hit[3]
    _DEVICE_DATA.clear()
    data: Dataset = _from_object_store(payload["data"]).to(device)
    logits = _from_object_store(payload["teacher_logits"])
    logits = logits.to(device) if logits is not None else None
    teacher = None
    if payload["teacher_state"] is not None:
        from kdsearch.models import build_teacher

        cfg = config_from_dict(payload["config"])
        model = build_teacher(cfg.teacher.model, data.input_shape, data.num_classes,
                              width=cfg.teacher.width, dropout=cfg.teacher.dropout)
        model.load_state_dict(_from_object_store(payload["teacher_state"]))
        teacher = Teacher(model.to(device).eval(), logits, 0.0, "", None, False)
    elif logits is not None:
        teacher = Teacher(torch.nn.Identity(), logits, 0.0, "", None, False)
    _DEVICE_DATA[key] = (device, data, logits, teacher)
    return data, logits, teacher


def _trainable(params: dict[str, Any], payload: dict[str, Any]) -> None:
    """One trial: train the student of `params` and report every epoch to Ray Tune."""
    import ray
    from ray import tune

    finished = payload["finished"].get(tune.get_context().get_trial_id())
    if finished is not None:
        # The trial ended before the driver was killed, but Ray's experiment state (saved every
        # second) did not see it end, so Tune restarts it. Hand Tune, ASHA and the searcher the
        # result recorded in trials.csv instead of training it again.
        tune.report({**finished, "replayed": 1})
        return
    phase = _phase_of(params)
    params = {k: v for k, v in params.items() if k != PHASE_KEY}
    cfg = with_params(config_from_dict(payload["config"]), params)
    if phase == "baseline":
        cfg = dataclasses.replace(cfg, training=dataclasses.replace(cfg.training, alpha=1.0))
    # torch threads match this trial's CPU share, so concurrent trials do not oversubscribe
    threads = max(1, int(payload["cpus_per_trial"]))
    torch.set_num_threads(threads)
    gpu_ids = ray.get_gpu_ids()
    device = "cuda" if gpu_ids and torch.cuda.is_available() else "cpu"
    data, _, teacher = _trial_inputs(payload, device)

    resume = None
    resumed_metrics = None
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            # on the CPU: the generator's state must stay a CPU tensor; load_state_dict moves
            # the weights and the optimizer's moments to the model's device
            resume = torch.load(Path(d) / "state.pt", map_location="cpu", weights_only=True)
            if (Path(d) / "metrics.json").exists():
                resumed_metrics = json.loads((Path(d) / "metrics.json").read_text())
    extra = {"params": payload["params_by_width"].get(cfg.student.width, 0),
             "device": device, "gpu_ids": ",".join(str(g) for g in gpu_ids), "threads": threads,
             "node": socket.gethostname() + ":" + ray.get_runtime_context().get_node_id()[:8]}

    every = cfg.search.checkpoint_every_s
    last_saved = time.perf_counter()
    last_epoch = int(resume["epoch"]) if resume is not None else 0  # the last reported

    def report(metrics: dict[str, float], state: FitState) -> None:
        nonlocal last_saved, last_epoch
        last_epoch = int(metrics[EPOCH])
        metrics = {**metrics, **extra, "diverged": 0}
        # a checkpoint costs more than a small student's epoch: save one every few seconds
        if time.perf_counter() - last_saved < every:
            tune.report(metrics)
            return
        with tempfile.TemporaryDirectory() as d:
            torch.save(state.state_dict(), Path(d) / "state.pt")
            (Path(d) / "metrics.json").write_text(json.dumps(metrics))
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(d))
        last_saved = time.perf_counter()

    try:
        _, history = train_student(cfg, data, teacher=teacher if cfg.training.alpha < 1 else None,
                                   report=report, resume=resume)
        if not history and resumed_metrics is not None:
            # resumed from the checkpoint of its last epoch: the trial had ended, but the killed
            # driver's saved state did not show it (see _repair_checkpoints). Report that epoch
            # again, or Tune would end the trial on the older result it restored.
            tune.report({**resumed_metrics, **extra, "diverged": 0})
    except Diverged as e:
        # a diverged setting ends at once, recorded, with the worst score for the searcher:
        # retrying it would diverge again
        # (EPOCH: the epochs it completed, so ASHA ranks it only at the rungs it reached)
        tune.report({EPOCH: last_epoch, VAL_ACC: 0.0, VAL_LOSS: float("nan"),
                     TRAIN_LOSS: float("nan"), **extra, "diverged": 1, "error": str(e)})


def _retrain_task(payload: dict[str, Any], job: Retraining) -> Retrained:
    """A Ray task: one retraining of the final evaluation (`final.train_one`) on this worker's
    CPUs or GPU share, against the payload's data and teacher; the weights go back as arrays."""
    import ray

    from kdsearch.final import train_one

    torch.set_num_threads(job.threads or max(1, int(payload["cpus_per_trial"])))
    device = "cuda" if ray.get_gpu_ids() and torch.cuda.is_available() else "cpu"
    data, _, teacher = _trial_inputs(payload, device)
    return _for_object_store(train_one(job, data, teacher))


def _ray_runner(payload: dict[str, Any]) -> Runner:
    """A `final.Runner` that trains the final evaluation's models as Ray tasks, side by side on
    the cluster's CPUs and GPU shares (the trials' resources each), and yields each as it ends.

    The payload (data, teacher logits) goes to the object store once; the test split stays in
    the driver, which evaluates the weights that come back.
    """
    import ray

    task = ray.remote(_retrain_task).options(
        num_cpus=payload["cpus_per_trial"], num_gpus=payload["gpus_per_trial"], max_retries=0)

    def run(jobs: list[Retraining]) -> Iterator[tuple[Retraining, Retrained]]:
        if not jobs:
            return iter(())
        ref = ray.put({k: payload[k] for k in ("token", "config", "data", "teacher_logits",
                                               "teacher_state", "cpus_per_trial")})
        pending = {task.remote(ref, job): job for job in jobs}  # all submitted at once
        return _as_they_end(pending)

    def _as_they_end(pending: dict[Any, Retraining]) -> Iterator[tuple[Retraining, Retrained]]:
        try:
            while pending:
                [done], _ = ray.wait(list(pending), num_returns=1)
                job = pending.pop(done)
                try:
                    result = ray.get(done)
                except ray.exceptions.RayTaskError as e:
                    raise (e.cause if isinstance(e.cause, Exception) else e) from None
                yield job, _from_object_store(result)
        finally:
            for left in pending:
                ray.cancel(left, force=True)

    return run


# --------------------------------------------------------------------------- the space
def _optuna_space(dims: tuple[Dimension, ...]) -> dict[str, Any]:
    import optuna.distributions as od

    space: dict[str, Any] = {}
    for d in dims:
        if d.distribution == "choice":
            space[d.name] = od.CategoricalDistribution(list(d.values or ()))
        elif d.distribution == "int":
            space[d.name] = od.IntDistribution(int(d.low), int(d.high), step=int(d.step or 1))
        else:
            space[d.name] = od.FloatDistribution(float(d.low), float(d.high),
                                                 log=d.distribution == "loguniform")
    return space


def _phase_classes() -> tuple[type, type]:
    """`_PhaseSearcher` and `_PhaseScheduler`, which subclass Ray Tune's classes.

    Not at import time: importing Ray Tune takes seconds, and `kdsearch report` imports this
    module without needing Ray. The module's `__getattr__` defines them when unpickling a saved
    experiment (Tuner.restore) asks for them by name.
    """
    if "_PhaseSearcher" in globals():
        return globals()["_PhaseSearcher"], globals()["_PhaseScheduler"]
    import pickle

    from ray.tune.schedulers import FIFOScheduler
    from ray.tune.search import Searcher

    class _PhaseSearcher(Searcher):
        """Both searches in one Tuner: a searcher per arm (a phase, or a phase and a width with
        search.per_width), each with its own budget and the values it fixes.

        Suggestions alternate so that the arms advance side by side (the arm furthest behind
        its budget goes next); every trial's config names its phase, and results go back to
        the searcher that suggested it. One Tuner starts the trial actors once for both
        phases, and the cores are shared to the end, instead of idling through the tail and
        start-up between two Tuners.
        """

        def __init__(self, searchers: dict[str, Any], budgets: dict[str, int],
                     fixed: dict[str, dict[str, Any]]) -> None:
            super().__init__(metric=VAL_ACC, mode="max")
            self.searchers = searchers
            self.budgets = budgets
            self.fixed = fixed
            self.suggested = {a: 0 for a in searchers}
            self.arm_of: dict[str, str] = {}  # trial id -> its arm

        def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
            open_ = sorted((self.suggested[a] / self.budgets[a], i, a)
                           for i, a in enumerate(self.searchers)
                           if self.suggested[a] < self.budgets[a])
            if not open_:
                return Searcher.FINISHED
            for _, _, arm in open_:
                searcher = self.searchers[arm]
                # an arm with nothing left to search (only its width) trains its fixed values
                config = searcher.suggest(trial_id) if searcher is not None else {}
                if isinstance(config, dict):
                    self.suggested[arm] += 1
                    self.arm_of[trial_id] = arm
                    return {**config, **self.fixed[arm]}
            return None

        def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
            searcher = self.searchers.get(self.arm_of.get(trial_id, ""))
            if searcher is not None:
                searcher.on_trial_result(trial_id, result)

        def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None,
                              error: bool = False) -> None:
            searcher = self.searchers.get(self.arm_of.pop(trial_id, ""))
            if searcher is not None:
                searcher.on_trial_complete(trial_id, result=result, error=error)

        def save(self, checkpoint_path: str) -> None:
            with open(checkpoint_path, "wb") as f:
                pickle.dump(self.__dict__, f)

        def restore(self, checkpoint_path: str) -> None:
            with open(checkpoint_path, "rb") as f:  # Ray's own experiment state, as Tune does
                self.__dict__.update(pickle.load(f))
            self._match(_restored_trial_configs(Path(checkpoint_path)))

        def _match(self, configs: dict[str, dict[str, Any]] | None) -> None:
            """Count each arm's trials from the experiment state Tune restores with: Tune
            saves the experiment state first and this searcher's after it, so a kill between
            the two leaves a searcher that has not seen the newest trial and would suggest
            one more than the budget (seen in CI: 13 trials of 12)."""
            if configs is None:
                return
            counts = dict.fromkeys(self.suggested, 0)
            for config in configs.values():
                arm = next((a for a, fixed in self.fixed.items()
                            if all(config.get(k) == v for k, v in fixed.items())), None)
                if arm is not None:
                    counts[arm] += 1
            self.suggested = counts
            # a trial the experiment never had is not coming back; one this searcher never
            # suggested has no Optuna trial to report to: its results go nowhere, as before
            self.arm_of = {t: a for t, a in self.arm_of.items() if t in configs}

    class _PhaseScheduler(FIFOScheduler):
        """A scheduler per arm (ASHA or FIFO): trials are stopped early only by comparison
        with trials of their own phase (and width, with search.per_width), as if each ran
        alone."""

        def __init__(self, schedulers: dict[str, Any], per_width: bool) -> None:
            super().__init__()
            self.schedulers = schedulers
            self.per_width = per_width
            self._supports_buffered_results = all(
                s.supports_buffered_results for s in schedulers.values())

        def _of(self, trial: Any) -> Any:
            return self.schedulers[_arm(_phase_of(trial.config),
                                        trial.config.get("width") if self.per_width else None)]

        def set_search_properties(self, metric: str | None, mode: str | None,
                                  **spec: Any) -> bool:
            return all([s.set_search_properties(metric, mode, **spec)
                        for s in self.schedulers.values()])

        def on_trial_add(self, tune_controller: Any, trial: Any) -> None:
            self._of(trial).on_trial_add(tune_controller, trial)

        def on_trial_error(self, tune_controller: Any, trial: Any) -> None:
            self._of(trial).on_trial_error(tune_controller, trial)

        def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
            return self._of(trial).on_trial_result(tune_controller, trial, result)

        def on_trial_complete(self, tune_controller: Any, trial: Any, result: dict) -> None:
            self._of(trial).on_trial_complete(tune_controller, trial, result)

        def on_trial_remove(self, tune_controller: Any, trial: Any) -> None:
            self._of(trial).on_trial_remove(tune_controller, trial)

        def debug_string(self) -> str:
            return "\n".join(f"{p}: {s.debug_string()}" for p, s in self.schedulers.items())

    for cls in (_PhaseSearcher, _PhaseScheduler):
        cls.__qualname__ = cls.__name__  # pickled by reference: kdsearch.search.<name>
        globals()[cls.__name__] = cls
    return _PhaseSearcher, _PhaseScheduler


def __getattr__(name: str) -> Any:
    if name in ("_PhaseSearcher", "_PhaseScheduler"):
        _phase_classes()  # defines both
        return globals()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _phase_of(config: dict[str, Any]) -> str:
    """The phase a trial's config belongs to (set by `_PhaseSearcher`)."""
    return config.get(PHASE_KEY, "distill")


def _arm_seed(seed: int, arm: str) -> int:
    """A sampler seed per arm, below 2**32 (Optuna's limit), from search.seed and the arm."""
    import hashlib

    return int(hashlib.sha256(f"{seed}:{arm}".encode()).hexdigest()[:8], 16)


def _per_width(cfg: ExperimentConfig) -> bool:
    """search.per_width, where width is searched (without a searched width it changes nothing)."""
    return cfg.search.per_width and any(d.name == "width" for d in cfg.search.space)


def _restored_trial_configs(searcher_state: Path) -> dict[str, dict[str, Any]] | None:
    """trial id -> config of every trial in the experiment state beside `searcher_state`
    (searcher-state-<session>.pkl: experiment_state-<session>.json, the JSON Tune restores its
    trials from, read here without unpickling anything); None if it cannot be read."""
    m = re.match(r"^searcher-state-(.+)\.pkl$", searcher_state.name)
    if m is None:
        return None
    try:
        state = json.loads(searcher_state.with_name(f"experiment_state-{m.group(1)}.json")
                           .read_text())
        out = {}
        for entry in state["trial_data"]:
            trial = json.loads(entry[0]) if isinstance(entry[0], str) else entry[0]
            if isinstance(trial.get("config"), dict):
                out[trial["trial_id"]] = trial["config"]
        return out
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return None


def _searcher_seed(seed: int, arm: str, per_width: bool) -> int:
    """Each arm draws its own sequence from search.seed. With one searcher over all widths the
    distilled arm takes search.seed itself (as Optuna's own seed would), and the baseline its
    own: the same seed would give its first draws the distilled arm's random numbers."""
    return _arm_seed(seed, arm) if per_width or arm != _arm("distill", None) else seed


def _arm(phase: str, width: Any) -> str:
    return phase if width is None else f"{phase}:w{width}"


def _arms(cfg: ExperimentConfig, phases: list[str]
          ) -> dict[str, tuple[tuple[Dimension, ...], int, dict[str, Any]]]:
    """arm -> (its searched dimensions, its trial budget, the values it fixes).

    An arm is a phase; with search.per_width, a phase and one width, the phase's budget split
    evenly over the widths (the first widths take the remainder).
    """
    out: dict[str, tuple[tuple[Dimension, ...], int, dict[str, Any]]] = {}
    for phase in phases:
        dims, budget = phase_dimensions(cfg, phase), phase_samples(cfg, phase)
        if not _per_width(cfg):
            out[_arm(phase, None)] = (dims, budget, {PHASE_KEY: phase})
            continue
        widths = _widths(cfg)
        rest = tuple(d for d in dims if d.name != "width")
        for i, w in enumerate(widths):
            share = budget // len(widths) + (i < budget % len(widths))
            if share:
                out[_arm(phase, w)] = (rest, share, {"width": w, PHASE_KEY: phase})
    return out


def phase_dimensions(cfg: ExperimentConfig, phase: str) -> tuple[Dimension, ...]:
    if phase == "baseline":
        return tuple(d for d in cfg.search.space if d.name not in KD_DIMENSIONS)
    return cfg.search.space


def phase_samples(cfg: ExperimentConfig, phase: str) -> int:
    if phase == "baseline":
        return cfg.search.baseline_num_samples or cfg.search.num_samples
    return cfg.search.num_samples


def _widths(cfg: ExperimentConfig) -> list[int]:
    for d in cfg.search.space:
        if d.name == "width":
            if d.values is not None:
                return [int(v) for v in d.values]
            return list(range(int(d.low), int(d.high) + 1, int(d.step or 1)))
    return [cfg.student.width]


# --------------------------------------------------------------------------- resources
def _gpu_fraction(cfg: ExperimentConfig, data: Dataset) -> float:
    """A GPU share per trial: small students pack many to a GPU (at most 16), CNNs fewer."""
    if cfg.search.gpus_per_trial is not None:
        return cfg.search.gpus_per_trial
    model = _shape_only_student(cfg, data, max(_widths(cfg)))
    data_bytes = (data.train.x.numel() + data.val.x.numel()) * 4
    batch = int(largest(cfg, "batch_size", cfg.training.batch_size))  # the largest searched
    act = batch * sum(m.out_channels if hasattr(m, "out_channels") else 0
                      for m in model.modules()) * math.prod(data.input_shape[1:])
    # bytes: the data, weights + grads + Adam's two moments, activations (forward, backward)
    need = data_bytes + count_parameters(model) * 16 + act * 4 * 3
    # a trial that needs 4 GiB gets a whole GPU (its kernels fill it), a small one 1/16;
    # rounded up to 1/k so the shares tile a GPU exactly
    share = min(1.0, max(1 / 16, need / (4 * 2**30)))
    return 1.0 / math.floor(1.0 / share)


def _shape_only_student(cfg: ExperimentConfig, data: Dataset, width: int) -> torch.nn.Module:
    """The student of `width` on torch's meta device: its shapes without its memory, so the
    driver can count the parameters of a width too large to allocate (that trial fails alone,
    with the allocator's message, instead of the whole search)."""
    with torch.device("meta"):
        return build_student(cfg.student.model, data.input_shape, data.num_classes, width=width)


def _fit_concurrency(hardware: dict[str, Any], cpus_per_trial: float, gpus_per_trial: float
                     ) -> int:
    """As many trials at once as the cluster's CPUs (and GPU shares) hold."""
    n = math.floor(hardware["cpus"] / cpus_per_trial + 1e-9)
    if gpus_per_trial > 0:
        n = min(n, math.floor(hardware["gpus"] / gpus_per_trial + 1e-9))
    return max(1, n)


# --------------------------------------------------------------------------- Ray set-up
# Tune writes its state into a staging folder (each file as `.<uuid>-tmp-<name>`, then renamed)
# while a background thread may still be copying the previous snapshot out of that folder: the
# copy then fails on a temporary file that was renamed under it, and Tune logs the failure as an
# ERROR with a traceback (seen in CI). That snapshot is lost, not the state: the next one (within
# TUNE_GLOBAL_CHECKPOINT_S) copies the folder again, and the one Tune forces at the end of the
# search waits for every write. Only this failure is dropped; any other is still shown.
_STATE_LOGGER = "ray.tune.execution.experiment_state"
_TUNE_TMP_FILE = re.compile(r"/\.[0-9a-f]{8}(-[0-9a-f]{4}){3}-[0-9a-f]{12}-tmp-[^/']*'")


def _is_renamed_tmp_file_race(record: logging.LogRecord) -> bool:
    exc = record.exc_info[1] if record.exc_info else None
    return isinstance(exc, FileNotFoundError) and bool(_TUNE_TMP_FILE.search(str(exc)))


class _DropTmpFileRace(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not _is_renamed_tmp_file_race(record)


def _quiet_ray() -> None:
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    # experiment state saved often, so a killed driver loses (almost) no finished trial
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "1")
    for name in ("ray", "ray.tune", "ray.train", "ray.data"):
        logging.getLogger(name).setLevel(logging.ERROR)
    state_logger = logging.getLogger(_STATE_LOGGER)
    if not any(isinstance(f, _DropTmpFileRace) for f in state_logger.filters):
        state_logger.addFilter(_DropTmpFileRace())
    warnings.filterwarnings("ignore", module="ray")
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    # a resumed trial reports again the epochs after its checkpoint, which the restored Optuna
    # study has (OptunaSearch passes them on): Optuna keeps the first and warns, harmlessly
    warnings.filterwarnings("ignore", message="The reported value is ignored because this")


def _host_port(address: str) -> tuple[str, int] | None:
    """'HOST:PORT' or 'ray://HOST:PORT' -> (host, port); None for 'auto' and other forms."""
    rest = address.split("://", 1)[1] if "://" in address else address
    host, sep, port = rest.rstrip("/").rpartition(":")
    if not sep or not host or not port.isdigit():
        return None
    return host.strip("[]"), int(port)


def _check_reachable(address: str, timeout: float = 5.0) -> None:
    """Fail in seconds on an address nothing listens at: ray.init retries one for minutes."""
    if address in ("auto", "local"):
        return
    hp = _host_port(address)
    if hp is None or not 0 < hp[1] < 65536:
        raise SearchError(f"Ray cluster address {address!r} is not auto, HOST:PORT or "
                          f"ray://HOST:PORT (a port in 1-65535); pass the address printed by "
                          f"`ray start --head`, or omit --address for a local Ray")
    try:
        with socket.create_connection(hp, timeout=timeout):
            pass
    except OSError as e:
        why = "timed out" if isinstance(e, socket.timeout) else (e.strerror or type(e).__name__)
        raise SearchError(f"cannot reach the Ray cluster at {address!r} ({why}); check the "
                          f"address printed by `ray start --head`, or omit --address for a "
                          f"local Ray") from None


def _ray_address(address: str | None) -> str:
    """--address, else $RAY_ADDRESS, else "local": a Ray of our own. (ray.init() alone would
    join whatever cluster the last `ray start` on this machine left in
    /tmp/ray/ray_current_cluster, alive or not.)"""
    return address or os.environ.get("RAY_ADDRESS") or "local"


def _init_ray(address: str | None) -> bool:
    """Connect to (or start) Ray; True if we started it here and should shut it down."""
    import ray

    _quiet_ray()
    if ray.is_initialized():
        return False
    address = _ray_address(address)
    _check_reachable(address)
    # a Ray of our own: no idle workers started for the driver. Tune runs every trial in a
    # fresh actor process and never takes them, so they only spent ~1 s of CPU importing Ray
    # while the trial actors started (bench/RESULTS.md, item 3)
    own = {"_system_config": {"prestart_worker_first_driver": False}} \
        if address == "local" else {}
    try:
        ray.init(address=address, logging_level=logging.ERROR, log_to_driver=False,
                 include_dashboard=False, configure_logging=True, **own)
    except (ConnectionError, RuntimeError, ValueError, TimeoutError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise SearchError(f"cannot reach the Ray cluster at {address!r}: {first[:160]}; start "
                          f"it (ray start --head) or omit --address for a local Ray") from None
    return True


def _hardware() -> dict[str, Any]:
    import ray

    res = ray.cluster_resources()
    return {"cpus": res.get("CPU", 0), "gpus": res.get("GPU", 0),
            "nodes": len([n for n in ray.nodes() if n.get("Alive")]),
            "driver": f"{platform.node()} {platform.processor() or platform.machine()}",
            "torch": torch.__version__}


def _check_resources(cfg: ExperimentConfig) -> None:
    """A trial runs on one node: one that fits on none would leave Tune waiting forever."""
    import ray

    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    cpus = max((n.get("CPU", 0) for n in nodes), default=0)
    if cfg.search.cpus_per_trial > cpus:
        raise SearchError(f"search.cpus_per_trial = {cfg.search.cpus_per_trial:g} but the largest "
                          f"Ray node has {cpus:g} CPUs; lower it, e.g. --set "
                          f"search.cpus_per_trial={max(cpus, 1):g}")
    gpus = max((n.get("GPU", 0) for n in nodes), default=0)
    want = cfg.search.gpus_per_trial
    if gpus and want is not None and want > gpus:  # without GPUs the trials run on CPUs
        raise SearchError(f"search.gpus_per_trial = {want:g} but the largest Ray node has "
                          f"{gpus:g} GPUs; lower it, or leave it null for a share worked out "
                          f"from the model")


# --------------------------------------------------------------------------- trial records
TRIAL_FIELDS = ("phase", "trial_id", "status", "stopped_early", "diverged", "error", "epochs",
                "epoch_budget",
                "val_acc", "best_val_acc", "val_loss", "train_loss", "training_seconds",
                "params", "node", "gpu_ids")
# "epochs" in trials.csv is the epochs a trial ran; a searched `epochs` (its budget) goes to
# "epoch_budget", which every trial has
EPOCH_BUDGET = "epoch_budget"


def dim_column(name: str) -> str:
    """The trials.csv column that holds the searched dimension `name`."""
    return EPOCH_BUDGET if name == "epochs" else name


# columns that hold text even when they look like numbers: Tune's trial ids are 8 hex digits, so
# "76e61933" would read as a float (inf) and "01234567" as an int without its leading 0
TEXT_FIELDS = frozenset({"phase", "trial_id", "status", "error", "node", "gpu_ids"})
PROGRESS_FIELDS = ("phase", "trial_id", "epoch", "val_acc", "val_loss", "train_loss",
                   "epoch_seconds", "wall_time")


def _make_status_callback(results_dir: Path, cfg: ExperimentConfig, budgets: dict[str, int],
                          quiet: bool, *, fresh: bool,
                          params_by_width: dict[int, int] | None = None) -> Any:
    from ray import tune

    dims = {p: [d.name for d in phase_dimensions(cfg, p)] for p in budgets}

    class StatusCallback(tune.Callback):
        """Prints a live status line per trial and keeps trials.csv / progress.csv current.

        On resume (`fresh` False) it reloads what it wrote before the driver died and repairs it
        against the trials Ray restored: a trial recorded as ended is left as it is (the trainable
        replays its result, see `_trainable`), rows of trials that Ray's last experiment state
        never saw are dropped (the searcher suggests new ones in their place), and epochs a
        resumed trial trains again replace the rows they had, so progress.csv holds one row per
        (trial_id, epoch).
        """

        def __init__(self) -> None:
            self.records: dict[str, dict[str, Any]] = {}
            self.finished: set[str] = set()  # trials that ended before this driver started
            self.epochs: dict[str, dict[int, float]] = {}  # trial -> epoch -> epoch_seconds
            self.best = {p: float("nan") for p in budgets}
            self._progress = results_dir / PROGRESS_FILE
            self._repaired = fresh

        def setup(self, **info: Any) -> None:
            if fresh:
                # the search (re)started from scratch: rows of an earlier, killed attempt are void
                _write_csv_atomic(results_dir / TRIALS_FILE, [])
                self._rewrite_progress(lambda r: False)
                return
            for row in read_table(results_dir / TRIALS_FILE):
                self.records[row["trial_id"]] = row
            self.finished = {t for t, r in self.records.items() if r.get("status") == "TERMINATED"}
            for r in self._rewrite_progress(lambda r: True):  # also drops a row torn by a kill
                self.epochs.setdefault(r["trial_id"], {})[int(r["epoch"])] = \
                    float(r.get("epoch_seconds") or 0.0)
            for t in self.finished:
                r = self.records[t]
                if r.get("val_acc") not in (None, "") and not int(r.get("diverged") or 0):
                    self._better(r.get("phase", "distill"), float(r["val_acc"]))

        def _better(self, phase: str, acc: float) -> None:
            if phase in self.best:
                best = self.best[phase]
                self.best[phase] = acc if math.isnan(best) else max(best, acc)

        def _rewrite_progress(self, keep: Any) -> list[dict[str, Any]]:
            rows = [r for r in read_table(self._progress)
                    if None not in r and all(r.get(k) is not None for k in PROGRESS_FIELDS)
                    and r["epoch"].isdigit() and keep(r)]
            _write_csv_atomic(self._progress, rows, PROGRESS_FIELDS)
            return rows

        def on_step_begin(self, iteration: int, trials: list, **info: Any) -> None:
            if self._repaired:
                return
            self._repaired = True  # the first step sees the restored trials, nothing new yet
            known = {t.trial_id for t in trials}
            lost = {t for t in self.records if t not in known}
            for t in lost:
                del self.records[t]
                self.epochs.pop(t, None)
            self.finished -= lost
            if lost:
                self._rewrite_progress(lambda r: r["trial_id"] not in lost)
            self._write()
            if not quiet:
                print(f"search resumed: {len(self.finished)} of {sum(budgets.values())} trials "
                      f"had finished", flush=True)

        def _record(self, trial: Any, status: str, error: str = "",
                    last: dict[str, Any] | None = None) -> dict[str, Any]:
            # `last`: the result being processed (Tune sets trial.last_result after callbacks)
            last = last if last is not None else (trial.last_result or {})
            rec = self.records.get(trial.trial_id, {})
            best = rec.get("best_val_acc")
            acc = last.get(VAL_ACC)
            if acc is not None:
                best = max(float(best), float(acc)) if best not in (None, "") else float(acc)
            diverged = bool(last.get("diverged", 0))
            epochs = int(last.get(EPOCH, 0) or 0)
            budget = int(trial.config.get("epochs", cfg.training.epochs))  # epochs may be searched
            phase = _phase_of(trial.config)
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
                        (params_by_width or {}).get(
                            int(trial.config.get("width", cfg.student.width))),
                        "node": last.get("node", rec.get("node", "")),
                        "gpu_ids": last.get("gpu_ids", rec.get("gpu_ids", ""))})
            for name in dims.get(phase, []):
                if dim_column(name) == name:
                    rec[name] = trial.config.get(name)
            self.records[trial.trial_id] = rec
            return rec

        def _write(self) -> None:
            _write_csv_atomic(results_dir / TRIALS_FILE, list(self.records.values()))

        def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            if trial.trial_id in self.finished:
                return
            self._record(trial, "RUNNING")
            self._write()

        def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict,
                            **info: Any) -> None:
            if trial.trial_id in self.finished or result.get("replayed"):
                return
            if result.get("diverged"):  # not an epoch: the trial ends on it (see _trainable)
                return
            epoch = int(result.get(EPOCH, 0))
            seen = self.epochs.setdefault(trial.trial_id, {})
            if any(e >= epoch for e in seen):
                # resumed from a checkpoint older than its last reported epoch: the epochs
                # trained again replace the ones the killed driver recorded
                for e in [e for e in seen if e >= epoch]:
                    del seen[e]
                self._rewrite_progress(lambda r: not (
                    r["trial_id"] == trial.trial_id and int(r["epoch"]) >= epoch))
            seen[epoch] = float(result.get("epoch_seconds", 0.0))
            self._record(trial, "RUNNING", last=result)
            with open(self._progress, "a", newline="") as f:
                w = csv.DictWriter(f, fieldnames=PROGRESS_FIELDS, extrasaction="ignore")
                if f.tell() == 0:
                    w.writeheader()
                w.writerow({"phase": _phase_of(trial.config), "trial_id": trial.trial_id,
                            "wall_time": round(time.time(), 3), **result})

        def on_trial_complete(self, iteration: int, trials: list, trial: Any,
                              **info: Any) -> None:
            if trial.trial_id in self.finished:
                return
            rec = self._record(trial, "TERMINATED")
            if not rec["diverged"] and rec["val_acc"] is not None:
                self._better(rec["phase"], float(rec["val_acc"]))
            self._write()
            self._print(rec)

        def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            if trial.trial_id in self.finished:
                return
            err = ""
            if trial.error_file and Path(trial.error_file).exists():
                lines = [ln for ln in Path(trial.error_file).read_text().splitlines() if ln]
                err = lines[-1][:300] if lines else ""
            rec = self._record(trial, "ERROR", err or "the trial raised")
            self._write()
            self._print(rec)

        def on_experiment_end(self, trials: list, **info: Any) -> None:
            for t in trials:
                if t.trial_id in self.finished:
                    continue
                if t.trial_id not in self.records or t.status in ("PENDING", "PAUSED"):
                    self._record(t, t.status)
            self._write()

        def _print(self, rec: dict[str, Any]) -> None:
            if quiet:
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
            setting = " ".join(f"{n}={_fmt(rec.get(dim_column(n)))}" for n in dims.get(phase, []))
            best = self.best.get(phase, float("nan"))
            print(f"[{phase} {finished}/{budgets.get(phase, 0)}] {what}: val_acc "
                  f"{'-' if acc in (None, '') else f'{float(acc):.4f}'} ({setting}) | running "
                  f"{counts['running']}, done {counts['done']}, stopped early {counts['early']}, "
                  f"failed {counts['failed']} | best "
                  f"{'-' if math.isnan(best) else f'{best:.4f}'}", flush=True)

    return StatusCallback()


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3g}"
    return str(v)


def _write_csv_atomic(path: Path, rows: list[dict[str, Any]],
                      first_fields: tuple[str, ...] = TRIAL_FIELDS) -> None:
    fields: list[str] = list(first_fields)
    for r in rows:
        for k in r:
            if k not in fields:
                fields.append(k)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if v is None else v) for k, v in r.items()})
    files.write_text(path, buf.getvalue())


# --------------------------------------------------------------------------- results
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
        acc = self.best_metrics.get(VAL_ACC)
        setting = ", ".join(f"{k}={_fmt(v)}" for k, v in self.best_config.items())
        line = f"best distilled: val_acc {float(acc):.4f} ({setting})"
        if self.baseline_metrics:
            line += f"; best baseline: val_acc {float(self.baseline_metrics[VAL_ACC]):.4f}"
        line += f"; results in {self.results_dir}"
        if self.report_path:
            line += f"; report {self.report_path}"
        return line


def best_trial(rows: list[dict[str, Any]], phase: str, dims: list[str]
               ) -> tuple[dict[str, Any], dict[str, Any]] | None:
    ok = [r for r in rows if r.get("phase") == phase and r.get("status") == "TERMINATED"
          and not int(r.get("diverged") or 0) and r.get("val_acc") not in (None, "")]
    if not ok:
        return None
    top = max(ok, key=rank_key)
    return ({d: _parse(top.get(dim_column(d))) for d in dims},
            {k: v if k in TEXT_FIELDS else _parse(v) for k, v in top.items()})


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


def _parse(v: Any) -> Any:
    if not isinstance(v, str):
        return v
    for cast in (int, float):
        try:
            return cast(v)
        except ValueError:
            pass
    return v


def _export_optuna(results_dir: Path, cfg: ExperimentConfig) -> None:
    """Write the searched trials into an Optuna study file that optuna.load_study opens."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    rows = read_table(results_dir / TRIALS_FILE)
    path = results_dir / OPTUNA_FILE
    tmp = results_dir / (OPTUNA_FILE + ".tmp")
    tmp.unlink(missing_ok=True)
    storage = f"sqlite:///{tmp}"
    study = None
    for phase in PHASES:
        dims = phase_dimensions(cfg, phase)
        dists = _optuna_space(dims)
        phase_rows = [r for r in rows if r.get("phase") == phase]
        if not phase_rows:
            continue
        study = optuna.create_study(study_name=phase, storage=storage, direction="maximize")
        for r in phase_rows:
            params = {d.name: _parse(r.get(dim_column(d.name))) for d in dims}
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
                    user_attrs={"trial_id": r["trial_id"], "epochs": _parse(r.get("epochs")),
                                "val_acc": _parse(r.get("val_acc"))}))
            except (ValueError, TypeError):
                continue
    del study
    if tmp.exists():
        os.replace(tmp, path)


# --------------------------------------------------------------------------- the driver
def _results_dir(cfg: ExperimentConfig, results_root: str | os.PathLike[str]) -> Path:
    return (Path(results_root) / cfg.name).resolve()


def _check_results_dir(out: Path) -> None:
    """The results folder can be made: checked before Ray starts and before anything is written."""
    if out.exists() and not out.is_dir():
        raise SearchError(f"{out} exists and is not a folder; move it away or pick another "
                          f"--results-dir or --set name=...")
    _check_makeable(out.parent, f"cannot make {out}", "pick another --results-dir")


def _check_makeable(folder: Path, what: str, fix: str) -> None:
    """`folder` is one, or can be made: its nearest existing ancestor is a writable folder."""
    parent = folder
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise SearchError(f"{what}: {parent} is a file, not a folder; {fix}")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise SearchError(f"{what}: {parent} is not writable; {fix}")


def _write_run(results_dir: Path, run: dict[str, Any]) -> None:
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
    try:
        run = json.loads((results_dir / RUN_FILE).read_text())
    except (OSError, ValueError):
        raise SearchError(f"{results_dir}: no readable {RUN_FILE}; this is not a kdsearch "
                          f"results folder (pass results/<name> of a search)") from None
    return check_run(run, results_dir / RUN_FILE)


def _prepare(cfg: ExperimentConfig, device: str = "cpu", *, progress: bool = True
             ) -> tuple[Dataset, Teacher | None]:
    cache_dir = default_cache_dir(cfg)
    # a missing teacher trains on the driver's GPU when it has one; the trials get CPU tensors
    # through the object store and move them to their own device once
    train_on = "cuda" if torch.cuda.is_available() else device
    data = load_dataset(cfg.dataset, data_dir=default_data_dir(cfg), cache_dir=cache_dir,
                        device=train_on)
    teacher = get_teacher(cfg, data, cache_dir=cache_dir, progress=progress)
    if progress and teacher is not None:
        print(f"teacher: {cfg.teacher.model} on {cfg.dataset.name}, val_acc "
              f"{teacher.val_acc:.4f} ({'trained now' if teacher.trained_now else 'cached'}); "
              f"{len(data.train):,} training and {len(data.val):,} validation examples",
              flush=True)
    if train_on != device:
        data = data.to(device)
        if teacher is not None:
            teacher = dataclasses.replace(teacher, model=teacher.model.to(device),
                                          train_logits=teacher.train_logits.to(device))
    return data, teacher


TPE_STARTUP_TRIALS = 10  # Optuna's TPESampler's n_startup_trials, kept when it is not set


def _random_search_note(cfg: ExperimentConfig, phases: list[str]) -> str | None:
    """What to tell a user whose TPE budget never gets past TPE's random start-up trials."""
    s = cfg.search
    startup = s.startup_trials or TPE_STARTUP_TRIALS
    budgets = [n for dims, n, _ in _arms(cfg, phases).values() if dims]  # arms with a searcher
    if s.algorithm != "tpe" or not budgets or min(budgets) > startup:
        return None
    least = min(budgets)
    per = " per width" if _per_width(cfg) else ""
    return (f"note: TPE draws its first {startup} trials{per} at random, and this search has "
            f"as few as {least}{per}: random search with {s.scheduler.upper()} there (raise "
            f"search.num_samples, or lower search.startup_trials, for TPE's own suggestions)")


def _sampler(search: SearchConfig, seed: int) -> Any:
    """The seeded Optuna sampler of one searcher: TPE, whose first `search.startup_trials`
    (Optuna's 10 when null) are drawn at random, or random search, for comparisons."""
    import optuna

    if search.algorithm == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(
        seed=seed, n_startup_trials=search.startup_trials or TPE_STARTUP_TRIALS)


def _run_tuner(phases: list[str], cfg: ExperimentConfig, results_dir: Path, storage_path: str,
               payload_ref: dict[str, Any], *, restore: bool, quiet: bool) -> None:
    """Both phases' trials in one Tuner (see `_PhaseSearcher`); returns when all have ended."""
    import optuna
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    from ray.tune.search.optuna import OptunaSearch

    phase_searcher, phase_scheduler = _phase_classes()
    s = cfg.search
    per_width, widths = _per_width(cfg), _widths(cfg)
    budgets = {p: phase_samples(cfg, p) for p in phases}
    total = sum(budgets.values())
    local = "://" not in storage_path
    exp_path = str(Path(storage_path) / EXPERIMENT) if local \
        else storage_path.rstrip("/") + "/" + EXPERIMENT
    torn = None
    if restore and local:
        torn = _mend_torn_state(exp_path, log=None if quiet else
                                lambda line: print(line, flush=True))
        if torn and not quiet:
            print(f"note: Ray's saved state of this search (session {torn[0]}) was cut short by "
                  f"the kill; " + ("taken whole from Ray's staging folder" if torn[1] else
                                   "continuing from the state saved before it, or from the "
                                   "start if there is none"), flush=True)
    wanted = restore
    restore = restore and tune.Tuner.can_restore(exp_path) and (
        not local or any(Path(exp_path).glob("experiment_state-*.json")))
    if wanted and not restore and torn is None:  # (a torn state set aside was noted above)
        ended = [r for r in read_table(results_dir / TRIALS_FILE)
                 if r.get("status") in ("TERMINATED", "ERROR")]
        if ended:  # starting over would drop them from trials.csv
            raise SearchError(f"{results_dir}: Ray Tune's saved state of this search is not in "
                              f"{exp_path}, so its {len(ended)} ended trials cannot be resumed; "
                              f"put the folder (or --storage-path) back, `kdsearch report "
                              f"{results_dir}` what it has, or start over with `kdsearch run "
                              f"... --force`")
        if not quiet:
            print("note: the interrupted attempt saved no search state and ended no trial; "
                  "starting the search from the beginning", flush=True)
    if not restore and local:
        shutil.rmtree(exp_path, ignore_errors=True)  # a killed attempt that saved no state yet
    payload = dict(payload_ref, finished=_finished_trials(results_dir) if restore else {})
    trainable = tune.with_parameters(_trainable, payload=payload)
    resources = {"cpu": s.cpus_per_trial, "gpu": payload["gpus_per_trial"]}
    trainable = tune.with_resources(trainable, resources)
    callback = _make_status_callback(results_dir, cfg, budgets, quiet, fresh=not restore,
                                     params_by_width=payload["params_by_width"])
    failure = tune.FailureConfig(max_failures=s.max_failures)
    run_config = tune.RunConfig(name=EXPERIMENT, storage_path=storage_path, verbose=0,
                                callbacks=[callback], failure_config=failure,
                                checkpoint_config=tune.CheckpointConfig(num_to_keep=1))
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    if restore:
        _repair_checkpoints(exp_path)
        tuner = tune.Tuner.restore(exp_path, trainable=trainable, resume_unfinished=True,
                                   resume_errored=True)
        # callbacks are not restored with the experiment: the status callback is re-attached
        # (Tuner.restore has no argument for them, so they are set on its run config)
        tuner._local_tuner.get_run_config().callbacks = [callback]
    else:
        searchers, schedulers = {}, {}
        arms = _arms(cfg, phases)
        for arm, (dims, _, _) in arms.items():
            # seeded: TPE, or random search (Optuna's RandomSampler) for comparisons
            seed = _searcher_seed(s.seed, arm, per_width)
            searchers[arm] = OptunaSearch(_optuna_space(dims), metric=VAL_ACC, mode="max",
                                          sampler=_sampler(s, seed)) if dims else None
            schedulers[arm] = (ASHAScheduler(time_attr=EPOCH, max_t=max_epochs(cfg),
                                             grace_period=s.grace_period,
                                             reduction_factor=s.reduction_factor)
                               if s.scheduler == "asha" else FIFOScheduler())
        tune_config = tune.TuneConfig(
            metric=VAL_ACC, mode="max",
            search_alg=phase_searcher(searchers, {a: v[1] for a, v in arms.items()},
                                      {a: v[2] for a, v in arms.items()}),
            scheduler=phase_scheduler(schedulers, per_width), num_samples=total,
            max_concurrent_trials=payload["concurrency"], reuse_actors=True)
        tuner = tune.Tuner(trainable, tune_config=tune_config, run_config=run_config)
    if local:
        _keep_tuner_copy(exp_path)
    if not quiet:
        kinds = " and ".join(f"{budgets[p]} {PHASE_LABEL[p]}" for p in phases)
        split = f", split evenly over {len(widths)} widths" if per_width and len(widths) > 1 else ""
        print(f"search: {kinds} trials of {cfg.student.model} on {cfg.dataset.name}"
              f"{', side by side' if len(phases) > 1 else ''}, {s.algorithm.upper()} + "
              f"{s.scheduler.upper()}, up to {max_epochs(cfg)} epochs each, "
              f"{payload['concurrency']} at a time"
              f"{split}",
              flush=True)
        if per_width and min(budgets.values()) < len(widths):
            print(f"note: fewer trials than widths ({len(widths)}): only the first "
                  f"widths get a trial; raise search.num_samples to tune them all", flush=True)
        note = _random_search_note(cfg, phases)
        if note:
            print(note, flush=True)
        print("search: starting the trial workers (each imports torch and Ray first)",
              flush=True)
    handler = signal.getsignal(signal.SIGINT)
    try:
        grid = tuner.fit()
    finally:
        # fit() installs Tune's own SIGINT handler and leaves it there when the search ends
        # without a Ctrl-C: the first Ctrl-C of the final evaluation would be swallowed
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, handler)
    # Tune catches Ctrl-C (SIGINT) itself: fit() then returns early, with its state saved, as
    # if the search had ended. Fewer ended trials than planned means it was interrupted: it
    # must not be marked finished, nor the report run on half a search.
    ended = grid.num_terminated + grid.num_errors
    if ended < total:
        raise KeyboardInterrupt(f"search interrupted after {ended} of {total} trials")


def _mend_torn_state(exp_path: str, log: Callable[[str], None] | None = None
                     ) -> tuple[str, bool] | None:
    """Mend the newest saved state if a kill cut it short: (its session, recovered?).

    Tune writes its state (experiment_state-<session>.json, the searcher's two pickles) into a
    staging folder under Ray's temp dir on the driver, and copies that whole
    folder into the results folder in the background, not atomically: a driver killed mid-copy
    leaves whichever file was being copied truncated (seen: an empty search_gen_state beside a
    whole experiment state), and Tuner.restore fails on it. The staging copy is whole (written
    before the copy began) and outlives a killed driver on the same machine: if it is there,
    and is this search's (it names trials this folder has), its files replace the torn ones.
    Otherwise that session's files are renamed `.torn-<name>`, and Tune restores the whole
    session before it (trials it never saw are dropped and suggested anew, see the status
    callback) or, if there is none, the search starts over in a cleared folder. None when the
    newest state is whole. A torn tuner.pkl is replaced by kdsearch's copy of it; with no whole
    copy it is a SearchError, before anything changes. Nothing is unpickled: a pickle is
    checked opcode by opcode. `log` is told when tuner.pkl is replaced.
    """
    folder = Path(exp_path)
    if not folder.is_dir():
        return None
    tuner = folder / "tuner.pkl"
    if tuner.exists() and not _readable_pickle(tuner):
        # Tune writes tuner.pkl straight into this folder, again on every restore: kdsearch's
        # own copy of it (see _keep_tuner_copy) is the one that outlives a torn write
        whole = folder / TUNER_COPY
        if not _readable_pickle(whole):  # Tune cannot restore without it; nothing is changed
            raise SearchError(f"{tuner} was cut short by a kill and kdsearch's copy of it "
                              f"({whole.name}) is missing or torn too, so this search cannot "
                              f"be resumed; run it again with kdsearch run --force")
        files.copy(whole, tuner)
        if log is not None:
            log(f"note: {tuner.name} (Ray Tune's saved Tuner) was cut short by the kill; "
                f"replaced by kdsearch's copy of it, {whole.name}")
    mended: tuple[str, bool] | None = None
    while True:
        sessions = sorted({m.group(2) for f in folder.iterdir()
                           if (m := _STATE_FILE.match(f.name))})
        if not sessions:
            return mended
        session = sessions[-1]  # Tune restores the newest state file of each kind
        if _whole_session(folder, session):
            return mended
        for d in _staging_folders(folder):
            if _whole_session(d, session):
                for f in _session_files(d, session):
                    files.copy(f, folder / f.name)
                return mended or (session, True)
        for f in _session_files(folder, session):
            os.replace(f, f.with_name(f".torn-{f.name}"))
        mended = mended or (session, False)


def _staging_folders(folder: Path) -> Iterator[Path]:
    """Ray's staging folders on this machine of the search in `folder` (they name trials it
    has), newest Ray session first. Only looked for when a state is torn: Ray's temp dir keeps
    every session's folder, hundreds on a machine that has run many searches."""
    ours = {d.name for d in folder.glob("_trainable_*") if d.is_dir()}
    ray_tmp = Path(os.environ.get("RAY_TMPDIR") or tempfile.gettempdir()) / "ray"
    for d in sorted(ray_tmp.glob(f"session_*/artifacts/*/{folder.name}/driver_artifacts"),
                    reverse=True):
        if ours & {t.name for t in d.glob("_trainable_*") if t.is_dir()}:
            yield d


_STATE_FILE = re.compile(r"^(experiment_state|search_gen_state|searcher-state)-(.+)\.(json|pkl)$")


def _session_files(folder: Path, session: str) -> list[Path]:
    return [f for f in folder.iterdir()
            if (m := _STATE_FILE.match(f.name)) and m.group(2) == session and f.is_file()]


TUNER_COPY = ".kdsearch-tuner.pkl"


def _keep_tuner_copy(exp_path: str) -> None:
    """Keep a copy of the tuner.pkl that Tune has just written whole (Tuner created or
    restored), for _mend_torn_state: a kill during Tune's next write of it would tear it."""
    tuner = Path(exp_path) / "tuner.pkl"
    if _readable_pickle(tuner):
        files.copy(tuner, tuner.with_name(TUNER_COPY))


def _whole_session(folder: Path, session: str) -> bool:
    """`session` saved an experiment state in `folder`, and each of its files reads whole (the
    experiment state is JSON; search_gen_state-*.json, despite its name, and
    searcher-state-*.pkl are pickles)."""
    state_files = _session_files(folder, session)
    return (folder / f"experiment_state-{session}.json").is_file() and all(
        _readable_json(f) if f.name.startswith("experiment_state-") else _readable_pickle(f)
        for f in state_files)


def _readable_pickle(path: Path) -> bool:
    """A whole pickle stream, read opcode by opcode without running it: a truncated or empty
    file fails (pickletools raises ValueError at the cut), and nothing is imported or built."""
    import pickletools

    try:
        for _ in pickletools.genops(path.read_bytes()):
            pass
        return True
    except (OSError, ValueError):
        return False


def _readable_json(path: Path) -> bool:
    try:
        json.loads(path.read_text())
        return True
    except (OSError, ValueError):
        return False


def _repair_checkpoints(exp_path: str) -> list[str]:
    """Point each unfinished trial of a killed run at a checkpoint that is on disk.

    Tune keeps one checkpoint per trial (num_to_keep=1): registering a new one deletes the old
    one at once, but the experiment state that names the checkpoint a resumed trial restores
    from is written a moment later and copied into the results folder in the background. A
    driver killed in that gap leaves a state naming a deleted checkpoint, and Tune fails the
    trial on resume ("does not exist on storage anymore"). The checkpoint that replaced it is
    on disk: it takes the expected name (the trial resumes from its later epoch; ASHA and
    progress.csv go by the epoch in the checkpoint, not Tune's iteration count). That is the
    oldest newer one: any newer still were written by the trial but never seen by the driver,
    so their epochs have no rows in progress.csv. Returns the checkpoints repaired. Local
    storage only.
    """
    if "://" in exp_path:
        return []
    from ray.tune.execution.experiment_state import _find_newest_experiment_checkpoint
    from ray.tune.experiment import Trial
    from ray.tune.utils.serialization import _loads_with_cloudpickle

    state_file = _find_newest_experiment_checkpoint(exp_path)
    if state_file is None:
        return []
    try:
        state = _loads_with_cloudpickle(Path(state_file).read_text())
        trials = []
        for json_state, metadata in state["trial_data"]:
            trial = Trial.from_json_state(json_state, stub=True)
            trial.restore_run_metadata(metadata)
            trials.append(trial)
    except (KeyError, TypeError, ValueError, AttributeError) as e:  # JSON of another shape
        raise SearchError(f"{state_file}: Ray Tune's saved state of this search is damaged "
                          f"({type(e).__name__}); restore the folder from a copy, `kdsearch "
                          f"report` what it has, or start over with `kdsearch run ... --force`"
                          ) from None
    repaired = []
    for trial in trials:
        if trial.status == Trial.TERMINATED or trial.checkpoint is None:
            continue
        trial_dir = Path(exp_path) / trial.storage.trial_dir_name
        wanted = trial_dir / Path(trial.checkpoint.path).name
        if wanted.exists():
            continue
        for newer in sorted(trial_dir.glob("checkpoint_*")):
            if newer.name <= wanted.name:
                continue
            try:  # skip one the kill cut short while it was being written
                torch.load(newer / "state.pt", map_location="cpu", weights_only=True)
            except Exception:
                continue
            os.replace(newer, wanted)
            repaired.append(str(wanted))
            break
    return repaired


def _finished_trials(results_dir: Path) -> dict[str, dict[str, Any]]:
    """The final result of every trial that trials.csv records as ended."""
    out: dict[str, dict[str, Any]] = {}
    for r in read_table(results_dir / TRIALS_FILE):
        if r.get("status") != "TERMINATED":
            continue
        metrics = {k: r[k] if k in TEXT_FIELDS else _parse(r[k])
                   for k in (VAL_LOSS, TRAIN_LOSS, "params", "node", "gpu_ids", "error")
                   if r.get(k) not in (None, "")}
        out[r["trial_id"]] = {**metrics, EPOCH: int(_parse(r.get("epochs") or 0)),
                              VAL_ACC: float(_parse(r.get("val_acc") or 0.0)),
                              "diverged": int(_parse(r.get("diverged") or 0))}
    return out


@dataclass
class _Prepared:
    """What a search needs before its first trial: loaded (and checked) before anything is
    written, so that bad input (a missing dataset, a val_size too large) leaves no folder."""

    data: Dataset
    teacher: Teacher | None
    hardware: dict[str, Any]
    payload: dict[str, Any]


def _prepare_search(cfg: ExperimentConfig, quiet: bool) -> _Prepared:
    data, teacher = _prepare(cfg, progress=not quiet)
    hardware = _hardware()
    return _Prepared(data, teacher, hardware, _make_payload(cfg, data, teacher, hardware))


def _execute(cfg: ExperimentConfig, results_dir: Path, run: dict[str, Any], *,
             restore: bool, quiet: bool, report: bool,
             prepared: _Prepared | None = None) -> SearchResult:
    prepared = prepared or _prepare_search(cfg, quiet)
    data, teacher, payload = prepared.data, prepared.teacher, prepared.payload
    run["teacher"] = {"key": teacher.key if teacher else None,
                      "val_acc": teacher.val_acc if teacher else None}
    run["hardware"] = prepared.hardware
    run["gpus_per_trial"] = payload["gpus_per_trial"]
    run["max_concurrent_trials"] = payload["concurrency"]
    phases = [p for p in PHASES if p == "distill" or cfg.search.baseline]
    state = run.get("search", {})
    if state.get("status") != "finished":
        started = state.get("status") == "started"
        run["search"] = {"status": "started", "started": state.get("started", time.time()),
                         "wall_seconds": state.get("wall_seconds", 0.0)}
        _write_run(results_dir, run)
        t0 = time.time()
        try:
            _run_tuner(phases, cfg, results_dir, run["storage_path"], payload,
                       restore=restore or started, quiet=quiet)
        except BaseException:
            # Ctrl-C or an error: the search stays "started", and a resume adds to its time
            run["search"]["wall_seconds"] += time.time() - t0
            _write_run(results_dir, run)
            raise
        run["search"].update(status="finished", finished=time.time(),
                             wall_seconds=run["search"]["wall_seconds"] + time.time() - t0)
        _write_run(results_dir, run)
    if not (results_dir / OPTUNA_FILE).exists():  # (a kill may have come before the export)
        _export_optuna(results_dir, cfg)
    rows = read_table(results_dir / TRIALS_FILE)
    best = best_trial(rows, "distill", [d.name for d in phase_dimensions(cfg, "distill")])
    if best is None:
        hint = ""
        if any("never ran" in (r.get("error") or "") for r in rows):
            # what a driver in token mode sees on a cluster started with RAY_AUTH_MODE=disabled
            hint = ("; the trial actors never started: if the cluster was started with "
                    "RAY_AUTH_MODE=disabled, set it for kdsearch too")
        raise SearchError(f"{results_dir}: no distillation trial finished; see {TRIALS_FILE} "
                          f"for the errors{hint}")
    base = best_trial(rows, "baseline", [d.name for d in phase_dimensions(cfg, "baseline")])
    result = SearchResult(results_dir, best[0], best[1], base[0] if base else None,
                          base[1] if base else None)
    if report:
        from kdsearch.report import make_report

        # retrain=False: a resume of a search already reported reuses final.json's retrainings
        # of the settings that did not change (they are keyed by setting, seeds and teacher)
        result.report_path = make_report(results_dir, retrain=False, runner=_ray_runner(payload),
                                         quiet=quiet, loaded=(data, teacher) if teacher else None)
    return result


def _make_payload(cfg: ExperimentConfig, data: Dataset, teacher: Teacher | None,
                  hardware: dict[str, Any]) -> dict[str, Any]:
    """What every trial (and final retraining) gets through the object store, once."""
    online = cfg.training.shift > 0
    gpus_per_trial = _gpu_fraction(cfg, data) if hardware["gpus"] else 0.0
    return {
        "token": uuid.uuid4().hex,  # names this search's tensors in each trial actor's cache
        "config": _config_dict(cfg),
        "data": _for_object_store(data),
        "teacher_logits": _for_object_store(teacher.train_logits) if teacher else None,
        "teacher_state": (_for_object_store(teacher.model.state_dict())
                          if teacher and online else None),
        "cpus_per_trial": cfg.search.cpus_per_trial,
        "gpus_per_trial": gpus_per_trial,
        "params_by_width": {w: count_parameters(_shape_only_student(cfg, data, w))
                            for w in _widths(cfg)},
        # Tune runs an Optuna searcher's trials one at a time unless told how many may run at once
        "concurrency": cfg.search.max_concurrent_trials or _fit_concurrency(
            hardware, cfg.search.cpus_per_trial, gpus_per_trial),
    }


def _config_dict(cfg: ExperimentConfig) -> dict[str, Any]:
    import yaml

    return yaml.safe_load(dump_config(cfg))


def run_search(space: str | os.PathLike[str] | ExperimentConfig, *,
               overrides: list[str] | tuple[str, ...] = (), address: str | None = None,
               results_dir: str | os.PathLike[str] = "results",
               storage_path: str | None = None, force: bool = False, report: bool = True,
               quiet: bool = False) -> SearchResult:
    """Run the search described by a space file (or config); return what it found.

    The results land in `<results_dir>/<name>/`. An existing folder of that name is never
    overwritten unless `force=True`; continue it with `resume_search` instead.
    """
    if isinstance(space, ExperimentConfig):
        cfg = space
    else:
        cfg = load_config(space, overrides)
    check_searchable(cfg, cfg.name if isinstance(space, ExperimentConfig) else str(space))
    out = _results_dir(cfg, results_dir)
    _check_results_dir(out)
    _refuse_existing(out, force)
    # everything that can fail on bad input fails before anything is written
    typed = storage_path
    if storage_path is not None and "://" not in storage_path and \
            not Path(storage_path).is_absolute():
        storage_path = str(Path(storage_path).resolve())
    if storage_path is not None:
        storage_path = storage_path.rstrip("/") + "/" + cfg.name if "://" in storage_path \
            else str(Path(storage_path) / cfg.name)
    _check_storage(storage_path, typed)
    with _ray_for(address, out, quiet=quiet):
        _check_resources(cfg)
        prepared = _prepare_search(cfg, quiet)  # data and teacher: before a file is touched
        with _exclusive(out):
            _refuse_existing(out, force)  # another kdsearch may have made it while we prepared
            return _start(cfg, out, storage_path, force, prepared, quiet=quiet, report=report)


def _refuse_existing(out: Path, force: bool) -> None:
    if out.is_dir() and any(out.iterdir()) and not force:
        raise SearchError(f"{out} already exists; continue it with `kdsearch resume {out}`, "
                          f"replace it with --force, or pick another --set name=...")


def _start(cfg: ExperimentConfig, out: Path, storage_path: str | None, force: bool,
           prepared: _Prepared, *, quiet: bool, report: bool) -> SearchResult:
    """Make the results folder (emptied first with --force) and run the search in it."""
    if out.exists() and force:
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    files.write_text(out / CONFIG_FILE,
                     f"# kdsearch {__version__}: resolved config\n" + dump_config(cfg))
    run: dict[str, Any] = {"kdsearch_version": __version__, "name": cfg.name,
                           "storage_path": storage_path or str(out),
                           "storage_is_results_dir": storage_path is None,
                           "created": time.time()}
    _write_run(out, run)
    return _execute(cfg, out, run, restore=False, quiet=quiet, report=report,
                    prepared=prepared)


def _check_storage(storage_path: str | None, typed: str | None = None) -> None:
    """A local storage path must be a folder, or one that can be made: not under a file.
    `typed`: the --storage-path the user gave (the search's name is added to it)."""
    if storage_path is not None and "://" not in storage_path:
        _check_makeable(Path(storage_path), f"--storage-path {typed or storage_path}",
                        "pass a folder you can write to (or a URI such as s3://bucket/path)")


def resume_search(results: str | os.PathLike[str], *, address: str | None = None,
                  report: bool = True, quiet: bool = False) -> SearchResult:
    """Continue an interrupted search: finished trials kept, unfinished ones resumed."""
    out = Path(results).resolve()
    if not out.is_dir():
        raise SearchError(f"{results}: no such results folder; pass results/<name> of a search")
    run = read_run(out)
    cfg = config_from_dict(read_yaml(out / CONFIG_FILE), source=str(out / CONFIG_FILE))
    from kdsearch.final import check_consistent

    read_table(out / PROGRESS_FILE)  # damaged tables: refused before Ray starts
    trials = read_table(out / TRIALS_FILE)
    check_consistent(cfg, trials, out)
    if "search" not in run and run.get("phases"):  # the older layout, see search_state
        run["search"] = search_state(run)
        if run["search"]["status"] != "finished":
            raise SearchError(f"{out}: an unfinished search of an older kdsearch (a Tuner per "
                              f"phase), which this version cannot resume; start it again with "
                              f"`kdsearch run ... --force`, or `kdsearch report {out}` for what "
                              f"it has")
    if run.get("storage_is_results_dir", True):
        ran_in = run.get("storage_path")
        if search_state(run).get("status") != "finished" and ran_in \
                and Path(ran_in).resolve() != out:
            # Tune's saved state names the folder it ran in: resumed elsewhere, its trials
            # would write their checkpoints there (or fail where it is gone)
            raise SearchError(f"{out}: this search ran in {ran_in}, and Ray Tune's saved state "
                              f"names that folder, so it resumes only there: move it back and "
                              f"`kdsearch resume {ran_in}` (`kdsearch report {out}` works "
                              f"anywhere)")
        run["storage_path"] = str(out)  # a finished search, reported from where it is now
    if search_state(run).get("status") == "finished" and not quiet:
        print(f"note: this search had finished ({len(trials)} trials); "
              f"nothing to resume" + (", the report is written again (its retrainings reused "
                                      "where the settings are unchanged)" if report else ""),
              flush=True)
    with _ray_for(address, out, quiet=quiet), _exclusive(out):
        _check_resources(cfg)
        return _execute(cfg, out, run, restore=True, quiet=quiet, report=report)


@contextlib.contextmanager
def _exclusive(out: Path) -> Iterator[None]:
    """One kdsearch at a time runs or resumes the search in `out` (a lock beside the folder,
    held while it runs): two at once would write their trials into one folder."""
    from filelock import FileLock, Timeout

    path = out.parent / f".{out.name}.kdsearch-lock"
    out.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(path))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise SearchError(f"another kdsearch is running the search in {out} (it holds {path}); "
                          f"wait for it to end, or pick another --set name=...") from None
    try:
        yield
    finally:
        path.unlink(missing_ok=True)
        lock.release()


def report_search(results: str | os.PathLike[str], *, address: str | None = None,
                  device: str = "auto", quiet: bool = False) -> Path:
    """`kdsearch report`: retrain the best settings of a results folder and write its report,
    the retrainings as Ray tasks side by side, as `run` does (`report.make_report` alone runs
    them one after the other in this process). Returns report.md's path."""
    from kdsearch.final import read_searched
    from kdsearch.report import make_report

    out = Path(results).resolve()
    cfg, _ = read_searched(out)  # a folder that is not a search's is refused before Ray starts
    again = f"the report was not written; run kdsearch report {out} again"
    with _ray_for(address, out, interrupted=again, quiet=quiet):
        _check_resources(cfg)
        data, teacher = _prepare(cfg, progress=not quiet)
        payload = _make_payload(cfg, data, teacher, _hardware())
        return make_report(out, quiet=quiet, device=device, runner=_ray_runner(payload),
                           loaded=(data, teacher) if teacher else None)


@contextlib.contextmanager
def _ray_for(address: str | None, out: Path, interrupted: str = "", *, quiet: bool = True
             ) -> Iterator[None]:
    """Ray for one search of `out`: started here (and shut down after) unless already running;
    Ctrl-C tells how to continue (`interrupted`, else with kdsearch resume)."""
    import ray

    if not quiet and not ray.is_initialized():  # a few seconds with nothing else to show
        where = _ray_address(address)
        print("ray: starting a local Ray" if where == "local" else f"ray: connecting to {where}",
              flush=True)
    started_ray = _init_ray(address)
    try:
        yield
    except KeyboardInterrupt:
        if not interrupted:
            interrupted = (f"continue with: kdsearch resume {out}" if (out / RUN_FILE).exists()
                           else "nothing was written; run the same command again")
        print(f"\nkdsearch: interrupted; {interrupted}", file=sys.stderr)
        raise
    finally:
        if started_ray:
            import ray
            ray.shutdown()
