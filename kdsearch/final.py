"""The final evaluation: the search's best settings, retrained from scratch, tested once.

A search ranks settings by validation accuracy, so its numbers are optimistic and come from one
seed. Here the best distilled setting and the best baseline setting (alpha = 1) of each student
width (`selection`) are retrained with `report.seeds` seeds (seed s sets training.seed = s) on
the training split, for the full epoch budget. Each model is then evaluated once on the held-out
test split. This module is the only caller of `data.load_test`: the search never sees the test
split.

The result is final.json in the results folder (`final_record`). `evaluate_final(...,
retrain=False)` reuses every row of an existing final.json whose setting and seeds are unchanged
and trains only what is new (nothing, for an unchanged search).

The retrainings are independent. `evaluate_final` hands them to a `Runner`: by default they
run one after the other in this process; `kdsearch run` passes one (`trainable.ray_runner`) that
runs them as Ray tasks, side by side on every CPU and GPU share of the cluster, and returns each
model's weights here, where the test split is read. Both give the same weights for the same
setting, seed and thread count.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from kdsearch.builders import UserObjects, build_student, code_folders
from kdsearch.config import ExperimentConfig, default_cache_dir, default_data_dir
from kdsearch.data import Split, load_test
from kdsearch.distill import correct_on
from kdsearch.final_record import (FINAL_FILE, DataSizes, FinalRecord, FinalRow, TeacherResult,
                                   read_final, write_final)
from kdsearch.inputs import Inputs, load_inputs
from kdsearch.models import count_macs, count_parameters
from kdsearch.retrain import (Retrained, Retraining, Runner, in_process, out_of_memory,
                              torch_threads)
from kdsearch.selection import (Selection, Setting, read_searched, select_settings,
                                teacher_files, training_config, training_fingerprint)
from kdsearch.stats import mean_std, pack_correct
from kdsearch.students import STUDENTS_DIR, StudentEntry, kept_entries, save_state, write_index
from kdsearch.tables import BASELINE, DISTILLED
from kdsearch.teacher import TeacherError, teacher_key
from kdsearch.version import __version__

log = logging.getLogger(__name__)

# below this many multiply-adds per batch, one CPU thread beats several (thread hand-off costs
# more than the work): true of the MLP students on digits, not of CNNs on CIFAR-10
_SMALL_BATCH_WORK = 5e6


@dataclass
class Plan:
    """What the final evaluation of a folder trains, and what it reuses of final.json."""

    cfg: ExperimentConfig
    selection: Selection
    seeds: list[int]
    fingerprint: str  # `selection.training_fingerprint`: what the retrainings depend on
    files: dict[str, str]  # `selection.teacher_files`
    teacher_key: str
    reused: dict[int, FinalRow]  # setting index -> its row of the earlier final.json
    teacher: TeacherResult | None  # the earlier final.json's tested teacher, still good
    previous: FinalRecord | None  # the earlier final.json rows are reused from

    @property
    def todo(self) -> list[int]:
        """The indices of the settings to train."""
        return [i for i in range(len(self.selection.settings)) if i not in self.reused]


@dataclass(frozen=True)
class Outcome:
    """One retrained model, tested on the test split."""

    result: Retrained
    test_acc: float | None  # None: it diverged or failed
    correct: str | None  # which test examples it got right (`stats.pack_correct`)


# --------------------------------------------------------------------------- 1. the plan
def _spec_key(setting: Setting, fingerprint: str) -> str:
    return json.dumps(setting.spec(fingerprint), sort_keys=True)


def plan(results: Path, *, retrain: bool) -> Plan:
    """Read the folder, select the settings to retrain, and find which rows of its final.json
    can be reused (none with `retrain`)."""
    cfg, rows = read_searched(results)
    selection = select_settings(cfg, rows)
    seeds = list(range(cfg.report.seeds))
    found = read_final(results)
    previous = None if retrain else found
    files = teacher_files(cfg, found.teacher_files if found else None)
    fingerprint = training_fingerprint(cfg, files)
    old_teacher = previous.teacher if previous else None
    try:
        key = teacher_key(cfg)
    except TeacherError:  # its file is gone: final.json's teacher stands, if nothing is trained
        key = old_teacher.key if old_teacher else ""
    reusable: dict[str, FinalRow] = {}
    if previous is not None and previous.seeds == seeds:
        reusable = {json.dumps(r.spec, sort_keys=True): r for r in previous.rows}
    reused = {}
    for i, s in enumerate(selection.settings):
        row = reusable.get(_spec_key(s, fingerprint))
        if row is not None and row.extra and not s.extra:
            # retrained only to compare losses, it saved no students: its width's saved
            # students are another setting's, so it is retrained to save its own
            row = None
        if row is not None:  # the search's own record of the setting may have changed
            reused[i] = dataclasses.replace(row, best=s.best, trial_id=s.trial_id,
                                            val_acc=s.val_acc, search_epochs=s.search_epochs,
                                            extra=s.extra)
    # a teacher tested without per-example results (an older final.json) is tested again,
    # because the target's bound pairs the students' examples with the teacher's own
    teacher_ok = old_teacher is not None and old_teacher.key == key and (
        old_teacher.test_correct is not None or old_teacher.params is None)
    return Plan(cfg, selection, seeds, fingerprint, files, key, reused,
                old_teacher if teacher_ok else None, previous)


def _say_why(p: Plan) -> None:
    """Say why a final evaluation that may reuse final.json still trains."""
    n, seeds = len(p.todo), len(p.seeds)
    if p.previous is None:
        why = f" (no earlier {FINAL_FILE})"
    elif p.previous.seeds != p.seeds:
        why = f" ({FINAL_FILE} has other seeds than report.seeds = {seeds})"
    else:
        why = f"; reusing {len(p.reused)} unchanged settings of {FINAL_FILE}"
    log.info(f"final: retraining {n} settings x {seeds} seeds{why}")


# --------------------------------------------------------------------------- 2. the jobs
def _on_device(inputs: Inputs, key: str, results: Path, device: str) -> Inputs:
    """The search's inputs (already in memory) on `device`, checked to be this folder's."""
    if inputs.teacher.key != key:
        raise ValueError(f"evaluate_final: the teacher passed in ({inputs.teacher.key}) is not "
                         f"{results}'s ({key})")
    t = inputs.teacher
    teacher = dataclasses.replace(
        t, model=None if t.model is None else t.model.to(device),
        train_logits=t.train_logits.to(device))
    return dataclasses.replace(inputs, data=inputs.data.to(device), teacher=teacher)


@dataclass(frozen=True)
class Size:
    """A student's size: its parameters, and the multiply-accumulates of one example."""

    params: int
    macs: int


