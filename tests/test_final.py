"""The final evaluation (`kdsearch.final`): which rows of final.json are reused, the row of a
retrained setting, a student scored on the test split, and a whole evaluation of a hand-made
results folder on digits."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from kdsearch.config import ExperimentConfig, config_from_dict, dump_config
from kdsearch.data import Dataset, Split, load_test
from kdsearch.distill import evaluate
from kdsearch.final import (Outcome, Size, evaluate_final, make_jobs, new_row, plan,
                            score_student, student_size)
from kdsearch.final_record import (DataSizes, FinalRecord, FinalRow, TeacherResult, read_final,
                                   write_final)
from kdsearch.inputs import Inputs, load_inputs
from kdsearch.models import build_student, count_parameters
from kdsearch.retrain import Retrained, Retraining, train_one
from kdsearch.selection import teacher_files, training_config, training_fingerprint
from kdsearch.stats import unpack_correct
from kdsearch.students import STUDENTS_DIR, load_student, read_entries
from kdsearch.tables import write_table
from kdsearch.teacher import Teacher, teacher_key

LR = {"distribution": "loguniform", "low": 1e-3, "high": 1e-1}


def _cfg(tmp_path: Path, seeds: int = 2, **training: Any) -> ExperimentConfig:
    """A tiny search's config on digits: lr and width searched, two-epoch students."""
    return config_from_dict({
        "name": "tiny", "cache_dir": str(tmp_path / "cache"),
        "dataset": {"name": "digits", "data_dir": str(tmp_path / "data")},
        "teacher": {"epochs": 1, "width": 64},
        "training": {"epochs": 2, "batch_size": 64, "alpha": 0.3, **training},
        "report": {"seeds": seeds},
        "search": {"space": {"lr": LR, "width": {"distribution": "choice",
                                                 "values": [8, 16]}}}})


def _trial(phase: str, trial_id: str, width: int, val_acc: float, lr: float = 0.01
           ) -> dict[str, Any]:
    return {"phase": phase, "trial_id": trial_id, "status": "TERMINATED", "stopped_early": 0,
            "diverged": 0, "epochs": 2, "val_acc": val_acc, "val_loss": 0.3, "lr": lr,
            "width": width}


# distilled at widths 8 and 16, a baseline at 16 alone: width 8 gets an untuned baseline
TRIALS = [_trial("distill", "d0000008", 8, 0.90, lr=0.02),
          _trial("distill", "d0000016", 16, 0.93, lr=0.01),
          _trial("baseline", "b0000016", 16, 0.91, lr=0.03)]


def _folder(path: Path, cfg: ExperimentConfig, trials: list[dict[str, Any]] = TRIALS) -> Path:
    """A results folder as a finished search leaves it: config.yaml, trials.csv, run.json."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.yaml").write_text(dump_config(cfg))
    write_table(path / "trials.csv", trials)
    (path / "run.json").write_text(json.dumps({"search": {"status": "finished"},
                                               "teacher": {"key": teacher_key(cfg)}}))
    return path


def _final(folder: Path, *, seeds: list[int], fingerprint: str, key: str,
           test_correct: str | None = "AAAA") -> None:
    """final.json of an earlier evaluation of the folder's settings (accuracies made up)."""
    p = plan(folder, retrain=True)
    rows = [FinalRow(kind=s.kind, tuned=s.tuned, best=not s.best, width=s.width, params=100,
                     settings=s.settings, epochs=2, alpha=0.3, trial_id="older",
                     val_acc=0.5, search_epochs=1, seeds=seeds,
                     test_accs=[0.8] * len(seeds), test_correct=None,
                     final_val_accs=None, mean=0.8, std=0.0, errors=None, diverged=0,
                     failed=0, workers=None, seconds=1.5, spec=s.spec(fingerprint), macs=90)
            for s in p.selection.settings]
    write_final(folder, FinalRecord(
        kdsearch_version="0", name="tiny", created=0.0, device="cpu", seeds=seeds, seconds=1.0,
        retrained=len(rows) * len(seeds), reused=0, reused_training_seconds=0.0,
        data=DataSizes(1, 1, 1), teacher=TeacherResult("mlp_teacher", key, 1000, 0.9, 0.9,
                                                       test_correct),
        teacher_files=None, student_model="mlp_student", baseline_tuned=True, baseline_note="",
        rows=rows))


