"""The function Ray Tune runs for each trial, its payload, and the final retraining tasks.

The payload is what a trial receives through Ray's object store. The retraining tasks are the
Ray tasks that train the final evaluation's models.

The driver loads the dataset and the teacher once. It puts them in the object store once
(`make_payload`, a `TrialPayload` passed with `tune.with_parameters`), as NumPy arrays that a
trial maps without a copy. Actors are reused, so each trial actor moves the arrays to its
device once (`trial_inputs`). A trial builds the student of its config and runs
`distill.train_student`. It reports every epoch to Tune, with a checkpoint every few seconds. A
retraining task (`ray_runner`) does the same for one seed of a best setting. It sends the
weights back to the driver, and only the driver reads the test split.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import socket
import tempfile
import time
import uuid
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import ray
import torch
import yaml
from ray import tune
from torch import nn

from kdsearch import ray_workarounds
from kdsearch.config import ExperimentConfig, config_from_dict, dump_config, with_params
from kdsearch.data import Dataset
from kdsearch.distill import Diverged, FitState, train_student
from kdsearch.metrics import EPOCH, TRAIN_LOSS, VAL_ACC, VAL_LOSS
from kdsearch.builders import build_teacher, meta_student
from kdsearch.fields import is_object_name
from kdsearch.models import count_parameters
from kdsearch.results import KIND_KEY, kind_of_config, searched_widths
from kdsearch.tables import BASELINE
from kdsearch.retrain import Retrained, Retraining, Runner, train_one
from kdsearch.teacher import Teacher

# the name Tune knows the trainable by, and names trial folders after. A saved search restores
# only with the same name, so it must not change.
TRAINABLE_NAME = "_trainable"


# --------------------------------------------------------------------------- the payload
def _tensors_as(convert: Any, obj: Any) -> Any:
    """Return `obj` with each tensor or array in its dicts and dataclasses put through `convert`."""
    if isinstance(obj, dict):
        return {k: _tensors_as(convert, v) for k, v in obj.items()}
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.replace(obj, **{f.name: _tensors_as(convert, getattr(obj, f.name))
                                           for f in dataclasses.fields(obj)})
    if isinstance(obj, (torch.Tensor, np.ndarray)):
        return convert(obj)
    return obj


def for_object_store(tensors: Any) -> Any:
    """Return the tensors in `tensors` as CPU NumPy arrays.

    A trial maps NumPy arrays from Ray's object store without a copy. A torch tensor is instead
    unpickled into a copy for every trial, which takes 0.17 s for MNIST's training set."""
    return _tensors_as(lambda t: t.cpu().numpy(), tensors)


def from_object_store(arrays: Any) -> Any:
    """Return the tensors of `for_object_store`, sharing the object store's read-only memory."""
    with warnings.catch_warnings():
        # the memory is read-only, but the trial never writes to its inputs (fit copies them)
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return _tensors_as(torch.from_numpy, arrays)


@dataclass(frozen=True)
class TrialPayload:
    """What every trial (and final retraining) gets through Ray's object store, once."""

    token: str  # names this search's tensors in each trial actor's cache
    config: dict[str, Any]  # the search's config, as plain values
    data: Dataset  # its tensors as NumPy arrays (`for_object_store`)
    teacher_logits: Any  # an array, or None without a teacher
    # an online teacher (training.shift > 0) named in the config travels as its weights. It is
    # built in the trial, which finds the user's module from the config. An online teacher given
    # as an object travels whole.
    teacher_state: dict[str, Any] | None
    teacher_model: nn.Module | None
    student_factory: Callable[..., nn.Module] | None  # a factory given as an object
    cpus_per_trial: float
    params_by_width: dict[int, int]
    # the trials of a resumed search that ended before the killed driver's saved state saw
    # them (`ray_workarounds.finished_trials`). Their results are replayed, not trained again.
    replay: dict[str, dict[str, Any]] = field(default_factory=dict)


def make_payload(cfg: ExperimentConfig, data: Dataset, teacher: Teacher | None, *,
                 cpus_per_trial: float, student: Callable[..., nn.Module] | None = None
                 ) -> TrialPayload:
    """Return the payload of `cfg`'s trials.

    `student` is a student factory given as an object. It is cloudpickled with the payload."""
    online = cfg.training.shift > 0 and teacher is not None and teacher.model is not None
    an_object = is_object_name(cfg.teacher.model)  # a module given to run_search, not a name
    return TrialPayload(
        token=uuid.uuid4().hex, config=yaml.safe_load(dump_config(cfg)),
        data=for_object_store(data),
        teacher_logits=for_object_store(teacher.train_logits) if teacher else None,
        teacher_state=(for_object_store(teacher.model.state_dict())
                       if online and not an_object and teacher and teacher.model else None),
        teacher_model=(copy.deepcopy(teacher.model).cpu()
                       if online and an_object and teacher and teacher.model else None),
        student_factory=student, cpus_per_trial=cpus_per_trial,
        params_by_width={w: count_parameters(meta_student(
            cfg, data.input_shape, data.num_classes, width=w, factory=student))
            for w in searched_widths(cfg)})


_DEVICE_DATA: dict[str, tuple[str, Dataset, torch.Tensor | None, Teacher | None]] = {}