def student_size(cfg: ExperimentConfig, width: int, input_shape: tuple[int, ...],
                 num_classes: int, factory: Callable[..., nn.Module] | None) -> Size:
    """The size of `cfg`'s student at `width`, built on the CPU."""
    model = build_student(cfg, input_shape, num_classes, width=width, factory=factory)
    return Size(count_parameters(model), count_macs(model, input_shape))


def make_jobs(p: Plan, inputs: Inputs, device: str) -> tuple[list[Retraining], dict[int, Size]]:
    """A retraining per setting to train and seed, and each such setting's student size."""
    cfg, data = p.cfg, inputs.data
    jobs: list[Retraining] = []
    sizes: dict[int, Size] = {}
    for i in p.todo:
        s = p.selection.settings[i]
        sizes[i] = student_size(cfg, s.width, data.input_shape, data.num_classes,
                                inputs.objects.student)
        batch = training_config(cfg, s, 0).training.batch_size
        small = device == "cpu" and sizes[i].params * batch < _SMALL_BATCH_WORK
        jobs += [Retraining(i, seed, training_config(cfg, s, seed), 1 if small else None)
                 for seed in p.seeds]
    return jobs, sizes


def _with_macs(p: Plan, rows: dict[int, FinalRow], students: list[StudentEntry],
               factory: Callable[..., nn.Module] | None) -> dict[int, FinalRow]:
    """Reused rows of an older final.json, which lacks their MACs, with them (the input shape
    from the students' index)."""
    entry = students[0] if students else None
    if entry is None or all(r.macs is not None for r in rows.values()):
        return rows
    shape, classes = tuple(entry.input_shape), entry.num_classes
    return {i: r if r.macs is not None else dataclasses.replace(
        r, macs=student_size(p.cfg, r.width, shape, classes, factory).macs)
        for i, r in rows.items()}


# --------------------------------------------------------------------------- 3. testing
def score_teacher(cfg: ExperimentConfig, inputs: Inputs, test: Split) -> TeacherResult:
    """The teacher's accuracy on the test split, and which examples it got right (none for a
    teacher known by its logits)."""
    teacher = inputs.teacher
    if teacher.model is None:  # logits from a file: nothing to test
        return TeacherResult(cfg.teacher.model, teacher.key, None, None, None)
    right = correct_on(teacher.model, test)
    acc = int(right.sum().item()) / len(right)  # counted, then divided, as evaluate() does
    log.info(f"final: teacher {cfg.teacher.model} test_acc {acc:.4f} "
             f"({len(test):,} test examples)")
    return TeacherResult(cfg.teacher.model, teacher.key, count_parameters(teacher.model),
                         teacher.val_acc, acc, pack_correct(right.cpu().numpy()))


