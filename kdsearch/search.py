"""The search's entry points: `run_search`, `resume_search`, `report_search`.

The flow of a search:

1. The config gives the dataset and the cached teacher, loaded once here (`inputs`).
2. The trials' payload goes into Ray's object store once (`trainable.make_payload`).
3. One Tuner runs both searches side by side (`tuner`): the distilled student's and the
   baseline's (the student alone, alpha = 1), on the same budget. Each trial trains a student
   and reports every epoch.
4. The results go to the results folder. `status` keeps trials.csv and progress.csv current.
5. The final evaluation and the report follow (`final`, `report`). Their retrainings run as Ray
   tasks on the same payload (`trainable.ray_runner`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import ray
from ray import tune

from kdsearch import files, process, searchers, tables
from kdsearch.builders import UserObjects, with_objects
from kdsearch.cluster import (Resources, check_gpus, check_reachable, check_resources, hardware,
                              ray_address, ray_running, trial_resources)
from kdsearch.config import ExperimentConfig, check_searchable, dump_config, load_config
from kdsearch.entry_points import EntryPointError, resolve
from kdsearch.errors import one_line
from kdsearch.folders import check_results_dir, exclusive, refuse_existing, storage_for
from kdsearch.gpu import CudaCheck, explain
from kdsearch.importances import write_importances
from kdsearch.inputs import Inputs, load_inputs
from kdsearch.optuna_study import export_study
from kdsearch.report import make_report
from kdsearch.search_result import SearchResult
from kdsearch.results import (CONFIG_FILE, OPTUNA_FILE, RUN_FILE, SearchError,
                              best_trial, dimension_names, fmt_setting, kind_of_config,
                              read_config, read_run, search_state, searched_kinds, write_run)
from kdsearch.selection import check_consistent, read_searched
from kdsearch.spaces import find
from kdsearch.tables import (BASELINE, DISTILLED, PROGRESS_FILE, TRIALS_FILE, read_table,
                             read_trials, write_table)
from kdsearch.trainable import TrialPayload, make_payload, ray_runner
from kdsearch.tuner import run_tuner
from kdsearch.version import __version__

log = logging.getLogger(__name__)

# Ray Tune's saved state (tuner.pkl) names kdsearch's searcher and scheduler classes, and its
# status callback's functions, by the module that defined them. Searches saved by older
# kdsearch versions name them as `kdsearch.search._PhaseSearcher` and
# `kdsearch.arms.PhaseSearcher`. These aliases keep such names resolving, so those searches
# still resume.
_PhaseSearcher, _PhaseScheduler = searchers.PhaseSearcher, searchers.PhaseScheduler
_fmt, _phase_of, _write_csv_atomic = fmt_setting, kind_of_config, write_table
dim_column = tables.dim_column
sys.modules.setdefault("kdsearch.arms", searchers)


@dataclass(frozen=True)
class SearchSetup:
    """What a search needs before its first trial.

    It is loaded and checked before anything is written. So bad input (a missing dataset, a
    val_size too large) leaves no folder."""

    inputs: Inputs  # the dataset, the teacher, the user's objects
    hardware: dict[str, Any]  # what Ray reports (`cluster.hardware`)
    resources: Resources  # what each trial takes
    payload: TrialPayload  # what every trial gets through the object store
    cuda: list[CudaCheck]  # torch's CUDA where Ray reports GPUs (run.json's `cuda`)


def set_up(cfg: ExperimentConfig, inputs: Inputs) -> SearchSetup:
    """Work out the trials' resources and payload for `inputs`. Ray must be running.

    Where Ray reports GPUs that torch cannot use, log a warning that says why and what to do."""
    objects = inputs.objects
    found = hardware()
    cuda = check_gpus(cfg, found)
    resources = trial_resources(cfg, inputs.data, found, cuda, objects.student)
    unusable = [check for check in cuda if not check.usable]
    if unusable:
        log.warning(explain(unusable, found["gpus"],
                            planned_for_cpu=resources.gpus_per_trial == 0))
    payload = make_payload(cfg, inputs.data, inputs.teacher,
                           cpus_per_trial=resources.cpus_per_trial, student=objects.student)
    if cfg.code_dir and ray.get_runtime_context().runtime_env.get("working_dir"):
        # the user's modules were shipped with the job, so the trials import them from there
        payload = dataclasses.replace(payload, config={**payload.config, "code_dir": None})
    return SearchSetup(inputs, found, resources, payload, cuda)


# --------------------------------------------------------------------------- a search, whole
def _warn_seeds(cfg: ExperimentConfig) -> None:
    """Warn when report.seeds is 1, at the start rather than after the search.

    With one seed, the report has no seed test and no seed bound. So it can reach no verdict and
    show no student that meets the target."""
    if cfg.report.seeds == 1:
        log.warning("note: report.seeds is 1: the final evaluation gives no seed test and no "
                    "seed bound, so the report can reach no verdict and show no student meeting "
                    "the target; set report.seeds to 3 or more for them")


def _record_setup(run: dict[str, Any], setup: SearchSetup) -> None:
    """Record in `run` (run.json) the teacher and what the trials run on."""
    teacher = setup.inputs.teacher
    run["teacher"] = {"key": teacher.key, "val_acc": teacher.val_acc}
    run["hardware"] = setup.hardware
    run["gpus_per_trial"] = setup.resources.gpus_per_trial
    run["cuda"] = [check.as_dict() for check in setup.cuda]
    run["max_concurrent_trials"] = setup.resources.concurrency


def _last_write(results_dir: Path, since: float) -> float:
    """Return when a killed driver last wrote its records (trials.csv, progress.csv).

    This is the end of its run, as near as the folder tells."""
    times = [since]
    for name in (TRIALS_FILE, PROGRESS_FILE):
        try:
            times.append((results_dir / name).stat().st_mtime)
        except OSError:
            pass
    return max(times)


def _search(cfg: ExperimentConfig, results_dir: Path, run: dict[str, Any], setup: SearchSetup,
            *, restore: bool, callbacks: Sequence[tune.Callback]) -> None:
    """Run or continue the search, unless run.json says it finished.

    run.json keeps the search's status and `wall_seconds`: the time spent searching, summed over
    every run of it. A killed run counts up to its last write. Once the search has finished,
    run.json also keeps `elapsed_seconds`: the time from its first start to its end, with the
    time between runs."""
    state = run.get("search", {})
    if state.get("status") == "finished":
        return
    started = state.get("status") == "started"
    spent = float(state.get("wall_seconds", 0.0))
    if state.get("run_started") is not None:  # the run before was killed: count it
        killed = float(state["run_started"])
        spent += max(0.0, _last_write(results_dir, killed) - killed)
    t0 = time.time()
    run["search"] = {"status": "started", "started": state.get("started", t0),
                     "wall_seconds": spent, "run_started": t0}
    write_run(results_dir, run)
    try:
        run_tuner(cfg, searched_kinds(cfg), results_dir, run["storage_path"], setup.payload,
                  setup.resources, restore=restore or started, callbacks=callbacks)
    except BaseException:
        # Ctrl-C or an error: the search stays "started", and a resume adds to its time
        run["search"].update(wall_seconds=spent + time.time() - t0, run_started=None)
        write_run(results_dir, run)
        raise
    end = time.time()
    run["search"].update(status="finished", finished=end, wall_seconds=spent + end - t0,
                         elapsed_seconds=end - run["search"]["started"], run_started=None)
    write_run(results_dir, run)


def _result(cfg: ExperimentConfig, results_dir: Path) -> SearchResult:
    """Return the best trial of each kind. Raise SearchError if no distillation trial finished."""
    rows = read_trials(results_dir / TRIALS_FILE)
    best = best_trial(rows, DISTILLED, dimension_names(cfg, DISTILLED))
    if best is None:
        hint = ""
        if any("never ran" in r.error for r in rows):
            # what a driver in token mode sees on a cluster started with RAY_AUTH_MODE=disabled
            hint = ("; the trial actors never started: if the cluster was started with "
                    "RAY_AUTH_MODE=disabled, set it for kdsearch too")
        raise SearchError(f"{results_dir}: no distillation trial finished; see {TRIALS_FILE} "
                          f"for the errors{hint}")
    base = best_trial(rows, BASELINE, dimension_names(cfg, BASELINE))
    return SearchResult(results_dir, best[0], best[1].metrics(), base[0] if base else None,
                        base[1].metrics() if base else None)


def _search_then_report(cfg: ExperimentConfig, results_dir: Path, run: dict[str, Any],
                        setup: SearchSetup, *, restore: bool, report: bool,
                        callbacks: Sequence[tune.Callback] = ()) -> SearchResult:
    """Run the search (unless it had finished) and write what mattered (the importances).

    Then run the final evaluation and write the report, with the retrainings as Ray tasks."""
    _record_setup(run, setup)
    _search(cfg, results_dir, run, setup, restore=restore, callbacks=callbacks)
    if not (results_dir / OPTUNA_FILE).exists():  # a search of an older kdsearch has none
        export_study(results_dir, cfg)
    write_importances(results_dir, cfg)
    result = _result(cfg, results_dir)
    if report:
        # retrain=False: when a search that was already reported resumes, final.json's
        # retrainings of unchanged settings are reused. They are keyed by setting, seeds and
        # teacher.
        runner = ray_runner(setup.payload, gpus_per_task=setup.resources.gpus_per_trial)
        result.report_path = make_report(results_dir, retrain=False, runner=runner,
                                         inputs=setup.inputs)
    return result


def run_search(space: str | os.PathLike[str] | ExperimentConfig, *,
               overrides: Sequence[str] = (), address: str | None = None,
               results_dir: str | os.PathLike[str] = "results",
               storage_path: str | None = None, force: bool = False, report: bool = True,
               callbacks: Sequence[tune.Callback] = (), dataset: Any = None,
               teacher: Any = None, student: Any = None) -> SearchResult:
    """Run the search a space file describes, then its final evaluation and report.

    The results land in `<results_dir>/<name>/`. kdsearch's messages go to the logger
    "kdsearch" (`logging.basicConfig(level=logging.INFO)` shows them).

    Python objects may take the place of the space file's names, so a notebook needs no module.
    They reach the trials through Ray's object store, pickled with cloudpickle. A function or
    class defined in a notebook or script travels by value. One imported from a module travels
    by name, so that module must be importable on every node. Resume and report the search with
    the same objects.

    Args:
        space: a space file, the name of a shipped space, or a config.
        overrides: `KEY=VALUE` settings applied to the space file (as `--set`).
        address: the Ray cluster to join (`HOST:PORT` or "auto"); default: $RAY_ADDRESS, else a
            local Ray of kdsearch's own.
        results_dir: the folder that holds `<name>/`.
        storage_path: Ray Tune's storage (a path or URI every node reaches); default: the
            results folder.
        force: replace an existing results folder of the same name.
        report: run the final evaluation and write the report after the search.
        callbacks: Ray Tune callbacks (such as `MLflowLoggerCallback`) that see every trial.
        dataset: a dict {"train": (x, y), "test": (x, y), ...} or a function that returns one.
        teacher: a ready (trained) `nn.Module`.
        student: a factory called as `student(width=W, **student.kwargs)`.

    Returns:
        The best settings of each kind and the path of the report.

    Raises:
        UserError: bad input (a config, a file, a folder, a cluster), in one line; nothing is
            written.
        KeyboardInterrupt: the search was interrupted; `resume_search` continues it.
    """
    if isinstance(space, ExperimentConfig):
        cfg, source = space, space.name
    else:
        path = find(str(space))  # a file, or the name of a shipped space
        cfg, source = load_config(path, overrides), str(path)
    objects = UserObjects(dataset, teacher, student)
    cfg = with_objects(cfg, objects)
    check_searchable(cfg, source)
    out = (Path(results_dir) / cfg.name).resolve()
    check_results_dir(out)
    refuse_existing(out, force)
    storage = storage_for(storage_path, cfg.name)
    check_reachable(ray_address(address))  # an address that nothing listens at fails in seconds
    _warn_seeds(cfg)
    # check the user's data, models and checkpoint (and train the teacher if needed) before Ray
    # starts and before a file is written
    inputs = load_inputs(cfg, objects=objects)
    with _ray_for(address, out, code_dir=cfg.code_dir):
        check_resources(cfg)
        setup = set_up(cfg, inputs)
        with exclusive(out):
            refuse_existing(out, force)  # another kdsearch may have made it during the set-up
            run = _new_folder(cfg, out, storage, force)
            return _search_then_report(cfg, out, run, setup, restore=False, report=report,
                                       callbacks=callbacks)


def _new_folder(cfg: ExperimentConfig, out: Path, storage_path: str | None, force: bool
                ) -> dict[str, Any]:
    """Make the results folder (emptied first with --force), its config.yaml and run.json.

    Return what run.json holds."""
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
    return run


def _resumable(out: Path) -> tuple[ExperimentConfig, dict[str, Any]]:
    """Return a results folder's config and run.json, checked to be a search that can resume."""
    if not out.is_dir():
        raise SearchError(f"{out}: no such results folder; pass results/<name> of a search")
    run = read_run(out)
    cfg = read_config(out)
    read_table(out / PROGRESS_FILE)  # damaged tables: refused before Ray starts
    trials = read_trials(out / TRIALS_FILE)
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
            # Tune's saved state names the folder it ran in. Resumed elsewhere, its trials would
            # write their checkpoints there, or fail if that folder is gone.
            raise SearchError(f"{out}: this search ran in {ran_in}, and Ray Tune's saved state "
                              f"names that folder, so it resumes only there: move it back and "
                              f"`kdsearch resume {ran_in}` (`kdsearch report {out}` works "
                              f"anywhere)")
        run["storage_path"] = str(out)  # a finished search, reported from where it is now
    if search_state(run).get("status") == "finished":
        log.info(f"note: this search had finished ({len(trials)} trials); nothing to resume")
    return cfg, run


