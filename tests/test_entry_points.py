"""A user's code named as "module:attribute" (`kdsearch.entry_points`): found in the folders
given first, every failure one line that names it; and the CLI's --callback."""

from __future__ import annotations

from pathlib import Path

import pytest

from kdsearch.cli import main
from kdsearch.entry_points import EntryPointError, resolve

REPO = Path(__file__).resolve().parents[1]


def _module(folder: Path, name: str, text: str) -> None:
    (folder / f"{name}.py").write_text(text)


def test_a_name_is_imported_from_the_folders_given_first(tmp_path: Path) -> None:
    _module(tmp_path, "kd_user_nets", "class Teacher:\n    pass\n\nWIDTH = 3\n")
    found = resolve("kd_user_nets:Teacher", where="teacher.model", folders=[tmp_path])
    assert found.__name__ == "Teacher" and found.__module__ == "kd_user_nets"
    assert resolve("os.path:join", where="x")("a", "b") == "a/b"  # installed packages too


@pytest.mark.parametrize("name, text, message", [
    ("nets", None, "'nets' is not a name of the form module:attribute"),
    ("kd_missing_module:Teacher", None,
     "module 'kd_missing_module' does not import (ModuleNotFoundError: No module named "
     "'kd_missing_module'); looked in "),
    ("kd_broken:Teacher", "import kd_no_such_thing\n",
     "module 'kd_broken' does not import (ModuleNotFoundError: No module named "
     "'kd_no_such_thing')"),
    ("kd_raises:Teacher", "raise RuntimeError('the GPU is on fire')\n",
     "does not import (RuntimeError: the GPU is on fire)"),
    ("kd_nets_a:Techer", "class Teacher:\n    pass\n",
     "module 'kd_nets_a' has no attribute 'Techer' (it has Teacher)"),
    ("kd_nets_b:WIDTH", "WIDTH = 3\n",
     "kd_nets_b:WIDTH is not a class or a function to call (it is int 3)")])
def test_what_cannot_be_had_is_said_in_one_line(tmp_path: Path, name: str, text: str | None,
                                                 message: str) -> None:
    if text is not None:
        _module(tmp_path, name.split(":")[0], text)
    with pytest.raises(EntryPointError) as raised:
        resolve(name, where="teacher.model in space.yaml", folders=[tmp_path])
    line = str(raised.value)
    assert "\n" not in line and line.startswith("teacher.model in space.yaml: ")
    assert message in line, line


@pytest.mark.parametrize("callback, message", [
    ("kd_cb_missing:Recorder", "--callback: kd_cb_missing:Recorder: module 'kd_cb_missing' "
                               "does not import"),
    ("kd_cb:NotOne", "--callback kd_cb:NotOne: kd_cb:NotOne() made a NotOne, not a "
                     "ray.tune.Callback"),
    ("kd_cb:Fails", "--callback kd_cb:Fails: kd_cb:Fails() raised ValueError: no tracking URI")])
def test_a_callback_that_cannot_be_had_is_refused_before_anything_runs(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str],
        callback: str, message: str) -> None:
    _module(tmp_path, "kd_cb", "class NotOne:\n    pass\n\n\nclass Fails:\n"
                               "    def __init__(self):\n"
                               "        raise ValueError('no tracking URI')\n")
    monkeypatch.chdir(tmp_path)
    code = main(["run", str(REPO / "search_spaces" / "quickstart.yaml"), "--callback", callback])
    err = capfd.readouterr().err
    assert code == 2 and err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "results").exists()  # nothing written
