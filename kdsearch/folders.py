"""A search's results folder and storage path: checked before anything is written, made, and
held by one kdsearch at a time. No Ray, no torch.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator

from filelock import FileLock, Timeout

from kdsearch.results import SearchError


def check_results_dir(out: Path) -> None:
    """The results folder can be made: checked before Ray starts and before anything is
    written."""
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


def storage_for(storage_path: str | None, name: str) -> str | None:
    """The search's own storage under --storage-path (a local path made absolute, or a URI),
    checked: a local one must be a folder, or one that can be made. None: the results folder."""
    if storage_path is None:
        return None
    if "://" in storage_path:
        return storage_path.rstrip("/") + "/" + name
    own = str(Path(storage_path).resolve() / name)
    _check_makeable(Path(own), f"--storage-path {storage_path}",
                    "pass a folder you can write to (or a URI such as s3://bucket/path)")
    return own


def refuse_existing(out: Path, force: bool) -> None:
    """A results folder that holds something is replaced only with `force`."""
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