def score_student(p: Plan, inputs: Inputs, job: Retraining, result: Retrained, test: Split,
                 device: str) -> Outcome:
    """A retrained student's test accuracy and per-example results (none when it diverged)."""
    if result.state is None:
        return Outcome(result, None, None)
    s, data = p.selection.settings[job.index], inputs.data
    model = build_student(p.cfg, data.input_shape, data.num_classes, width=s.width,
                          factory=inputs.objects.student)
    model.load_state_dict(result.state)
    try:
        with torch_threads(job.threads):
            right = correct_on(model.to(device), test)  # the one read of test
    except torch.cuda.OutOfMemoryError as e:
        torch.cuda.empty_cache()
        return Outcome(dataclasses.replace(result, state=None, error=out_of_memory(e)),
                       None, None)
    # counted, then divided: equal counts tie exactly (as evaluate() does it)
    acc = int(right.sum().item()) / len(right)
    return Outcome(result, acc, pack_correct(right.cpu().numpy()))


def _log_outcome(s: Setting, job: Retraining, outcome: Outcome, done: int, total: int) -> None:
    label = s.kind if s.tuned else f"{s.kind} (untuned)"
    res = outcome.result
    what = (res.error or "diverged") if outcome.test_acc is None \
        else f"test_acc {outcome.test_acc:.4f}"
    log.info(f"final [{done}/{total}] {label} width {s.width} seed {job.seed}: {what} "
             f"({job.config.training.epochs} epochs, {res.seconds:.1f} s)")


# --------------------------------------------------------------------------- 4. the rows
def new_row(p: Plan, i: int, size: Size, outcomes: list[Outcome]) -> FinalRow:
    """final.json's row of setting `i`, from its outcomes, one per seed in order."""
    s = p.selection.settings[i]
    accs = [o.test_acc for o in outcomes]
    errors = [o.result.error for o in outcomes]
    mean, std = mean_std([a for a in accs if a is not None])
    training = training_config(p.cfg, s, 0).training
    return FinalRow(
        kind=s.kind, tuned=s.tuned, best=s.best, width=s.width, params=size.params,
        settings=s.settings, epochs=training.epochs, alpha=training.alpha,
        trial_id=s.trial_id, val_acc=s.val_acc, search_epochs=s.search_epochs,
        seeds=p.seeds, test_accs=accs, test_correct=[o.correct for o in outcomes],
        final_val_accs=[o.result.val_acc for o in outcomes], mean=mean, std=std,
        errors=errors,
        # a seed without an accuracy diverged, or failed otherwise (out of GPU memory)
        diverged=sum(a is None and e in (None, "diverged") for a, e in zip(accs, errors)),
        failed=sum(a is None and e not in (None, "diverged") for a, e in zip(accs, errors)),
        workers=[o.result.worker for o in outcomes],
        # training time, summed over the seeds (they may run side by side)
        seconds=round(sum(o.result.seconds for o in outcomes), 3),
        spec=s.spec(p.fingerprint), macs=size.macs, loss=training.loss, extra=s.extra)


def _student_entry(p: Plan, inputs: Inputs, s: Setting, seed: int, outcome: Outcome,
                   folder: Path) -> StudentEntry:
    assert outcome.result.state is not None and outcome.test_acc is not None
    name, sha = save_state(folder, s.kind, s.width, seed, outcome.result.state)
    return StudentEntry(kind=s.kind, width=s.width, seed=seed, test_acc=outcome.test_acc,
                        file=name, sha256=sha, model=p.cfg.student.model,
                        kwargs=p.cfg.student.kwargs,
                        input_shape=list(inputs.data.input_shape),
                        num_classes=inputs.data.num_classes)


# --------------------------------------------------------------------------- the whole
@dataclass
class Trained:
    """What a final evaluation that trains adds to its plan."""

    rows: dict[int, FinalRow]
    teacher: TeacherResult
    data: DataSizes
    students: list[StudentEntry]
    device: str


