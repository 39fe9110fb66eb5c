"""The final evaluation: the search's best settings, retrained from scratch, tested once.

A search ranks settings by validation accuracy, so its numbers are optimistic and come from one
seed. Here the best distilled setting and the best baseline setting (alpha = 1) of each student
width are retrained with `report.seeds` seeds (seed s sets training.seed = s) on the training
split, for the full epoch budget, and each model is evaluated once on the held-out test split.
This module is the only caller of `data.load_test`: the search never sees the test split.

The result is `final.json` in the results folder (written atomically). The report reads it;
`evaluate_final(..., retrain=False)` reuses every row of an existing final.json whose setting and
seeds are unchanged and trains only what is new (nothing, for an unchanged search).

The retrainings are independent. `evaluate_final` hands them to a `Runner`: by default they
run one after the other in this process; `kdsearch run` passes one (`trainable.ray_runner`) that
runs them as Ray tasks, side by side on every CPU and GPU share of the cluster, and returns each
model's weights here, where the test split is read. Both give the same weights for the same
setting, seed and thread count.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from kdsearch.config import (VALUE_RULES, ExperimentConfig, config_to_dict, default_cache_dir,
                             default_data_dir, with_params)
from kdsearch.builders import Given, build_student, code_folders
from kdsearch.data import Dataset, load_dataset, load_test
from kdsearch.distill import correct_on, evaluate
from kdsearch.models import count_parameters
from kdsearch.results import (BASELINE, CONFIG_FILE, DISTILLED, FINAL_FILE, FINAL_FORMAT, RUN_FILE,
                              ReportError, best_trial, phase_dimensions, rank_key, read_config,
                              read_final, row_width, write_json)
from kdsearch.retrain import (Retrained, Retraining, Runner, in_process, out_of_memory,
                              torch_threads)
from kdsearch.stats import mean_std, pack_correct
from kdsearch.students import STUDENTS_DIR, kept_entries, save_state, write_index
from kdsearch.tables import TRIALS_FILE, dim_column, read_table
from kdsearch.teacher import Teacher, TeacherError, get_teacher, teacher_key, user_file_sha256
from kdsearch.version import __version__

log = logging.getLogger(__name__)

# below this many multiply-adds per batch, one CPU thread beats several (thread hand-off costs
# more than the work): true of the MLP students on digits, not of CNNs on CIFAR-10
_SMALL_BATCH_WORK = 5e6


@dataclass(frozen=True)
class Setting:
    """One setting to retrain: the best of its kind at one student width."""

    kind: str  # DISTILLED or BASELINE
    width: int
    settings: dict[str, Any]  # the phase's searched dimensions -> the trial's values
    tuned: bool  # False: a baseline nobody searched for (the distilled setting with alpha = 1)
    best: bool  # the best setting of its kind over all widths
    trial_id: str | None  # the search trial it comes from (None for an untuned baseline)
    val_acc: float | None  # that trial's validation accuracy at its last epoch
    search_epochs: int | None  # the epochs that trial ran (fewer if ASHA stopped it)

    def spec(self, fingerprint: str) -> dict[str, Any]:
        """Everything that determines the retrained models, but the seeds (`fingerprint`: the
        config's, `training_fingerprint`)."""
        return {"kind": self.kind, "width": self.width, "tuned": self.tuned,
                "settings": self.settings, "config": fingerprint}


@dataclass(frozen=True)
class Selection:
    settings: list[Setting]
    baseline_tuned: bool  # a baseline search ran and has a finished trial
    baseline_note: str  # why the baseline is untuned, "" when it is tuned


def teacher_files(cfg: ExperimentConfig, recorded: dict[str, Any] | None = None
                  ) -> dict[str, str]:
    """The sha256 of teacher.checkpoint and teacher.logits, where set: read from the files, or,
    where a file is gone (the folder reported on another machine), as final.json `recorded`."""
    out = {}
    for key in ("checkpoint", "logits"):
        path = getattr(cfg.teacher, key)
        if path:
            out[key] = (user_file_sha256(Path(path)) or (recorded or {}).get(key)
                        or "unreadable")
    return out


def training_fingerprint(cfg: ExperimentConfig, files: dict[str, str] | None = None) -> str:
    """A hash of the config sections a retraining depends on (not search or report); a
    teacher's checkpoint or logits by their content (`teacher_files`), not where they lie."""
    d = config_to_dict(cfg)
    for key, sha in (files or {}).items():
        d["teacher"][key] = sha
    if d["training"]["fast_step"] == "auto":  # the default: as before the setting existed
        del d["training"]["fast_step"]
    for section, key in (("teacher", "kwargs"), ("teacher", "checkpoint"),
                         ("teacher", "logits"), ("student", "kwargs")):
        if not d[section][key]:  # unset: as before a user's models could be named
            del d[section][key]
    blob = json.dumps({k: d[k] for k in ("dataset", "teacher", "student", "training")},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


# --------------------------------------------------------------------------- reading a folder
def read_searched(results_dir: Path) -> tuple[ExperimentConfig, list[dict[str, str]]]:
    """The config and trials of a results folder that a search has run in, or a ReportError."""
    if not Path(results_dir).is_dir():
        raise ReportError(f"{results_dir}: no such results folder; pass results/<name> of a "
                          f"search")
    cfg = read_config(results_dir)
    rows = read_table(results_dir / TRIALS_FILE)
    if not rows:
        raise ReportError(f"{results_dir}: no {TRIALS_FILE} or no trials in it; run the search "
                          f"first (kdsearch run SPACE.yaml)")
    check_consistent(cfg, rows, results_dir)
    return cfg, rows


def check_consistent(cfg: ExperimentConfig, rows: list[dict[str, str]], results_dir: Path
                     ) -> None:
    """config.yaml is the one the search ran with: every ended trial holds exactly the
    dimensions it searches, and its teacher is run.json's. A ReportError names what differs."""
    path = results_dir / TRIALS_FILE
    restore = (f"the two files are not of one search: restore {CONFIG_FILE} from a copy of the "
               f"folder (the search's own config)")
    known = {dim_column(name) for name in VALUE_RULES} - {dim_column("epochs")}
    for phase in ("distill", "baseline"):
        searched = {dim_column(d.name) for d in phase_dimensions(cfg, phase)}
        for line, r in enumerate(rows, start=2):
            if r.get("phase") != phase or r.get("status") != "TERMINATED":
                continue
            for column in sorted(searched):
                if r.get(column) in (None, ""):
                    raise ReportError(f"{path}: line {line}: no {column}, which {CONFIG_FILE} "
                                      f"searches; {restore}")
            for column in sorted(known - searched):
                if r.get(column) not in (None, ""):
                    raise ReportError(f"{path}: line {line}: the trial searched {column}, which "
                                      f"{CONFIG_FILE} does not; {restore}")
    try:
        run = json.loads((results_dir / RUN_FILE).read_text())
        ran_with = run["teacher"]["key"]
    except (OSError, ValueError, KeyError, TypeError):
        return  # no record of the teacher (a search killed early, an older folder)
    try:
        key = teacher_key(cfg)
    except TeacherError:
        return  # its checkpoint or logits file is gone: a retraining that needs it says so
    if ran_with and ran_with != key:
        raise ReportError(f"{results_dir / CONFIG_FILE}: its dataset or teacher settings differ "
                          f"from those the search ran with (teacher {ran_with} in {RUN_FILE}); "
                          f"{restore}")


# --------------------------------------------------------------------------- choosing settings
def _best_by_width(rows: list[dict[str, Any]], cfg: ExperimentConfig, phase: str
                   ) -> dict[int, tuple[dict[str, Any], dict[str, Any]]]:
    dims = [d.name for d in phase_dimensions(cfg, phase)]
    groups: dict[int, list[dict[str, Any]]] = {}
    for r in rows:
        w = row_width(r, cfg)
        if r.get("phase") == phase and w is not None:
            groups.setdefault(w, []).append(r)
    out = {}
    for w, group in groups.items():
        best = best_trial(group, phase, dims)
        if best is not None:
            out[w] = best
    return out


def _overall_width(rows: list[dict[str, Any]], cfg: ExperimentConfig, phase: str) -> int | None:
    dims = [d.name for d in phase_dimensions(cfg, phase)]
    best = best_trial([r for r in rows if row_width(r, cfg) is not None], phase, dims)
    return row_width(best[1], cfg) if best is not None else None


def _setting(kind: str, width: int, best: tuple[dict[str, Any], dict[str, Any]],
             is_best: bool) -> Setting:
    settings, metrics = best
    return Setting(kind, width, dict(settings), True, is_best, str(metrics.get("trial_id")),
                   float(metrics["val_acc"]), int(float(metrics.get("epochs") or 0)))


def _untuned(distilled: Setting, cfg: ExperimentConfig, is_best: bool) -> Setting:
    dims = [d.name for d in phase_dimensions(cfg, "baseline")]
    settings = {d: distilled.settings[d] for d in dims if d in distilled.settings}
    return Setting(BASELINE, distilled.width, settings, False, is_best, None, None, None)


def select_settings(cfg: ExperimentConfig, rows: list[dict[str, Any]]) -> Selection:
    """The settings to retrain: per width, the best distilled and the best baseline trial.

    Widths are ranked by their best distilled trial (as `search.best_trial` ranks trials) and
    the best `report.max_widths` kept, plus the best baseline's width. A width whose baseline
    has no finished trial gets an untuned baseline: its distilled setting with alpha = 1.
    """
    distilled = _best_by_width(rows, cfg, "distill")
    if not distilled:
        raise ReportError(f"no distillation trial finished in {TRIALS_FILE}; nothing to evaluate "
                          f"(continue the search with `kdsearch resume`)")
    baseline = _best_by_width(rows, cfg, "baseline") if cfg.search.baseline else {}
    # the overall bests are the trials search.best_trial picks (the search's own summary line)
    best_distilled = _overall_width(rows, cfg, "distill")
    best_base = _overall_width(rows, cfg, "baseline") if baseline else None
    ranked = sorted(distilled, reverse=True,
                    key=lambda w: (w == best_distilled, rank_key(distilled[w][1])))
    widths = set(ranked[:cfg.report.max_widths])
    if best_base is not None:
        widths.add(best_base)
    if not cfg.search.baseline:
        note = "the baseline was not tuned (search.baseline is false)"
    elif not baseline:
        note = "the baseline was not tuned (no baseline trial finished)"
    else:
        note = ""
    out: list[Setting] = []
    for w in sorted(widths):
        d = _setting(DISTILLED, w, distilled[w], w == ranked[0]) if w in distilled else None
        if d is not None:
            out.append(d)
        if w in baseline:
            out.append(_setting(BASELINE, w, baseline[w], w == best_base))
        elif d is not None:
            out.append(_untuned(d, cfg, best_base is None and w == ranked[0]))
    return Selection(out, bool(baseline), note)


def training_config(cfg: ExperimentConfig, setting: Setting, seed: int) -> ExperimentConfig:
    """The config a retraining runs: the setting's values, alpha = 1 for a baseline, the seed."""
    c = with_params(cfg, {**setting.settings, "width": setting.width})
    alpha = 1.0 if setting.kind == BASELINE else c.training.alpha
    return dataclasses.replace(c, training=dataclasses.replace(c.training, seed=seed,
                                                               alpha=alpha))


# --------------------------------------------------------------------------- training
def _device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def evaluate_final(results_dir: str | os.PathLike[str], *, retrain: bool = True,
                   device: str = "auto", quiet: bool = False,
                   runner: Runner | None = None,
                   loaded: tuple[Dataset, Teacher] | None = None,
                   given: Given | None = None) -> dict[str, Any]:
    """Retrain the best settings of a results folder with K seeds; test once; write final.json.

    With `retrain=False`, rows of an existing final.json with the same setting and seeds are
    reused and only the rest is trained. `runner` trains the models (default: one after the
    other in this process); each is tested here. `loaded`: the folder's dataset and teacher,
    already in memory (the search's own), so that they are not read again. `given`: the
    dataset, teacher and student factory given to run_search as objects. Every retrained
    student's weights are saved under students/ (see kdsearch.students). Returns what
    final.json holds.
    """
    given = given or Given()
    results = Path(results_dir)
    cfg, rows = read_searched(results)
    selection = select_settings(cfg, rows)
    seeds = list(range(cfg.report.seeds))
    found = read_final(results)
    previous = None if retrain else found
    files = teacher_files(cfg, (found or {}).get("teacher_files"))
    fingerprint = training_fingerprint(cfg, files)
    try:
        key = teacher_key(cfg)
    except TeacherError:  # its file is gone: final.json's teacher stands, if nothing is trained
        key = ((previous or {}).get("teacher") or {}).get("key") or ""
    reusable: dict[str, dict[str, Any]] = {}
    if previous is not None and previous.get("seeds") == seeds:
        for r in previous.get("rows", []):
            reusable[json.dumps(r.get("spec"), sort_keys=True)] = r
    old_teacher = (previous or {}).get("teacher") or {}
    teacher_ok = old_teacher.get("key") == key and (old_teacher.get("test_acc") is not None
                                                    or old_teacher.get("params") is None)
    students = results / STUDENTS_DIR
    saved = kept_entries(students, [(r["kind"], r["width"], seed) for r in
                                    (reusable.get(json.dumps(s.spec(fingerprint),
                                                             sort_keys=True))
                                     for s in selection.settings) if r for seed in seeds])

    todo = [s for s in selection.settings
            if json.dumps(s.spec(fingerprint), sort_keys=True) not in reusable]
    device = _device(device)
    out_rows: dict[int, dict[str, Any]] = {}
    for i, s in enumerate(selection.settings):
        r = reusable.get(json.dumps(s.spec(fingerprint), sort_keys=True))
        if r is not None:
            out_rows[i] = {**r, "best": s.best, "trial_id": s.trial_id, "val_acc": s.val_acc,
                           "search_epochs": s.search_epochs}
    reused_rows = list(out_rows.values())
    if not retrain and todo and not quiet:  # say why "reuse" still trains
        why = (f" (no earlier {FINAL_FILE})" if previous is None else
               f" ({FINAL_FILE} has other seeds than report.seeds = {len(seeds)})"
               if previous.get("seeds") != seeds else
               f"; reusing {len(reused_rows)} unchanged settings of {FINAL_FILE}")
        log.info(f"final: retraining {len(todo)} settings x {len(seeds)} seeds{why}")
    teacher_info = old_teacher if teacher_ok else None
    data_info = (previous or {}).get("data") if previous else None
    started = time.perf_counter()

    if todo or teacher_info is None:
        cache_dir = default_cache_dir(cfg)
        data_dir = default_data_dir(cfg)
        if loaded is not None:
            data, teacher = loaded
            if teacher.key != key:
                raise ValueError(f"evaluate_final: the teacher passed in ({teacher.key}) is not "
                                 f"{results}'s ({key})")
            data = data.to(device)
            teacher = dataclasses.replace(
                teacher, model=None if teacher.model is None else teacher.model.to(device),
                train_logits=teacher.train_logits.to(device))
        else:
            data = load_dataset(cfg.dataset, data_dir=data_dir, cache_dir=cache_dir,
                                device=device, folders=code_folders(cfg), given=given.dataset)
            teacher = get_teacher(cfg, data, cache_dir=cache_dir, progress=not quiet,
                                  given=given.teacher)
        jobs: list[Retraining] = []
        n_params: dict[int, int] = {}
        for i, s in enumerate(selection.settings):
            if i in out_rows:
                continue
            n_params[i] = count_parameters(build_student(
                cfg, data.input_shape, data.num_classes, width=s.width, factory=given.student))
            c0 = training_config(cfg, s, 0)
            small = device == "cpu" and n_params[i] * c0.training.batch_size < _SMALL_BATCH_WORK
            jobs += [Retraining(i, seed, training_config(cfg, s, seed), 1 if small else None)
                     for seed in seeds]
        # a runner may start training now, while the test split is read and the teacher tested
        trained = (runner or in_process(data, teacher, given.student))(jobs)
        # the one read of the test split in kdsearch
        test = load_test(cfg.dataset, data, data_dir=data_dir, cache_dir=cache_dir,
                         device=device, folders=code_folders(cfg), given=given.dataset)
        data_info = {"train": len(data.train), "val": len(data.val), "test": len(test)}
        if teacher.model is not None:
            teacher_acc = evaluate(teacher.model, test)[0]
            teacher_info = {"model": cfg.teacher.model, "key": teacher.key,
                            "params": count_parameters(teacher.model),
                            "val_acc": teacher.val_acc, "test_acc": teacher_acc}
            if not quiet:
                log.info(f"final: teacher {cfg.teacher.model} test_acc {teacher_acc:.4f} "
                         f"({len(test):,} test examples)")
        else:  # logits from a file: nothing to test
            teacher_info = {"model": cfg.teacher.model, "key": teacher.key, "params": None,
                            "val_acc": None, "test_acc": None}
        outcomes: dict[tuple[int, int], tuple[Retrained, float | None, str | None]] = {}
        for done, (job, res) in enumerate(trained, 1):
            s = selection.settings[job.index]
            acc, packed = None, None
            if res.state is not None:
                model = build_student(cfg, data.input_shape, data.num_classes, width=s.width,
                                      factory=given.student)
                model.load_state_dict(res.state)
                try:
                    with torch_threads(job.threads):
                        right = correct_on(model.to(device), test)  # the one read of test
                    # counted, then divided: equal counts tie exactly (as evaluate() does it)
                    acc = int(right.sum().item()) / len(right)
                    packed = pack_correct(right.cpu().numpy())
                except torch.cuda.OutOfMemoryError as e:
                    torch.cuda.empty_cache()
                    res = dataclasses.replace(res, state=None, error=out_of_memory(e))
            outcomes[(job.index, job.seed)] = (res, acc, packed)
            if acc is not None and res.state is not None:
                name, sha = save_state(students, s.kind, s.width, job.seed, res.state)
                saved.append({"kind": s.kind, "width": s.width, "seed": job.seed,
                              "test_acc": acc, "file": name, "sha256": sha,
                              "model": cfg.student.model, "kwargs": cfg.student.kwargs,
                              "input_shape": list(data.input_shape),
                              "num_classes": data.num_classes})
            if not quiet:
                label = s.kind if s.tuned else f"{s.kind} (untuned)"
                what = (res.error or "diverged") if acc is None else f"test_acc {acc:.4f}"
                log.info(f"final [{done}/{len(jobs)}] {label} width {s.width} seed {job.seed}: "
                    f"{what} ({job.config.training.epochs} epochs, {res.seconds:.1f} s)")
        trained_on = sorted({res.device for res, _, _ in outcomes.values()})
        for i in n_params:
            s = selection.settings[i]
            c0 = training_config(cfg, s, 0)
            accs = [outcomes[(i, seed)][1] for seed in seeds]
            val_accs = [outcomes[(i, seed)][0].val_acc for seed in seeds]
            ok = [a for a in accs if a is not None]
            mean, std = mean_std(ok)
            out_rows[i] = {"kind": s.kind, "tuned": s.tuned, "best": s.best, "width": s.width,
                           "params": n_params[i], "settings": s.settings,
                           "epochs": c0.training.epochs,
                           "alpha": c0.training.alpha, "trial_id": s.trial_id,
                           "val_acc": s.val_acc, "search_epochs": s.search_epochs,
                           "seeds": seeds, "test_accs": accs,
                           # per seed, which test examples it got right (stats.pack_correct)
                           "test_correct": [outcomes[(i, seed)][2] for seed in seeds],
                           "final_val_accs": val_accs, "mean": mean, "std": std,
                           # seeds without an accuracy: the loss diverged, or another
                           # failure (out of GPU memory), each seed's in `errors`
                           "errors": [outcomes[(i, seed)][0].error for seed in seeds],
                           "diverged": sum(outcomes[(i, seed)][0].error == "diverged"
                                           or (a is None and outcomes[(i, seed)][0].error is None)
                                           for seed, a in zip(seeds, accs)),
                           "failed": sum(a is None and outcomes[(i, seed)][0].error
                                         not in (None, "diverged")
                                         for seed, a in zip(seeds, accs)),
                           # host:pid of the process that trained each seed
                           "workers": [outcomes[(i, seed)][0].worker for seed in seeds],
                           # training time, summed over the seeds (they may run side by side)
                           "seconds": round(sum(outcomes[(i, seed)][0].seconds
                                                for seed in seeds), 3),
                           "spec": s.spec(fingerprint)}
        del data, teacher, test
        if device == "cuda":  # the driver's device (the test split, the teacher)
            torch.cuda.empty_cache()
        if trained_on:
            device = "+".join(trained_on)
    else:
        device = (previous or {}).get("device", device)  # where the reused rows were trained
        if not quiet:
            log.info(f"final: reusing {FINAL_FILE} (all {len(out_rows)} settings unchanged)")

    final = {"format": FINAL_FORMAT, "kdsearch_version": __version__, "name": cfg.name,
             "created": time.time(), "device": device, "seeds": seeds,
             "seconds": round(time.perf_counter() - started, 3),
             "retrained": len(todo) * len(seeds), "reused": len(reused_rows),
             # the reused settings' training time when they were trained, summed over seeds
             "reused_training_seconds": round(sum(float(r.get("seconds") or 0)
                                                  for r in reused_rows), 3),
             "data": data_info, "teacher": teacher_info,
             # the content of teacher.checkpoint / teacher.logits the retrainings are of
             **({"teacher_files": files} if files else {}),
             "student_model": cfg.student.model,
             "baseline_tuned": selection.baseline_tuned,
             "baseline_note": selection.baseline_note,
             "rows": [out_rows[i] for i in range(len(selection.settings))]}
    best = {kind: next((s.width for s in selection.settings if s.best and s.kind == kind), None)
            for kind in (DISTILLED, BASELINE)}
    write_index(students, saved, best)
    write_json(results / FINAL_FILE, final)
    return final
