"""The search driver and its entry points: `run_search`, `resume_search`, `report_search`.

Flow: config -> dataset + cached teacher (once, here) -> the trials' payload in Ray's object
store once (`trainable.make_payload`) -> one Tuner runs both searches side by side, the
distillation search and the baseline (the student alone, alpha = 1), on the same budget
(`arms`), each trial training a student and reporting every epoch (`trainable.run_trial`) ->
the results folder (`status` keeps trials.csv and progress.csv current; `results`, `tables`)
-> the final evaluation and the report (`final`, `report`), whose retrainings run as Ray tasks
on the same payload (`trainable.ray_runner`).

A resume restores Ray Tune's saved experiment after `ray_workarounds` has mended what a killed
driver can leave behind.
"""

from __future__ import annotations

import logging
import contextlib
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import optuna
import ray
import torch
from filelock import FileLock, Timeout
from ray import tune

from kdsearch import files, process, ray_workarounds
from kdsearch.arms import PhaseScheduler, PhaseSearcher, make_search, random_search_note
from kdsearch.builders import Given, check_inputs, code_folders, with_objects
from kdsearch.cluster import (Resources, check_gpus, check_resources, hardware, ray_running,
                              trial_resources)
from kdsearch.config import (ExperimentConfig, check_searchable, default_cache_dir,
                             default_data_dir, dump_config, load_config, max_epochs)
from kdsearch.data import Dataset, load_dataset
from kdsearch.entry_points import EntryPointError, resolve
from kdsearch.errors import one_line
from kdsearch.final import check_consistent, read_searched
from kdsearch.gpu import CudaCheck, explain
from kdsearch.metrics import VAL_ACC
from kdsearch.importances import write_importances
from kdsearch.optuna_study import StudyWriter, export_study
from kdsearch.report import make_report
from kdsearch.results import (CONFIG_FILE, EXPERIMENT, OPTUNA_FILE, PHASE_LABEL, PHASES, RUN_FILE,
                              SearchError, SearchResult, best_trial, fmt_setting, per_width,
                              phase_dimensions, phase_of, phase_samples, read_config, read_run,
                              search_state, searched_widths, write_run)
from kdsearch.spaces import find
from kdsearch.status import StatusCallback
from kdsearch.tables import dim_column  # noqa: F401 (named by old saved state, below)
from kdsearch.tables import PROGRESS_FILE, TRIALS_FILE, read_table, write_table
from kdsearch.teacher import Teacher, get_teacher
from kdsearch.trainable import make_payload, ray_runner, run_trial
from kdsearch.version import __version__

log = logging.getLogger(__name__)

# Ray Tune's saved state (tuner.pkl) of a search run before kdsearch's search module was split
# names these: its searcher and scheduler classes, and the functions its status callback (pickled
# by value) called. A resume of such a search unpickles it through them.
_PhaseSearcher, _PhaseScheduler = PhaseSearcher, PhaseScheduler
_fmt, _phase_of, _write_csv_atomic = fmt_setting, phase_of, write_table


# --------------------------------------------------------------------------- inputs
def prepare(cfg: ExperimentConfig, device: str = "cpu", *, progress: bool = True,
            given: Given | None = None) -> tuple[Dataset, Teacher]:
    """The dataset and the (cached, else trained) teacher of `cfg`, on `device`, and the
    students of every searched width checked against the data (the objects `given` in place
    of the config's names)."""
    given = given or Given()
    cache_dir = default_cache_dir(cfg)
    data = load_dataset(cfg.dataset, data_dir=default_data_dir(cfg), cache_dir=cache_dir,
                        device=device, folders=code_folders(cfg), given=given.dataset)
    check_inputs(cfg, searched_widths(cfg), data.train.x, data.num_classes, given.student)
    # a missing teacher trains on the driver's GPU when it has one (a cached one is read without
    # starting CUDA here); the trials get CPU tensors through the object store and move them to
    # their own device once
    teacher = get_teacher(cfg, data, cache_dir=cache_dir, progress=progress,
                          train_device="cuda" if torch.cuda.is_available() else None,
                          given=given.teacher)
    if progress:
        how = ("given" if given.teacher is not None else "logits from a file"
               if teacher.model is None else "cached" if not teacher.trained_now
               else "loaded from its checkpoint" if cfg.teacher.checkpoint else "trained now")
        acc = "" if teacher.val_acc is None else f", val_acc {teacher.val_acc:.4f}"
        log.info(f"teacher: {cfg.teacher.model} on {cfg.dataset.name}{acc} ({how}); "
                 f"{len(data.train):,} training and {len(data.val):,} validation examples")
    return data, teacher