def resume_search(results: str | os.PathLike[str], *, address: str | None = None,
                  report: bool = True, callbacks: Sequence[tune.Callback] = (),
                  dataset: Any = None, teacher: Any = None, student: Any = None
                  ) -> SearchResult:
    """Continue an interrupted search, then run the final evaluation and write the report.

    Ended trials are kept. Trials that were running resume from their checkpoints.

    Args:
        results: the search's results folder.
        address: the Ray cluster to join (as for `run_search`).
        report: run the final evaluation (reusing its unchanged retrainings) and the report.
        callbacks: Ray Tune callbacks for the resumed run (Tune restores none).
        dataset, teacher, student: the objects the search was started with (see `run_search`).

    Returns:
        The best settings of each kind and the path of the report.

    Raises:
        UserError: not a search's folder, or one that cannot resume here (one line).
    """
    out = Path(results).resolve()
    cfg, run = _resumable(out)
    check_reachable(ray_address(address))
    inputs = load_inputs(cfg, objects=UserObjects(dataset, teacher, student))
    with _ray_for(address, out, code_dir=cfg.code_dir), exclusive(out):
        check_resources(cfg)
        setup = set_up(cfg, inputs)
        return _search_then_report(cfg, out, run, setup, restore=True, report=report,
                                   callbacks=callbacks)


