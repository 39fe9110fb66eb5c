"""Atomic file writes: every file kdsearch writes into a results folder or the teacher cache.

The content goes to a temporary file of a unique name in the same folder, which is then renamed
over the target. A reader, or a driver killed at any instant, sees the old file or the new one,
never half of one; a write that fails removes its temporary file. `durable=True` also flushes
the file to disk before the rename (for files worth the ~ms an fsync costs: the teacher cache,
the search state kdsearch mends torn ones from). Files are made readable by everyone who can
read the folder (0644), like a plain `open(..., "w")` under the usual umask.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Callable

MODE = 0o644


def write_atomic(path: Path, write: Callable[[BinaryIO], object], *,
                 durable: bool = False) -> None:
    """Call `write` on a binary file that becomes `path` once `write` has returned."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.chmod(tmp, MODE)  # mkstemp makes 0600
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_bytes(path: Path, data: bytes, *, durable: bool = False) -> None:
    write_atomic(path, lambda f: f.write(data), durable=durable)


def write_text(path: Path, text: str, *, durable: bool = False) -> None:
    write_bytes(path, text.encode(), durable=durable)


def copy(src: Path, dst: Path, *, durable: bool = True) -> None:
    """Copy `src` to `dst` atomically (durable by default: kdsearch copies only state files)."""
    write_bytes(dst, src.read_bytes(), durable=durable)


def write_json(path: Path, obj: Any) -> None:
    """Write `obj` to `path` as indented JSON, atomically. NaN and infinity are refused."""
    write_text(path, json.dumps(obj, indent=2, allow_nan=False) + "\n")
