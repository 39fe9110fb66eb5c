"""kdsearch.cli: the subcommands as `main(argv)` runs them, without Ray: -q and -v, --version,
`kdsearch spaces` and `init`, and bad arguments or input ending in exit code 2."""

from __future__ import annotations

from pathlib import Path

import pytest

from kdsearch.cli import EXIT_USAGE, main
from kdsearch.spaces import shipped, summary
from kdsearch.version import __version__

# One quick distillation run on digits: a 1-epoch teacher of width 16, a 2-epoch student.
TRAIN = """
name: cli
dataset: {{name: digits, data_dir: {data}}}
teacher: {{width: 16, epochs: 1}}
student: {{width: 8}}
training: {{epochs: 2, alpha: 0.5}}
"""


@pytest.fixture
def train_space(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A space file for `kdsearch train`, with a teacher cache that cannot be made (under a
    file): the teacher trains each time, and kdsearch warns that it is not cached."""
    (tmp_path / "a_file").write_text("")
    monkeypatch.setenv("KDSEARCH_CACHE_DIR", str(tmp_path / "a_file" / "cache"))
    path = tmp_path / "cli.yaml"
    path.write_text(TRAIN.format(data=tmp_path / "data"))
    return path


def test_train_prints_progress_and_warnings_on_their_streams(
        train_space: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", str(train_space), "--device", "cpu"]) == 0
    out, err = capsys.readouterr()
    assert [line[:11] for line in out.splitlines() if line.startswith("epoch")] == [
        "epoch   1/2", "epoch   2/2"]
    assert out.splitlines()[-1].startswith("final val_acc ")
    assert "teacher cache" in err and "is not writable" in err
    # the teacher's progress: a bar on a terminal; here, into a pipe, a line per tenth
    assert "teacher mlp_teacher on digits: epoch 1/1, val_acc " in out


def test_quiet_silences_info_and_keeps_warnings(train_space: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", str(train_space), "--device", "cpu", "-q"]) == 0
    out, err = capsys.readouterr()
    assert not any(line.startswith("epoch") for line in out.splitlines())
    assert out.splitlines()[-1].startswith("final val_acc ")  # the result is still said
    assert "teacher mlp_teacher on digits" not in out + err  # no teacher progress
    warning = [line for line in err.splitlines() if line.strip()]
    assert len(warning) == 1 and "is not writable" in warning[0], err


@pytest.mark.parametrize("flag", ["-v", "--verbose", "-q", "--quiet"])
def test_verbosity_is_taken_after_a_subcommand(flag: str,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["spaces", flag]) == 0
    assert "quickstart" in capsys.readouterr().out


def test_quiet_and_verbose_together_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["spaces", "-q", "-v"])
    assert info.value.code == EXIT_USAGE == 2
    assert "not allowed with argument" in capsys.readouterr().err


def test_version_prints_the_package_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out == f"kdsearch {__version__}\n"


def test_spaces_lists_each_shipped_space_with_its_summary(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["spaces"]) == 0
    lines = capsys.readouterr().out.splitlines()
    spaces = shipped()
    assert [line.split()[0] for line in lines] == list(spaces)
    for line, (name, path) in zip(lines, spaces.items()):
        assert line == f"{name:<20} {summary(path)}"


@pytest.mark.parametrize("argv", [
    [],  # no subcommand
    ["nope"],  # no such subcommand
    ["report"],  # its results folder missing
    ["train", "cli.yaml", "--device", "tpu"],  # not one of the choices
    ["export", "results/x", "--width", "wide"],  # not an integer
    ["run", "quickstart", "--no-such-option"],
])
def test_a_bad_argument_exits_2_with_the_usage(argv: list[str],
                                               capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: kdsearch") and "error:" in err


def test_init_copies_a_shipped_space_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["init", "quickstart"]) == 0
    target = tmp_path / "quickstart.yaml"
    assert target.read_bytes() == shipped()["quickstart"].read_bytes()
    assert capsys.readouterr().out == (f"wrote {target}; edit it, then: kdsearch run "
                                       f"quickstart.yaml\n")
    target.write_text("name: edited\n")
    assert main(["init", "quickstart"]) == EXIT_USAGE  # an edited copy is never overwritten
    assert target.read_text() == "name: edited\n"
    err = capsys.readouterr().err
    assert err == f"kdsearch: error: {target} already exists; edit it, or remove it first\n"


def test_a_user_error_is_one_line_on_stderr_and_exit_2(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["init", "quickstrat"]) == EXIT_USAGE
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1
    assert err.startswith("kdsearch: error: no shipped search space 'quickstrat'")
    (tmp_path / "bad.yaml").write_text("training:\n  alpha: 1.5\n")
    assert main(["train", "bad.yaml"]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "training.alpha = 1.5" in err
