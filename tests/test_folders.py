"""kdsearch.folders: the results folder and storage path checked before anything is written, and
one kdsearch a time in a results folder."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from kdsearch.folders import check_results_dir, exclusive, refuse_existing, storage_for
from kdsearch.results import SearchError

# A second kdsearch: it holds the results folder until a line comes on its stdin.
HOLDER = """
import sys
from pathlib import Path
from kdsearch.folders import exclusive

with exclusive(Path(sys.argv[1])):
    print("held", flush=True)
    sys.stdin.readline()
"""


def _one_line(info: pytest.ExceptionInfo[SearchError]) -> str:
    message = str(info.value)
    assert "\n" not in message
    return message


def test_a_results_folder_that_can_be_made_is_checked_and_not_made(tmp_path: Path) -> None:
    out = tmp_path / "results" / "deep" / "quickstart"
    check_results_dir(out)
    assert not (tmp_path / "results").exists()  # checked: nothing written
    out.mkdir(parents=True)
    check_results_dir(out)  # an existing folder is fine too


def test_a_file_where_the_results_folder_goes_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "quickstart"
    out.write_text("not a folder")
    with pytest.raises(SearchError) as info:
        check_results_dir(out)
    assert f"{out} exists and is not a folder" in _one_line(info)


def test_a_file_above_the_results_folder_is_named(tmp_path: Path) -> None:
    (tmp_path / "results").write_text("a file")
    with pytest.raises(SearchError) as info:
        check_results_dir(tmp_path / "results" / "a" / "quickstart")
    message = _one_line(info)
    assert f"{tmp_path / 'results'} is a file, not a folder" in message
    assert "--results-dir" in message


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0,
                    reason="root may write to any folder")
def test_a_folder_that_cannot_be_written_is_named(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    try:
        with pytest.raises(SearchError, match=r"locked is not writable"):
            check_results_dir(locked / "quickstart")
    finally:
        locked.chmod(0o700)


def test_storage_is_the_results_folder_a_uri_or_an_absolute_path(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert storage_for(None, "quickstart") is None
    assert storage_for("s3://bucket/runs/", "quickstart") == "s3://bucket/runs/quickstart"
    assert storage_for("gs://bucket", "q") == "gs://bucket/q"
    monkeypatch.chdir(tmp_path)
    assert storage_for("ray_storage", "quickstart") == str(tmp_path.resolve() / "ray_storage"
                                                           / "quickstart")
    assert not (tmp_path / "ray_storage").exists()  # checked, not made


def test_a_local_storage_path_under_a_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "store").write_text("a file")
    with pytest.raises(SearchError) as info:
        storage_for(str(tmp_path / "store"), "quickstart")
    message = _one_line(info)
    assert f"--storage-path {tmp_path / 'store'}" in message and "is a file" in message


def test_an_existing_results_folder_is_replaced_only_with_force(tmp_path: Path) -> None:
    out = tmp_path / "quickstart"
    refuse_existing(out, force=False)  # not there
    out.mkdir()
    refuse_existing(out, force=False)  # empty
    (out / "run.json").write_text("{}")
    with pytest.raises(SearchError) as info:
        refuse_existing(out, force=False)
    message = _one_line(info)
    assert f"{out} already exists" in message and f"kdsearch resume {out}" in message
    refuse_existing(out, force=True)
    assert (out / "run.json").exists()  # refuse_existing only checks: nothing removed


def test_a_second_kdsearch_in_another_process_is_refused_while_the_first_holds_the_folder(
        tmp_path: Path) -> None:
    out = tmp_path / "results" / "quickstart"
    lock = tmp_path / "results" / ".quickstart.kdsearch-lock"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(out)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        assert lock.exists()  # beside the folder, not in it
        with pytest.raises(SearchError) as info:
            with exclusive(out):
                pytest.fail("two kdsearch processes held one results folder")
        message = _one_line(info)
        assert f"another kdsearch is running the search in {out}" in message
        assert str(lock) in message
    finally:
        holder.communicate("\n", timeout=60)
    assert holder.returncode == 0
    assert not lock.exists()  # the first let go and removed its lock
    with exclusive(out):  # now it is free
        assert lock.exists()
    assert not lock.exists()