def trial_inputs(payload: TrialPayload, device: str
                 ) -> tuple[Dataset, torch.Tensor | None, Teacher | None]:
    """Return the payload's tensors on this trial's device, moved once per actor.

    Actors are reused (reuse_actors=True). The moved tensors are kept by the search's token,
    not by id(payload). Ray deserialises the payload afresh for every trial, and a freed
    payload's id can come back for another search's data.
    """
    key = payload.token
    hit = _DEVICE_DATA.get(key)
    if hit is not None and hit[0] == device:
        return hit[1], hit[2], hit[3]
    _DEVICE_DATA.clear()
    data: Dataset = from_object_store(payload.data).to(device)
    logits = from_object_store(payload.teacher_logits)
    logits = logits.to(device) if logits is not None else None
    teacher, model = None, None
    if payload.teacher_state is not None:
        model = build_teacher(config_from_dict(payload.config), data.input_shape,
                              data.num_classes)
        model.load_state_dict(from_object_store(payload.teacher_state))
    elif payload.teacher_model is not None:
        model = copy.deepcopy(payload.teacher_model)
    if model is not None:
        teacher = Teacher(model.to(device).eval(), logits, 0.0, "", None, False)
    elif logits is not None:
        teacher = Teacher(torch.nn.Identity(), logits, 0.0, "", None, False)
    _DEVICE_DATA[key] = (device, data, logits, teacher)
    return data, logits, teacher


def _device() -> str:
    return "cuda" if ray.get_gpu_ids() and torch.cuda.is_available() else "cpu"


# --------------------------------------------------------------------------- the trial
def run_trial(params: dict[str, Any], payload: TrialPayload) -> None:
    """Run one trial: train the student of `params` and report every epoch to Ray Tune."""
    if ray_workarounds.replay_finished(payload.replay, tune.get_context().get_trial_id(),
                                       tune.report):
        return
    kind = kind_of_config(params)
    params = {k: v for k, v in params.items() if k != KIND_KEY}
    cfg = with_params(config_from_dict(payload.config), params)
    if kind == BASELINE:
        cfg = dataclasses.replace(cfg, training=dataclasses.replace(cfg.training, alpha=1.0))
    # torch threads match this trial's CPU share, so concurrent trials do not oversubscribe
    threads = max(1, int(payload.cpus_per_trial))
    torch.set_num_threads(threads)
    gpu_ids = ray.get_gpu_ids()
    device = _device()
    data, _, teacher = trial_inputs(payload, device)

    resume = None
    resumed_metrics = None
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            # load on the CPU, since the generator's state must stay a CPU tensor.
            # load_state_dict moves the weights and the optimizer's moments to the model's device.
            resume = torch.load(Path(d) / "state.pt", map_location="cpu", weights_only=True)
            if (Path(d) / "metrics.json").exists():
                resumed_metrics = json.loads((Path(d) / "metrics.json").read_text())
    extra = {"params": payload.params_by_width.get(cfg.student.width, 0),
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
                                   report=report, resume=resume,
                                   factory=payload.student_factory)
        ray_workarounds.report_last_epoch_again(
            history, None if resumed_metrics is None else
            {**resumed_metrics, **extra, "diverged": 0}, tune.report)
    except Diverged as e:
        # a diverged setting ends at once. It is recorded with the worst score for the
        # searcher, because a retry would diverge again. EPOCH is the epochs it completed, so
        # ASHA ranks it only at the rungs it reached.
        tune.report({EPOCH: last_epoch, VAL_ACC: 0.0, VAL_LOSS: float("nan"),
                     TRAIN_LOSS: float("nan"), **extra, "diverged": 1, "error": str(e)})


run_trial.__name__ = TRAINABLE_NAME  # it is still pickled by its qualified name, run_trial


# --------------------------------------------------------------------------- final retrainings
def _retrain_task(payload: TrialPayload, job: Retraining) -> Retrained:
    """Run one retraining of the final evaluation (`retrain.train_one`) as a Ray task.

    It trains on this worker's CPUs or GPU share, with the payload's data and teacher. The
    weights go back as arrays."""
    torch.set_num_threads(job.threads or max(1, int(payload.cpus_per_trial)))
    data, _, teacher = trial_inputs(payload, _device())
    return for_object_store(train_one(job, data, teacher, factory=payload.student_factory))


def ray_runner(payload: TrialPayload, *, gpus_per_task: float) -> Runner:
    """Return a `retrain.Runner` that trains the final evaluation's models as Ray tasks.

    The tasks run side by side on the cluster's CPUs and GPU shares, each with a trial's
    resources. The runner yields each model as its task ends. The payload (data, teacher
    logits) goes to the object store once. The test split stays in the driver, which evaluates
    the weights that come back.
    """
    task = ray.remote(_retrain_task).options(
        num_cpus=payload.cpus_per_trial, num_gpus=gpus_per_task, max_retries=0)

    def run(jobs: list[Retraining]) -> Iterator[tuple[Retraining, Retrained]]:
        if not jobs:
            return iter(())
        ref = ray.put(dataclasses.replace(payload, replay={}))
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
                yield job, from_object_store(result)
        finally:
            for left in pending:
                ray.cancel(left, force=True)

    return run