@dataclass
class Prepared:
    """What a search needs before its first trial: loaded (and checked) before anything is
    written, so that bad input (a missing dataset, a val_size too large) leaves no folder."""

    data: Dataset
    teacher: Teacher
    hardware: dict[str, Any]
    resources: Resources
    payload: dict[str, Any]
    cuda: list[CudaCheck]  # torch's CUDA where Ray reports GPUs (run.json's `cuda`)
    given: Given  # the objects run_search was given in place of the config's names


def prepare_search(cfg: ExperimentConfig, *, quiet: bool, given: Given | None = None
                   ) -> Prepared:
    """`prepare`, then the cluster's resources and the trials' payload (Ray running). Where Ray
    reports GPUs that torch cannot use, one line says why and what to do."""
    given = given or Given()
    data, teacher = prepare(cfg, progress=not quiet, given=given)
    found = hardware()
    cuda = check_gpus(cfg, found)
    resources = trial_resources(cfg, data, found, cuda, given.student)
    unusable = [check for check in cuda if not check.usable]
    if unusable and not quiet:
        log.warning(explain(unusable, found["gpus"],
                            planned_for_cpu=resources.gpus_per_trial == 0))
    payload = make_payload(cfg, data, teacher, cpus_per_trial=resources.cpus_per_trial,
                           student=given.student)
    if cfg.code_dir and ray.get_runtime_context().runtime_env.get("working_dir"):
        # the user's modules were shipped with the job: the trials import them from there
        payload["config"]["code_dir"] = None
    return Prepared(data, teacher, found, resources, payload, cuda, given)