# --------------------------------------------------------------------------- plan
def test_plan_of_a_folder_without_final_json_trains_every_setting(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    p = plan(_folder(tmp_path / "run", cfg), retrain=False)
    assert [(s.kind, s.width, s.tuned) for s in p.selection.settings] == [
        ("distilled", 8, True), ("baseline", 8, False), ("distilled", 16, True),
        ("baseline", 16, True)]
    assert p.seeds == [0, 1] and p.todo == [0, 1, 2, 3] and p.reused == {}
    assert p.previous is None and p.teacher is None and p.files == {}
    assert p.fingerprint == training_fingerprint(cfg) and p.teacher_key == teacher_key(cfg)


def test_plan_reuses_the_unchanged_rows_with_the_searchs_own_record(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    folder = _folder(tmp_path / "run", cfg)
    _final(folder, seeds=[0, 1], fingerprint=training_fingerprint(cfg), key=teacher_key(cfg))
    p = plan(folder, retrain=False)
    assert sorted(p.reused) == [0, 1, 2, 3] and p.todo == []
    assert p.previous == read_final(folder)
    for i, s in enumerate(p.selection.settings):
        row = p.reused[i]
        assert row.test_accs == [0.8, 0.8] and row.seconds == 1.5  # the earlier results
        # best, trial id, val_acc and search epochs come from trials.csv as it is now
        assert (row.best, row.trial_id, row.val_acc, row.search_epochs) == (
            s.best, s.trial_id, s.val_acc, s.search_epochs)
    assert p.teacher == read_final(folder).teacher  # tested, with its per-example results
    assert plan(folder, retrain=True).reused == {}  # retrain: nothing reused
    assert plan(folder, retrain=True).teacher is None


def test_plan_retrains_what_changed_since_final_json(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    folder = _folder(tmp_path / "run", cfg)
    _final(folder, seeds=[0, 1], fingerprint=training_fingerprint(cfg), key=teacher_key(cfg))
    # a better trial at width 16: that setting is new, the others stand
    better = _trial("distill", "d1600002", 16, 0.97, lr=0.05)
    write_table(folder / "trials.csv", [*TRIALS, better])
    p = plan(folder, retrain=False)
    assert p.todo == [2] and sorted(p.reused) == [0, 1, 3]
    assert p.selection.settings[2].trial_id == "d1600002"


def test_plan_retrains_a_setting_that_saved_no_students_when_it_becomes_its_widths_own(
        tmp_path: Path) -> None:
    """A loss's best, retrained only to compare losses (`extra`), saved no students. When a
    resumed search makes it its width's setting, it is retrained: the students saved at that
    width are another setting's."""
    cfg = _cfg(tmp_path)
    folder = _folder(tmp_path / "run", cfg)
    _final(folder, seeds=[0, 1], fingerprint=training_fingerprint(cfg), key=teacher_key(cfg))
    old = read_final(folder)
    write_final(folder, dataclasses.replace(old, rows=[
        dataclasses.replace(r, extra=(r.kind, r.width) == ("distilled", 16)) for r in old.rows]))
    p = plan(folder, retrain=False)
    assert p.todo == [2] and sorted(p.reused) == [0, 1, 3]
    assert not p.selection.settings[2].extra


@pytest.mark.parametrize("change", ["seeds", "training", "fingerprint"])
def test_plan_reuses_nothing_of_another_seeds_or_training(tmp_path: Path, change: str
                                                          ) -> None:
    cfg = _cfg(tmp_path)
    folder = _folder(tmp_path / "run", cfg)
    seeds, fingerprint = [0, 1], training_fingerprint(cfg)
    if change == "seeds":
        seeds = [0, 1, 2]
    elif change == "training":  # config.yaml's training changed after the evaluation
        (folder / "config.yaml").write_text(dump_config(_cfg(tmp_path, batch_size=32)))
    else:
        fingerprint = "0" * 16
    _final(folder, seeds=seeds, fingerprint=fingerprint, key=teacher_key(cfg))
    p = plan(folder, retrain=False)
    assert p.reused == {} and p.todo == [0, 1, 2, 3]
    assert p.previous is not None  # read, and not reused


@pytest.mark.parametrize("key, test_correct, reused", [
    ("same", "AAAA", True),
    ("other", "AAAA", False),  # another teacher
    ("same", None, False),  # tested before its per-example results were kept
])
def test_plan_keeps_the_tested_teacher_only_when_it_is_this_folders(
        tmp_path: Path, key: str, test_correct: str | None, reused: bool) -> None:
    cfg = _cfg(tmp_path)
    folder = _folder(tmp_path / "run", cfg)
    _final(folder, seeds=[0, 1], fingerprint=training_fingerprint(cfg),
           key=teacher_key(cfg) if key == "same" else "another-teacher", test_correct=test_correct)
    assert (plan(folder, retrain=False).teacher is not None) is reused


def test_plan_hashes_a_teacher_checkpoint_by_content(tmp_path: Path) -> None:
    checkpoint = tmp_path / "teacher.pt"
    checkpoint.write_bytes(b"a teacher")
    cfg = dataclasses.replace(_cfg(tmp_path), teacher=dataclasses.replace(
        _cfg(tmp_path).teacher, checkpoint=str(checkpoint)))
    p = plan(_folder(tmp_path / "run", cfg), retrain=False)
    assert p.files == teacher_files(cfg) and set(p.files) == {"checkpoint"}
    assert p.fingerprint == training_fingerprint(cfg, p.files)


# --------------------------------------------------------------------------- jobs and rows
def _outcome(acc: float | None, error: str | None = None, seconds: float = 1.0,
             worker: str = "host:1") -> Outcome:
    state = {"w": torch.zeros(1)} if acc is not None else None
    val = None if acc is None else acc + 0.01
    return Outcome(Retrained(state, val, seconds, "cpu", worker, error), acc,
                   None if acc is None else "AAAA")


@pytest.fixture
def inputs(digits: Dataset, digits_teacher: nn.Module, digits_teacher_logits: torch.Tensor,
           tmp_path: Path) -> Inputs:
    """The fixtures' digits and teacher as the inputs of `_cfg(tmp_path)`'s folder."""
    key = teacher_key(_cfg(tmp_path))
    return Inputs(digits, Teacher(digits_teacher, digits_teacher_logits, 0.89, key, None, False))


def test_make_jobs_gives_a_job_per_setting_to_train_and_seed(tmp_path: Path,
                                                             inputs: Inputs) -> None:
    cfg = _cfg(tmp_path, seeds=3)
    p = plan(_folder(tmp_path / "run", cfg), retrain=False)
    earlier = new_row(p, 1, Size(1, 1), [_outcome(0.7)] * 3)
    p = dataclasses.replace(p, reused={1: earlier})  # setting 1: reused from final.json
    jobs, sizes = make_jobs(p, inputs, "cpu")
    assert [(j.index, j.seed) for j in jobs] == [(i, s) for i in (0, 2, 3) for s in (0, 1, 2)]
    for j in jobs:
        assert j.config == training_config(cfg, p.selection.settings[j.index], j.seed)
        assert j.threads == 1  # a small MLP on the CPU trains on one thread
    assert sorted(sizes) == [0, 2, 3]
    assert sizes[0] == student_size(cfg, 8, inputs.data.input_shape, 10, None)
    gpu_jobs, _ = make_jobs(p, inputs, "cuda")  # (planned only: nothing runs on it)
    assert {j.threads for j in gpu_jobs} == {None}


def test_student_size_counts_the_students_parameters_and_macs(tmp_path: Path,
                                                              digits: Dataset) -> None:
    size = student_size(_cfg(tmp_path), 16, digits.input_shape, 10, None)
    model = build_student("mlp_student", digits.input_shape, 10, width=16)
    assert size.params == count_parameters(model)
    # two hidden layers of 16 units: 64*16 + 16*16 + 16*10 multiply-accumulates
    assert size.macs == 64 * 16 + 16 * 16 + 16 * 10


def test_new_row_counts_diverged_and_failed_seeds_apart(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, seeds=4)
    p = plan(_folder(tmp_path / "run", cfg), retrain=False)
    outcomes = [_outcome(0.9, seconds=1.0), _outcome(None, "diverged", seconds=0.5),
                _outcome(None, "out of GPU memory: CUDA", seconds=0.25, worker="host:2"),
                _outcome(0.8, seconds=0.125)]
    row = new_row(p, 2, Size(params=1000, macs=900), outcomes)
    s = p.selection.settings[2]
    assert (row.kind, row.width, row.tuned, row.best, row.trial_id) == (
        "distilled", 16, True, True, "d0000016")
    assert (row.diverged, row.failed) == (1, 1)
    assert row.test_accs == [0.9, None, None, 0.8]
    assert row.errors == [None, "diverged", "out of GPU memory: CUDA", None]
    assert row.test_correct == ["AAAA", None, None, "AAAA"]
    assert row.final_val_accs == [pytest.approx(0.91), None, None, pytest.approx(0.81)]
    assert row.mean == pytest.approx(0.85) and row.std == pytest.approx(0.0707107, rel=1e-5)
    assert row.workers == ["host:1", "host:1", "host:2", "host:1"]
    assert row.seconds == 1.875 and row.seeds == [0, 1, 2, 3]
    assert (row.params, row.macs, row.epochs, row.alpha) == (1000, 900, 2, 0.3)
    assert row.settings == s.settings and row.spec == s.spec(p.fingerprint)
    # a seed without an accuracy and without an error is counted as diverged
    bare = new_row(p, 2, Size(1000, 900), [_outcome(None), _outcome(None), _outcome(None),
                                           _outcome(None)])
    assert (bare.diverged, bare.failed, bare.mean, bare.std) == (4, 0, None, None)


def test_new_row_of_a_baseline_has_alpha_one(tmp_path: Path) -> None:
    p = plan(_folder(tmp_path / "run", _cfg(tmp_path, seeds=1)), retrain=False)
    row = new_row(p, 1, Size(1, 1), [_outcome(0.7)])
    assert (row.kind, row.tuned, row.alpha, row.trial_id) == ("baseline", False, 1.0, None)
    assert (row.mean, row.std) == (0.7, None)


def test_score_student_tests_the_retrained_weights_on_the_test_split(
        tmp_path: Path, inputs: Inputs) -> None:
    cfg = _cfg(tmp_path)
    p = plan(_folder(tmp_path / "run", cfg), retrain=False)
    data = inputs.data
    test = load_test(cfg.dataset, data, data_dir=tmp_path / "data", cache_dir=tmp_path)
    job = Retraining(2, 0, training_config(cfg, p.selection.settings[2], 0), threads=1)
    result = train_one(job, data, inputs.teacher)
    outcome = score_student(p, inputs, job, result, test, "cpu")
    assert result.state is not None and outcome.result is result
    model = build_student("mlp_student", data.input_shape, 10, width=16)
    model.load_state_dict(result.state)
    assert outcome.test_acc == evaluate(model, test)[0]
    assert outcome.correct is not None
    right = unpack_correct(outcome.correct, len(test))
    assert right.sum() / len(test) == outcome.test_acc
    assert torch.equal(torch.from_numpy(right), model.eval()(test.x).argmax(1) == test.y)
    diverged = Retrained(None, None, 0.1, "cpu", "host:1", "diverged")
    assert score_student(p, inputs, job, diverged, test, "cpu") == Outcome(diverged, None, None)


# --------------------------------------------------------------------------- the whole
def test_evaluate_final_refuses_inputs_of_another_teacher(tmp_path: Path,
                                                          inputs: Inputs) -> None:
    folder = _folder(tmp_path / "run", _cfg(tmp_path))
    other = dataclasses.replace(inputs, teacher=dataclasses.replace(inputs.teacher, key="x"))
    with pytest.raises(ValueError, match=r"the teacher passed in \(x\) is not"):
        evaluate_final(folder, device="cpu", inputs=other)
    assert not (folder / "final.json").exists()


def test_evaluate_final_takes_the_searchs_own_inputs(tmp_path: Path) -> None:
    """The search hands its inputs (the teacher read from the cache, after the first use)
    to the final evaluation, which trains with them rather than loading them again."""
    cfg = _cfg(tmp_path, seeds=1)
    folder = _folder(tmp_path / "run", cfg)
    load_inputs(cfg)  # the teacher is trained and cached
    cached = load_inputs(cfg)
    assert not cached.teacher.trained_now
    final = evaluate_final(folder, device="cpu", inputs=cached)
    assert final.retrained == 4 and final.teacher is not None
    assert final.teacher.key == teacher_key(cfg)


def _test_split(cfg: ExperimentConfig, data: Dataset, tmp_path: Path) -> Split:
    return load_test(cfg.dataset, data, data_dir=tmp_path / "data", cache_dir=tmp_path)


def test_evaluate_final_retrains_tests_saves_and_then_reuses(tmp_path: Path,
                                                            digits: Dataset) -> None:
    cfg = _cfg(tmp_path)
    folder = _folder(tmp_path / "run", cfg)
    final = evaluate_final(folder, device="cpu")
    assert read_final(folder) == final
    assert (final.retrained, final.reused, final.seeds, final.device) == (8, 0, [0, 1], "cpu")
    assert [(r.kind, r.width, r.tuned, r.best) for r in final.rows] == [
        ("distilled", 8, True, False), ("baseline", 8, False, False),
        ("distilled", 16, True, True), ("baseline", 16, True, True)]
    test = _test_split(cfg, digits, tmp_path)
    assert final.data == DataSizes(len(digits.train), len(digits.val), len(test))
    assert final.teacher is not None and final.teacher.key == teacher_key(cfg)
    assert final.teacher.test_acc is not None and final.teacher.test_correct is not None
    right = unpack_correct(final.teacher.test_correct, len(test))
    assert right.sum() / len(test) == final.teacher.test_acc
    for row in final.rows:
        assert None not in row.test_accs and row.errors == [None, None]
        assert row.epochs == 2 and row.alpha == (0.3 if row.kind == "distilled" else 1.0)
        assert row.test_accs[0] != row.test_accs[1] or row.final_val_accs[0] != \
            row.final_val_accs[1]  # two seeds, two models
    # every retrained model is saved, with the accuracy final.json gives it
    entries = read_entries(folder)
    assert len(entries) == 8
    for e in entries:
        row = next(r for r in final.rows if (r.kind, r.width) == (e.kind, e.width))
        assert e.test_acc == row.test_accs[e.seed]
    best = load_student(folder)  # the best distilled width (16), seed 0
    assert evaluate(best, test)[0] == final.rows[2].test_accs[0]

    # nothing changed: everything reused, nothing trained, the students kept
    files = {p.name: p.read_bytes() for p in (folder / STUDENTS_DIR).glob("*.pt")}
    again = evaluate_final(folder, retrain=False, device="cpu")
    assert (again.retrained, again.reused) == (0, 4)
    assert [r.test_accs for r in again.rows] == [r.test_accs for r in final.rows]
    assert again.teacher == final.teacher and again.data == final.data
    assert {p.name: p.read_bytes() for p in (folder / STUDENTS_DIR).glob("*.pt")} == files
    assert len(read_entries(folder)) == 8

    # a better trial at width 16: that setting is retrained, the others reused
    write_table(folder / "trials.csv", [*TRIALS, _trial("distill", "d1600002", 16, 0.97,
                                                        lr=0.05)])
    changed = evaluate_final(folder, retrain=False, device="cpu")
    assert (changed.retrained, changed.reused) == (2, 3)
    assert changed.rows[2].trial_id == "d1600002" and changed.rows[2].settings["lr"] == 0.05
    assert [r.test_accs for i, r in enumerate(changed.rows) if i != 2] == [
        r.test_accs for i, r in enumerate(final.rows) if i != 2]
    assert len(read_entries(folder)) == 8

    # retrained from scratch: the same seeds give the same models and the same accuracies
    fresh = evaluate_final(folder, retrain=True, device="cpu")
    assert (fresh.retrained, fresh.reused) == (8, 0)
    assert [r.test_accs for r in fresh.rows] == [r.test_accs for r in changed.rows]
