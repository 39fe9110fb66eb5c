"""kdsearch.files: a write replaces the file whole or not at all."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from kdsearch import files


def test_a_write_replaces_the_file_and_leaves_no_temporary_file(tmp_path: Path) -> None:
    path = tmp_path / "run.json"
    path.write_text("old")
    files.write_text(path, "new ✓")
    assert path.read_text(encoding="utf-8") == "new ✓"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.json"]
    # readable by everyone who can read the folder, not mkstemp's 0600
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_a_write_that_fails_halfway_keeps_the_old_file_whole(tmp_path: Path) -> None:
    path = tmp_path / "teacher.pt"
    path.write_bytes(b"the old, whole file")

    def half_then_fail(f) -> None:
        f.write(b"half of the new")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        files.write_atomic(path, half_then_fail, durable=True)
    assert path.read_bytes() == b"the old, whole file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["teacher.pt"]


def test_a_copy_is_whole_and_durable_writes_reach_the_file(tmp_path: Path) -> None:
    src, dst = tmp_path / "tuner.pkl", tmp_path / ".copy.pkl"
    src.write_bytes(bytes(range(256)) * 100)
    files.copy(src, dst)
    assert dst.read_bytes() == src.read_bytes()
    files.write_bytes(dst, b"x", durable=True)
    assert dst.read_bytes() == b"x"
