"""Every workaround of a Ray Tune behaviour that kdsearch depends on, in one file.

Checked against Ray 2.60.0 (`ray[tune]`). On a Ray upgrade, read this file. Each part names the
behaviour it answers. Where Ray has fixed a behaviour, its part can go. Nothing else in kdsearch
reaches into Ray Tune's saved files or private attributes.

Ray Tune's saved state of an experiment (`search/` in the results folder):

1. **A torn `tuner.pkl` and experiment state** (`mend_torn_state`, `keep_tuner_copy`). Tune
   writes `tuner.pkl` in place, without a temporary file and a rename (ray-project/ray#58179).
   It copies its experiment state (`experiment_state-*.json` and the searcher's pickles) from
   a staging folder into the storage folder file by file. A driver killed mid-write leaves a
   truncated file, and `Tuner.restore` fails on it.
2. **Checkpoints that the state names but that are gone** (`repair_checkpoints`). With
   `num_to_keep=1`, a new checkpoint deletes the old one at once. The experiment state that
   names the old one is saved a moment later (ray-project/ray#30073).
3. **A searcher state older than the experiment state** (`restored_trial_configs`). Tune saves
   the experiment state first and the searcher's state after it. A kill between the two
   restores a searcher that has not seen the newest trial. That searcher would run one trial
   over the budget.
4. **Trials that ended after Ray's last saved state** (`finished_trials`, `replay_finished`,
   `report_last_epoch_again`, and on the side of the results records `reload_records`,
   `drop_unseen`, `rewind_epochs`). The experiment state is saved every second
   (`TUNE_GLOBAL_CHECKPOINT_S`). So a killed driver's state may show a trial as running when
   it had ended, or not show a trial at all. Tune restarts a trial of the first kind. The
   trainable then hands Tune the result that trials.csv recorded, instead of training again.
   For a trial of the second kind, the searcher suggests a new trial, and its rows are dropped.
5. **Callbacks are not restored with the experiment, and `Tuner.restore` takes none**
   (`restore_callbacks`). They are set on the restored Tuner's run config, which has no public
   accessor (ray-project/ray#41364).

Ray Tune's process-wide behaviour:

6. **A log race on the state's temporary files** (`DropTmpFileRace`). Tune's background copy
   of the staging folder fails on a temporary file renamed under it. It logs an ERROR with a
   traceback. The next copy succeeds. Ray's fix uses unique temporary names
   (ray-project/ray#60556); it is not in 2.60.0.
7. **Tune's SIGINT handler outlives `Tuner.fit`** (`sigint_handler_kept`). `fit()` installs
   its own handler. After a search that ended without a Ctrl-C, the handler stays. So the next
   Ctrl-C (during the final evaluation) is swallowed.

Ray's own processes:

8. **A local Ray's agents outlive a killed driver** (`register_session`, `end_orphans`). When
   the driver that started a local Ray is killed (SIGKILL), its GCS server and raylet end with
   it. But the raylet's children `ray::DashboardAgent` and `ray::RuntimeEnvAgent` stay alive
   for minutes, adopted by init. kdsearch registers each local Ray it starts: its session
   folder and the driver's pid. Before it starts the next one, it ends the processes of every
   registered session whose driver is gone. Another Ray on the machine (a cluster started
   with `ray start`, or another search's Ray) is never registered here, so it is never touched.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import pickletools
import re
import signal
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from kdsearch import files
from kdsearch.config import default_cache_dir
from kdsearch.metrics import EPOCH, EPOCH_SECONDS, TRAIN_LOSS, VAL_ACC, VAL_LOSS
from kdsearch.results import SearchError
from kdsearch.tables import (PROGRESS_FIELDS, PROGRESS_FILE, TRIALS_FILE, TrialRow, read_table,
                             read_trials, write_table)

TUNER_COPY = ".kdsearch-tuner.pkl"  # kdsearch's copy of Tune's tuner.pkl, beside it
TESTED_RAY = "2.60"  # the Ray release (any patch) these workarounds were checked against


def untested_ray(version: str) -> str | None:
    """Return a note for when the installed Ray is not the release these workarounds were
    checked against, or None when it is."""
    if version == TESTED_RAY or version.startswith(TESTED_RAY + "."):
        return None
    return (f"note: this is Ray {version}; kdsearch is tested with Ray {TESTED_RAY}.x, and works "
            f"around Ray Tune's saved state in ways another release may not need or allow "
            f"(kdsearch/ray_workarounds.py); pip install 'ray[tune]=={TESTED_RAY}.*' for the "
            f"tested one")


# --------------------------------------------------------------------------- 1. torn state
def mend_torn_state(exp_path: str, log: Callable[[str], None] | None = None
                    ) -> tuple[str, bool] | None:
    """Mend the newest saved state if a kill cut it short. Return (its session, recovered?).

    Tune writes its state (experiment_state-<session>.json and the searcher's two pickles) into
    a staging folder under Ray's temp dir on the driver. It copies that whole folder into the
    results folder in the background, not atomically. A driver killed mid-copy leaves the file
    being copied truncated, for example an empty search_gen_state beside a whole experiment
    state. Tuner.restore fails on it.

    The staging copy is whole, since it was written before the copy began. It also outlives a
    killed driver on the same machine. If it is there and belongs to this search (it names
    trials that this folder has), its files replace the torn ones. Otherwise that session's
    files are renamed `.torn-<name>`. Tune then restores the whole session before it. Trials it
    never saw are dropped and suggested anew (see the status callback). If there is no earlier
    session, the search starts over in a cleared folder. Return None when the newest state is
    whole.

    A torn tuner.pkl is replaced by kdsearch's copy of it. With no whole copy, raise a
    SearchError before anything changes. Nothing is unpickled: a pickle is checked opcode by
    opcode. `log` is told when tuner.pkl is replaced.
    """
    folder = Path(exp_path)
    if not folder.is_dir():
        return None
    tuner = folder / "tuner.pkl"
    if tuner.exists() and not _readable_pickle(tuner):
        # Tune writes tuner.pkl straight into this folder, again on every restore. kdsearch's
        # own copy of it (see keep_tuner_copy) is the one that outlives a torn write.
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
    """Yield Ray's staging folders on this machine of the search in `folder`, newest first.

    A staging folder belongs to the search when it names trials that `folder` has. They are
    looked for only when a state is torn. Ray's temp dir keeps every session's folder, and a
    machine that has run many searches has hundreds."""
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


def keep_tuner_copy(exp_path: str) -> None:
    """Copy the tuner.pkl that Tune has just written whole (Tuner created or restored).

    mend_torn_state uses the copy when a kill tears Tune's next write of tuner.pkl."""
    tuner = Path(exp_path) / "tuner.pkl"
    if _readable_pickle(tuner):
        files.copy(tuner, tuner.with_name(TUNER_COPY))


def _whole_session(folder: Path, session: str) -> bool:
    """Return whether `session` saved an experiment state in `folder` and each of its files
    reads whole.

    The experiment state is JSON. search_gen_state-*.json (despite its name) and
    searcher-state-*.pkl are pickles."""
    state_files = _session_files(folder, session)
    return (folder / f"experiment_state-{session}.json").is_file() and all(
        _readable_json(f) if f.name.startswith("experiment_state-") else _readable_pickle(f)
        for f in state_files)


def _readable_pickle(path: Path) -> bool:
    """Return whether `path` holds a whole pickle stream.

    The stream is read opcode by opcode without running it, so nothing is imported or built.
    A truncated or empty file fails, because pickletools raises ValueError at the cut."""
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


# --------------------------------------------------------------------------- 2. lost checkpoints
def repair_checkpoints(exp_path: str) -> list[str]:
    """Point each unfinished trial of a killed run at a checkpoint that is on disk.

    Tune keeps one checkpoint per trial (num_to_keep=1). Registering a new one deletes the old
    one at once. But the experiment state, which names the checkpoint a resumed trial restores
    from, is written a moment later and copied into the results folder in the background. A
    driver killed in that gap leaves a state that names a deleted checkpoint. Tune then fails
    the trial on resume ("does not exist on storage anymore").

    The checkpoint that replaced it is on disk, and it is renamed to the expected name. The
    trial then resumes from its later epoch. ASHA and progress.csv go by the epoch in the
    checkpoint, not by Tune's iteration count. The checkpoint taken is the oldest of the newer
    ones. Any still newer ones were written by the trial but never seen by the driver, so their
    epochs have no rows in progress.csv. Return the checkpoints repaired. This works on local
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


# --------------------------------------------------------------------------- 3. the searcher
def restored_trial_configs(searcher_state: Path) -> dict[str, dict[str, Any]] | None:
    """Return trial id -> config for every trial in the experiment state beside
    `searcher_state`, or None if it cannot be read.

    For searcher-state-<session>.pkl, the experiment state is experiment_state-<session>.json,
    the JSON that Tune restores its trials from. It is read here without unpickling anything."""
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


# --------------------------------------------------------------------------- 4. ended trials
def finished_trials(results_dir: Path) -> dict[str, dict[str, Any]]:
    """Return the final result of every trial that trials.csv records as ended (TERMINATED).

    Each result is as the trial reported it to Tune. These results are replayed to a resumed
    search."""
    out: dict[str, dict[str, Any]] = {}
    for r in read_trials(results_dir / TRIALS_FILE):
        if not r.completed:
            continue
        metrics = {k: v for k, v in (
            (VAL_LOSS, r.val_loss), (TRAIN_LOSS, r.train_loss), ("params", r.params),
            ("node", r.node), ("gpu_ids", r.gpu_ids), ("error", r.error)) if v not in (None, "")}
        out[r.trial_id] = {**metrics, EPOCH: r.epochs, VAL_ACC: r.val_acc or 0.0,
                           "diverged": int(r.diverged)}
    return out


def replay_finished(finished: dict[str, dict[str, Any]], trial_id: str,
                    report: Callable[[dict[str, Any]], None]) -> bool:
    """Replay the recorded result of a trial that had ended. Return True if it had.

    The trainable calls this first. trials.csv may record a trial as ended while Ray's last
    saved state shows it running, so Tune restarts it. Instead of training it again, hand Tune,
    ASHA and the searcher the recorded result, marked `replayed`. `report` is `tune.report`."""
    result = finished.get(trial_id)
    if result is None:
        return False
    report({**result, "replayed": 1})
    return True


def report_last_epoch_again(history: list[dict[str, float]],
                            checkpoint_metrics: dict[str, Any] | None,
                            report: Callable[[dict[str, Any]], None]) -> None:
    """Report the checkpoint's metrics again when `fit` trained no epoch.

    The trainable calls this after `fit`. A trial resumed from the checkpoint of its last epoch
    had ended, but the killed driver's saved state did not show it (see `repair_checkpoints`).
    So fit trains no epoch. Without a new report, Tune would end the trial on the older result
    it restored."""
    if not history and checkpoint_metrics is not None:
        report(checkpoint_metrics)


def _keep_progress(results_dir: Path, keep: Callable[[dict[str, str]], bool]
                   ) -> list[dict[str, str]]:
    """Rewrite progress.csv with the whole rows that `keep` keeps, and return them.

    A row that a kill tore is always dropped."""
    path = results_dir / PROGRESS_FILE
    rows = [r for r in read_table(path)
            if None not in r and all(r.get(k) is not None for k in PROGRESS_FIELDS)
            and r["epoch"].isdigit() and keep(r)]
    write_table(path, rows, PROGRESS_FIELDS)
    return rows


def reload_records(results_dir: Path
                   ) -> tuple[dict[str, TrialRow], dict[str, dict[int, float]]]:
    """Return what a killed driver recorded, for a resumed search's status callback.

    That is trials.csv's rows by trial id, and each trial's reported epochs from progress.csv
    (epoch -> its seconds)."""
    records = {row.trial_id: row for row in read_trials(results_dir / TRIALS_FILE)}
    epochs: dict[str, dict[int, float]] = {}
    for r in _keep_progress(results_dir, lambda r: True):
        epochs.setdefault(r["trial_id"], {})[int(r["epoch"])] = \
            float(r.get(EPOCH_SECONDS) or 0.0)
    return records, epochs


def drop_unseen(results_dir: Path, records: dict[str, TrialRow],
                epochs: dict[str, dict[int, float]], restored: set[str]) -> set[str]:
    """Drop the recorded trials that Ray's restored state never saw. Return their ids.

    This runs at a resumed search's first step. The trials leave `records`, `epochs` and
    progress.csv. The searcher suggests new trials in their place."""
    lost = {t for t in records if t not in restored}
    for t in lost:
        del records[t]
        epochs.pop(t, None)
    if lost:
        _keep_progress(results_dir, lambda r: r["trial_id"] not in lost)
    return lost


def rewind_epochs(results_dir: Path, seen: dict[int, float], trial_id: str, epoch: int) -> None:
    """Forget the recorded epochs from `epoch` on, because the trial reports `epoch` again.

    The trial resumed from a checkpoint older than its last reported epoch. The epochs it
    trains again replace those that the killed driver recorded, in `seen` (the trial's epochs)
    and in progress.csv. So progress.csv holds one row per (trial, epoch)."""
    again = [e for e in seen if e >= epoch]
    if not again:
        return
    for e in again:
        del seen[e]
    _keep_progress(results_dir, lambda r: not (r["trial_id"] == trial_id
                                               and int(r["epoch"]) >= epoch))


# --------------------------------------------------------------------------- 5. callbacks
def restore_callbacks(tuner: Any, callbacks: list[Any]) -> None:
    """Attach `callbacks` to a Tuner made by `Tuner.restore`, which restores none and takes none.

    They are set on its run config, reached through the private `_local_tuner`."""
    tuner._local_tuner.get_run_config().callbacks = list(callbacks)


# --------------------------------------------------------------------------- 6. the log race
# Tune writes its state into a staging folder, each file as `.<uuid>-tmp-<name>` and then
# renamed. Meanwhile a background thread may still be copying the previous snapshot out of that
# folder. The copy then fails on a temporary file that was renamed under it, and Tune logs the
# failure as an ERROR with a traceback. Only that snapshot is lost, not the state. The next
# snapshot (within TUNE_GLOBAL_CHECKPOINT_S) copies the folder again, and the one Tune forces at
# the end of the search waits for every write. Only this failure is dropped; any other is shown.
STATE_LOGGER = "ray.tune.execution.experiment_state"
_TUNE_TMP_FILE = re.compile(r"/\.[0-9a-f]{8}(-[0-9a-f]{4}){3}-[0-9a-f]{12}-tmp-[^/']*'")


def is_renamed_tmp_file_race(record: logging.LogRecord) -> bool:
    """Return whether `record` logs the race above: a FileNotFoundError on a Tune temp file."""
    exc = record.exc_info[1] if record.exc_info else None
    return isinstance(exc, FileNotFoundError) and bool(_TUNE_TMP_FILE.search(str(exc)))


class DropTmpFileRace(logging.Filter):
    """A filter for `STATE_LOGGER` that drops the race above and nothing else."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not is_renamed_tmp_file_race(record)


# --------------------------------------------------------------------------- 7. Ctrl-C
@contextlib.contextmanager
def sigint_handler_kept() -> Iterator[None]:
    """Put back the SIGINT handler that was set before the block, when the block ends.

    Used around `Tuner.fit()`."""
    handler = signal.getsignal(signal.SIGINT)
    try:
        yield
    finally:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, handler)



# --------------------------------------------------------------------------- 8. orphans
SESSIONS = "ray-sessions"  # in kdsearch's cache folder: the local Rays kdsearch started


def _sessions_folder() -> Path:
    return default_cache_dir() / SESSIONS


def _started(pid: int) -> str | None:
    """Return when process `pid` started, or None if there is no such process (or a zombie).

    The value is in clock ticks since boot (/proc/<pid>/stat field 22). Together with the pid,
    it names one process, even once the pid is reused."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return None if fields[0] == "Z" else fields[19]


def register_session(session_dir: str) -> Path | None:
    """Record a local Ray that this process started. Return the record, or None if unwritable
    or where processes cannot be told apart (no /proc: not Linux)."""
    started = _started(os.getpid())
    if started is None:
        return None
    folder = _sessions_folder()
    record = folder / f"{Path(session_dir).name}.json"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        files.write_text(record, json.dumps({"session_dir": session_dir, "pid": os.getpid(),
                                             "started": started}))
    except OSError:
        return None
    return record


def unregister_session(record: Path | None) -> None:
    """Remove `record`, after its driver shut its local Ray down. Nothing is left to end later."""
    if record is not None:
        record.unlink(missing_ok=True)


def _holding(folder: str) -> list[int]:
    """Return the pids of the processes with a file open in `folder` (a Ray session's logs and
    sockets)."""
    pids = []
    for d in os.listdir("/proc"):
        if not d.isdigit() or int(d) == os.getpid():
            continue
        try:
            links = [os.readlink(f"/proc/{d}/fd/{fd}") for fd in os.listdir(f"/proc/{d}/fd")]
        except OSError:  # gone meanwhile, or another user's
            continue
        if any(link.startswith(folder + "/") for link in links):
            pids.append(int(d))
    return pids


def end_orphans(log: Callable[[str], None] | None = None, grace: float = 2.0) -> list[int]:
    """End the processes of every registered local Ray whose driver is gone. Return their pids.

    A session whose driver still runs (another search) is left alone. Without /proc (not
    Linux), nothing is registered and nothing is ended."""
    folder = _sessions_folder()
    ended: list[int] = []
    if not os.path.isdir("/proc"):
        return ended
    for record in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            entry = json.loads(record.read_text())
            session, pid, started = entry["session_dir"], int(entry["pid"]), entry["started"]
        except (OSError, ValueError, KeyError, TypeError):
            record.unlink(missing_ok=True)
            continue
        if started is not None and _started(pid) == started:
            continue  # its driver runs
        orphans = found = _holding(session)
        for signum in (signal.SIGTERM, signal.SIGKILL):
            for orphan in orphans:
                with contextlib.suppress(OSError):
                    os.kill(orphan, signum)
            deadline = time.monotonic() + grace
            while time.monotonic() < deadline and any(_started(o) for o in orphans):
                time.sleep(0.05)
            orphans = [o for o in orphans if _started(o)]
            if not orphans:
                break
        record.unlink(missing_ok=True)
        if found:
            ended += found
            if log is not None:
                log(f"note: ended {len(found)} processes that a killed kdsearch left running "
                    f"(its Ray session {Path(session).name})")
    return ended