def train_and_test(p: Plan, inputs: Inputs, runner: Runner | None, device: str,
                   folder: Path) -> Trained:
    """Train the plan's settings with every seed, test each model and the teacher once, and
    save each student that has a test accuracy in `folder`."""
    cfg = p.cfg
    jobs, sizes = make_jobs(p, inputs, device)
    # a runner may start training now, while the test split is read and the teacher tested
    trained = (runner or in_process(inputs.data, inputs.teacher, inputs.objects.student))(jobs)
    # the one read of the test split in kdsearch
    test = load_test(cfg.dataset, inputs.data, data_dir=default_data_dir(cfg),
                     cache_dir=default_cache_dir(cfg), device=device, folders=code_folders(cfg),
                     source=inputs.objects.dataset)
    data = inputs.data
    counts = DataSizes(len(data.train), len(data.val), len(test))
    teacher = score_teacher(cfg, inputs, test)
    outcomes: dict[tuple[int, int], Outcome] = {}
    students: list[StudentEntry] = []
    for done, (job, result) in enumerate(trained, 1):
        s = p.selection.settings[job.index]
        outcome = outcomes[(job.index, job.seed)] = score_student(p, inputs, job, result, test,
                                                                  device)
        if outcome.test_acc is not None and not s.extra:  # (a loss compared only: not kept)
            students.append(_student_entry(p, inputs, s, job.seed, outcome, folder))
        _log_outcome(s, job, outcome, done, len(jobs))
    rows = {i: new_row(p, i, sizes[i], [outcomes[(i, seed)] for seed in p.seeds])
            for i in sizes}
    where = sorted({o.result.device for o in outcomes.values()})
    return Trained(rows, teacher, counts, students, "+".join(where) if where else device)


def evaluate_final(results_dir: str | os.PathLike[str], *, retrain: bool = True,
                   device: str = "auto", runner: Runner | None = None,
                   inputs: Inputs | None = None, objects: UserObjects | None = None
                   ) -> FinalRecord:
    """Retrain the best settings of a results folder with K seeds, test them once, and write
    final.json and the students.

    Args:
        results_dir: the search's results folder.
        retrain: retrain every setting; False: reuse the rows of an up-to-date final.json and
            train only what changed.
        device: where the test split is read and the models tested ("auto": CUDA if present).
        runner: trains the models (default: one after the other in this process).
        inputs: the folder's dataset and teacher, already in memory (the search's own).
        objects: the Python objects the search was given in place of the config's names
            (taken from `inputs` when it is given).

    Returns:
        What final.json now holds.

    Raises:
        ReportError: the folder has no search to evaluate.
    """
    results = Path(results_dir)
    p = plan(results, retrain=retrain)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
    started = time.perf_counter()
    students = results / STUDENTS_DIR
    saved = kept_entries(students, [(r.kind, r.width, seed) for r in p.reused.values()
                                    if not r.extra for seed in p.seeds])
    objects = inputs.objects if inputs is not None else objects or UserObjects()
    rows = _with_macs(p, dict(p.reused), saved, objects.student)
    teacher, data = p.teacher, p.previous.data if p.previous else None
    if p.todo or teacher is None:
        if not retrain and p.todo:
            _say_why(p)
        if inputs is None:
            inputs = load_inputs(p.cfg, device=device, objects=objects)
        else:
            inputs = _on_device(inputs, p.teacher_key, results, device)
        trained = train_and_test(p, inputs, runner, device, students)
        rows.update(trained.rows)
        teacher, data, saved = trained.teacher, trained.data, saved + trained.students
        del inputs
        if device == "cuda":  # this process's device (the test split, the teacher)
            torch.cuda.empty_cache()
        device = trained.device  # where the models were trained
    else:
        assert p.previous is not None
        device = p.previous.device  # where the reused rows were trained
        log.info(f"final: reusing {FINAL_FILE} (all {len(rows)} settings unchanged)")
    final = FinalRecord(
        kdsearch_version=__version__, name=p.cfg.name, created=time.time(), device=device,
        seeds=p.seeds, seconds=round(time.perf_counter() - started, 3),
        retrained=len(p.todo) * len(p.seeds), reused=len(p.reused),
        reused_training_seconds=round(sum(r.seconds or 0.0 for r in p.reused.values()), 3),
        data=data, teacher=teacher, teacher_files=p.files or None,
        student_model=p.cfg.student.model, baseline_tuned=p.selection.baseline_tuned,
        baseline_note=p.selection.baseline_note,
        rows=[rows[i] for i in range(len(p.selection.settings))])
    best = {kind: next((s.width for s in p.selection.settings
                        if s.best and s.kind == kind and not s.extra), None)
            for kind in (DISTILLED, BASELINE)}
    write_index(students, saved, best)
    write_final(results, final)
    return final