def report_search(results: str | os.PathLike[str], *, retrain: bool = True,
                  in_process: bool = False, address: str | None = None, device: str = "auto",
                  dataset: Any = None, teacher: Any = None, student: Any = None) -> Path:
    """Retrain the best settings of a results folder, test them once, and write its report.

    The retrainings run side by side as Ray tasks, as `kdsearch run` runs them. With
    `in_process`, or with retrain=False, they run one after the other in this process, without
    Ray.

    Args:
        results: the search's results folder.
        retrain: retrain every setting; False: reuse final.json's retrainings of the settings
            that did not change, and train only the rest.
        in_process: train in this process instead of as Ray tasks.
        address: the Ray cluster for the retrainings (as for `run_search`).
        device: where the test split is read and the models tested ("auto": CUDA if present).
        dataset, teacher, student: the objects the search was started with (see `run_search`).

    Returns:
        The path of report.md.

    Raises:
        UserError: not a search's folder, or its files are damaged (one line).
        KeyboardInterrupt: interrupted; the report was not written.
    """
    out = Path(results).resolve()
    cfg, _ = read_searched(out)  # a folder that is not a search's is refused before Ray starts
    objects = UserObjects(dataset, teacher, student)
    if in_process or not retrain:
        write_importances(out, cfg)
        return make_report(out, retrain=retrain, device=device, objects=objects)
    again = f"the report was not written; run kdsearch report {out} again"
    check_reachable(ray_address(address))
    inputs = load_inputs(cfg, objects=objects)
    with _ray_for(address, out, interrupted=again, code_dir=cfg.code_dir):
        check_resources(cfg)
        setup = set_up(cfg, inputs)
        write_importances(out, cfg)
        runner = ray_runner(setup.payload, gpus_per_task=setup.resources.gpus_per_trial)
        return make_report(out, device=device, runner=runner, inputs=setup.inputs)


def callbacks_named(names: list[str], folders: list[Path]) -> list[tune.Callback]:
    """Return the Ray Tune callbacks named "module:Class" (--callback).

    Each is imported (from `folders` first) and made with no arguments. Raise a one-line
    EntryPointError for one that cannot be made or is not a ray.tune.Callback."""
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


@contextlib.contextmanager
def _ray_for(address: str | None, out: Path, interrupted: str = "", *,
             code_dir: str | None = None) -> Iterator[None]:
    """Run Ray for one search of `out` (`cluster.ray_running`).

    Afterwards, put back the process's environment, warning filters and loggers
    (`process.restored`). On Ctrl-C, log how to continue: `interrupted`, or else with kdsearch
    resume."""
    with process.restored(), ray_running(address, code_dir=code_dir):
        try:
            yield
        except KeyboardInterrupt:
            if not interrupted:
                interrupted = (f"continue with: kdsearch resume {out}"
                               if (out / RUN_FILE).exists()
                               else "nothing was written; run the same command again")
            log.warning(f"\nkdsearch: interrupted; {interrupted}")
            raise