# --------------------------------------------------------------------------- the Tuner
def _run_tuner(phases: list[str], cfg: ExperimentConfig, results_dir: Path, storage_path: str,
               prepared: Prepared, *, restore: bool, quiet: bool,
               callbacks: Sequence[tune.Callback] = ()) -> None:
    """Both phases' trials in one Tuner (see `arms.PhaseSearcher`); returns when all ended."""
    s = cfg.search
    budgets = {p: phase_samples(cfg, p) for p in phases}
    total = sum(budgets.values())
    local = "://" not in storage_path
    exp_path = str(Path(storage_path) / EXPERIMENT) if local \
        else storage_path.rstrip("/") + "/" + EXPERIMENT
    torn = None
    if restore and local:
        torn = ray_workarounds.mend_torn_state(exp_path, log=None if quiet else log.info)
        if torn and not quiet:
            log.info(f"note: Ray's saved state of this search (session {torn[0]}) was cut short "
                     f"by the kill; " + ("taken whole from Ray's staging folder" if torn[1] else
                                         "continuing from the state saved before it, or from "
                                         "the start if there is none"))
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
            log.info("note: the interrupted attempt saved no search state and ended no trial; "
                     "starting the search from the beginning")
    if not restore and local:
        shutil.rmtree(exp_path, ignore_errors=True)  # a killed attempt that saved no state yet
    payload = dict(prepared.payload, finished=ray_workarounds.finished_trials(results_dir)
                   if restore else {})
    resources = prepared.resources
    trainable = tune.with_resources(tune.with_parameters(run_trial, payload=payload),
                                    {"cpu": resources.cpus_per_trial,
                                     "gpu": resources.gpus_per_trial})
    # kdsearch's own (the status first: the study writer reads what it reconciled), then the user's
    ours = [StatusCallback(results_dir, cfg, budgets, quiet=quiet, fresh=not restore,
                           params_by_width=payload["params_by_width"]),
            StudyWriter(results_dir, cfg)]
    every = [*ours, *callbacks]
    run_config = tune.RunConfig(name=EXPERIMENT, storage_path=storage_path, verbose=0,
                                callbacks=every,
                                failure_config=tune.FailureConfig(max_failures=s.max_failures),
                                checkpoint_config=tune.CheckpointConfig(num_to_keep=1))
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    # Tune's own per-trial loggers (read when fit() starts; process.restored puts it back)
    os.environ["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] = "0" if s.trial_logs else "1"
    if restore:
        ray_workarounds.repair_checkpoints(exp_path)
        tuner = tune.Tuner.restore(exp_path, trainable=trainable, resume_unfinished=True,
                                   resume_errored=True)
        ray_workarounds.restore_callbacks(tuner, every)
    else:
        searcher, scheduler = make_search(cfg, phases)
        tune_config = tune.TuneConfig(metric=VAL_ACC, mode="max", search_alg=searcher,
                                      scheduler=scheduler, num_samples=total,
                                      max_concurrent_trials=resources.concurrency,
                                      reuse_actors=True)
        tuner = tune.Tuner(trainable, tune_config=tune_config, run_config=run_config)
    if local:
        ray_workarounds.keep_tuner_copy(exp_path)
    if not quiet:
        _print_start(cfg, phases, budgets, resources.concurrency)
    with ray_workarounds.sigint_handler_kept():
        grid = tuner.fit()
    # Tune catches Ctrl-C (SIGINT) itself: fit() then returns early, with its state saved, as
    # if the search had ended. Fewer ended trials than planned means it was interrupted: it
    # must not be marked finished, nor the report run on half a search.
    ended = grid.num_terminated + grid.num_errors
    if ended < total:
        raise KeyboardInterrupt(f"search interrupted after {ended} of {total} trials")


def _print_start(cfg: ExperimentConfig, phases: list[str], budgets: dict[str, int],
                 concurrency: int) -> None:
    s, widths = cfg.search, searched_widths(cfg)
    kinds = " and ".join(f"{budgets[p]} {PHASE_LABEL[p]}" for p in phases)
    split = (f", split evenly over {len(widths)} widths" if per_width(cfg) and len(widths) > 1
             else "")
    log.info(f"search: {kinds} trials of {cfg.student.model} on {cfg.dataset.name}"
             f"{', side by side' if len(phases) > 1 else ''}, {s.algorithm.upper()} + "
             f"{s.scheduler.upper()}, up to {max_epochs(cfg)} epochs each, "
             f"{concurrency} at a time{split}")
    if per_width(cfg) and min(budgets.values()) < len(widths):
        log.info(f"note: fewer trials than widths ({len(widths)}): only the first "
                 f"widths get a trial; raise search.num_samples to tune them all")
    note = random_search_note(cfg, phases)
    if note:
        log.info(note)
    log.info("search: starting the trial workers (each imports torch and Ray first)")


# --------------------------------------------------------------------------- a search, whole
def _execute(cfg: ExperimentConfig, results_dir: Path, run: dict[str, Any], *,
             restore: bool, quiet: bool, report: bool, prepared: Prepared,
             callbacks: Sequence[tune.Callback] = ()) -> SearchResult:
    data, teacher = prepared.data, prepared.teacher
    run["teacher"] = {"key": teacher.key, "val_acc": teacher.val_acc}
    run["hardware"] = prepared.hardware
    run["gpus_per_trial"] = prepared.resources.gpus_per_trial
    run["cuda"] = [check.as_dict() for check in prepared.cuda]
    run["max_concurrent_trials"] = prepared.resources.concurrency
    phases = [p for p in PHASES if p == "distill" or cfg.search.baseline]
    state = run.get("search", {})
    if state.get("status") != "finished":
        started = state.get("status") == "started"
        run["search"] = {"status": "started", "started": state.get("started", time.time()),
                         "wall_seconds": state.get("wall_seconds", 0.0)}
        write_run(results_dir, run)
        t0 = time.time()
        try:
            _run_tuner(phases, cfg, results_dir, run["storage_path"], prepared,
                       restore=restore or started, quiet=quiet, callbacks=callbacks)
        except BaseException:
            # Ctrl-C or an error: the search stays "started", and a resume adds to its time
            run["search"]["wall_seconds"] += time.time() - t0
            write_run(results_dir, run)
            raise
        run["search"].update(status="finished", finished=time.time(),
                             wall_seconds=run["search"]["wall_seconds"] + time.time() - t0)
        write_run(results_dir, run)
    if not (results_dir / OPTUNA_FILE).exists():  # (a search of an older kdsearch)
        export_study(results_dir, cfg)
    write_importances(results_dir, cfg)
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
        # retrain=False: a resume of a search already reported reuses final.json's retrainings
        # of the settings that did not change (they are keyed by setting, seeds and teacher)
        runner = ray_runner(prepared.payload, gpus_per_task=prepared.resources.gpus_per_trial)
        result.report_path = make_report(results_dir, retrain=False, runner=runner,
                                         quiet=quiet, loaded=(data, teacher),
                                         given=prepared.given)
    return result


def run_search(space: str | os.PathLike[str] | ExperimentConfig, *,
               overrides: list[str] | tuple[str, ...] = (), address: str | None = None,
               results_dir: str | os.PathLike[str] = "results",
               storage_path: str | None = None, force: bool = False, report: bool = True,
               quiet: bool = False, callbacks: Sequence[tune.Callback] = (),
               dataset: Any = None, teacher: Any = None, student: Any = None) -> SearchResult:
    """Run the search described by a space file (or config); return what it found.

    The results land in `<results_dir>/<name>/`. An existing folder of that name is never
    overwritten unless `force=True`; continue it with `resume_search` instead. `callbacks`:
    Ray Tune callbacks (`ray.tune.Callback`, such as `MLflowLoggerCallback`) that see every
    trial of both phases, as in any Tune run. kdsearch's messages go to the logger "kdsearch"
    (`logging.basicConfig(level=logging.INFO)` shows them); `quiet` gives none.

    Python objects take the place of the space file's names (a notebook needs no module):
    `dataset` a dict {"train": (x, y), "test": (x, y), ...} or a function that returns one,
    `teacher` a ready (trained) `nn.Module`, `student` a factory called as
    `student(width=W, **student.kwargs)`. They reach the trials through Ray's object store,
    pickled with cloudpickle: a function or class defined in a notebook or script travels by
    value; one imported from a module travels by name, so that module must be importable on
    every node. Resume and report the search with the same objects (`resume_search(...,
    dataset=...)`), and `load_student(..., student=...)`.
    """
    if isinstance(space, ExperimentConfig):
        cfg = space
    else:
        space = find(str(space))  # a file, or the name of a shipped space
        cfg = load_config(space, overrides)
    given = Given(dataset, teacher, student)
    cfg = with_objects(cfg, given)
    check_searchable(cfg, cfg.name if isinstance(space, ExperimentConfig) else str(space))
    out = (Path(results_dir) / cfg.name).resolve()
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
    with _ray_for(address, out, quiet=quiet, code_dir=cfg.code_dir):
        check_resources(cfg)
        # data and teacher: before a file is touched
        prepared = prepare_search(cfg, quiet=quiet, given=given)
        with exclusive(out):
            _refuse_existing(out, force)  # another kdsearch may have made it while we prepared
            return _start(cfg, out, storage_path, force, prepared, quiet=quiet, report=report,
                          callbacks=callbacks)


def _start(cfg: ExperimentConfig, out: Path, storage_path: str | None, force: bool,
           prepared: Prepared, *, quiet: bool, report: bool,
           callbacks: Sequence[tune.Callback]) -> SearchResult:
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
    write_run(out, run)
    return _execute(cfg, out, run, restore=False, quiet=quiet, report=report,
                    prepared=prepared, callbacks=callbacks)


def resume_search(results: str | os.PathLike[str], *, address: str | None = None,
                  report: bool = True, quiet: bool = False,
                  callbacks: Sequence[tune.Callback] = (), dataset: Any = None,
                  teacher: Any = None, student: Any = None) -> SearchResult:
    """Continue an interrupted search: finished trials kept, unfinished ones resumed.
    `callbacks`: Ray Tune callbacks for the resumed run (Tune restores none); `dataset`,
    `teacher`, `student`: the objects the search was started with (see run_search)."""
    out = Path(results).resolve()
    if not out.is_dir():
        raise SearchError(f"{results}: no such results folder; pass results/<name> of a search")
    run = read_run(out)
    cfg = read_config(out)
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
        log.info(f"note: this search had finished ({len(trials)} trials); "
                 f"nothing to resume" + (", the report is written again (its retrainings reused "
                                         "where the settings are unchanged)" if report else ""))
    given = Given(dataset, teacher, student)
    with _ray_for(address, out, quiet=quiet, code_dir=cfg.code_dir), exclusive(out):
        check_resources(cfg)
        prepared = prepare_search(cfg, quiet=quiet, given=given)
        return _execute(cfg, out, run, restore=True, quiet=quiet, report=report,
                        prepared=prepared, callbacks=callbacks)


def report_search(results: str | os.PathLike[str], *, address: str | None = None,
                  device: str = "auto", quiet: bool = False, dataset: Any = None,
                  teacher: Any = None, student: Any = None) -> Path:
    """`kdsearch report`: retrain the best settings of a results folder and write its report,
    the retrainings as Ray tasks side by side, as `run` does (`report.make_report` alone runs
    them one after the other in this process). Returns report.md's path. `dataset`,
    `teacher`, `student`: the objects the search was started with (see run_search)."""
    out = Path(results).resolve()
    cfg, _ = read_searched(out)  # a folder that is not a search's is refused before Ray starts
    given = Given(dataset, teacher, student)
    again = f"the report was not written; run kdsearch report {out} again"
    with _ray_for(address, out, interrupted=again, quiet=quiet, code_dir=cfg.code_dir):
        check_resources(cfg)
        prepared = prepare_search(cfg, quiet=quiet, given=given)
        write_importances(out, cfg)
        runner = ray_runner(prepared.payload, gpus_per_task=prepared.resources.gpus_per_trial)
        return make_report(out, quiet=quiet, device=device, runner=runner,
                           loaded=(prepared.data, prepared.teacher), given=given)


def callbacks_named(names: list[str], folders: list[Path]) -> list[Any]:
    """Ray Tune callbacks named "module:Class" (--callback), each imported (from `folders`
    first) and made with no arguments; a one-line EntryPointError for one that is not."""
    made = []
    for name in names:
        cls = resolve(name, where="--callback", folders=folders)
        try:
            callback = cls()
        except Exception as e:
            raise EntryPointError(f"--callback {name}: {name}() raised {type(e).__name__}: "
                                  f"{one_line(e)}") from None
        if not isinstance(callback, tune.Callback):
            raise EntryPointError(f"--callback {name}: {name}() made a "
                                  f"{type(callback).__name__}, not a ray.tune.Callback")
        made.append(callback)
    return made


# --------------------------------------------------------------------------- the folder
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


def _check_storage(storage_path: str | None, typed: str | None = None) -> None:
    """A local storage path must be a folder, or one that can be made: not under a file.
    `typed`: the --storage-path the user gave (the search's name is added to it)."""
    if storage_path is not None and "://" not in storage_path:
        _check_makeable(Path(storage_path), f"--storage-path {typed or storage_path}",
                        "pass a folder you can write to (or a URI such as s3://bucket/path)")


def _refuse_existing(out: Path, force: bool) -> None:
    if out.is_dir() and any(out.iterdir()) and not force:
        raise SearchError(f"{out} already exists; continue it with `kdsearch resume {out}`, "
                          f"replace it with --force, or pick another --set name=...")


@contextlib.contextmanager
def exclusive(out: Path) -> Iterator[None]:
    """One kdsearch at a time runs or resumes the search in `out` (a lock beside the folder,
    held while it runs): two at once would write their trials into one folder."""
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


@contextlib.contextmanager
def _ray_for(address: str | None, out: Path, interrupted: str = "", *, quiet: bool = True,
             code_dir: str | None = None) -> Iterator[None]:
    """Ray for one search of `out` (`cluster.ray_running`), the process's environment, warning
    filters and loggers put back after it (`process.restored`); Ctrl-C tells how to continue
    (`interrupted`, else with kdsearch resume)."""
    with process.restored(), ray_running(address, quiet=quiet, code_dir=code_dir):
        try:
            yield
        except KeyboardInterrupt:
            if not interrupted:
                interrupted = (f"continue with: kdsearch resume {out}"
                               if (out / RUN_FILE).exists()
                               else "nothing was written; run the same command again")
            log.warning(f"\nkdsearch: interrupted; {interrupted}")
            raise
