"""kdsearch.spaces: the shipped search spaces, found by name from any folder, listed with their
first sentence, and copied out without overwriting a file."""

from __future__ import annotations

from pathlib import Path

import pytest

from kdsearch.errors import ConfigError
from kdsearch.spaces import copy_out, find, shipped, shipped_dir, summary


@pytest.fixture
def elsewhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A current folder away from the repository."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_the_shipped_spaces_are_listed_by_name_in_order() -> None:
    spaces = shipped()
    assert "quickstart" in spaces and "mnist_mlp" in spaces
    assert list(spaces) == sorted(spaces)
    for name, path in spaces.items():
        assert path.is_file() and path.suffix == ".yaml" and path.stem == name
        assert path.parent == shipped_dir()


def test_a_shipped_space_is_found_by_name_from_any_folder(elsewhere: Path) -> None:
    quickstart = shipped()["quickstart"]
    assert find("quickstart") == quickstart
    assert find("quickstart.yaml") == quickstart
    assert find("quickstart.yml") == quickstart


def test_a_file_of_the_name_in_the_current_folder_wins(elsewhere: Path) -> None:
    (elsewhere / "quickstart.yaml").write_text("name: mine\n")
    assert find("quickstart.yaml") == Path("quickstart.yaml")
    assert find("quickstart.yaml").read_text() == "name: mine\n"


def test_a_path_or_an_unknown_name_is_returned_for_load_config_to_name(elsewhere: Path) -> None:
    assert find("spaces/quickstart.yaml") == Path("spaces/quickstart.yaml")  # a path: as given
    assert find("no_such_space") == Path("no_such_space")
    assert find(str(elsewhere / "a.yaml")) == elsewhere / "a.yaml"


def test_the_summary_is_the_first_sentence_of_the_opening_comment(tmp_path: Path) -> None:
    assert summary(shipped()["quickstart"]).startswith("Quickstart:")
    path = tmp_path / "s.yaml"
    path.write_text("# Distils an MLP. Takes a minute\n# on two cores.\nname: s\n# later\n")
    assert summary(path) == "Distils an MLP."
    path.write_text("# A space\n# in two lines\nname: s\n")
    assert summary(path) == "A space in two lines"
    path.write_text("name: s  # no opening comment\n")
    assert summary(path) == ""


def test_copy_out_writes_the_shipped_file_into_a_folder(tmp_path: Path) -> None:
    target = copy_out("quickstart", tmp_path)
    assert target == tmp_path / "quickstart.yaml"
    assert target.read_bytes() == shipped()["quickstart"].read_bytes()
    other = copy_out("mnist_mlp.yaml", tmp_path / "mine.yaml")  # a file name: that file
    assert other == tmp_path / "mine.yaml"
    assert other.read_bytes() == shipped()["mnist_mlp"].read_bytes()


def test_copy_out_never_overwrites_a_file(tmp_path: Path) -> None:
    (tmp_path / "quickstart.yaml").write_text("my edits\n")
    with pytest.raises(ConfigError) as info:
        copy_out("quickstart", tmp_path)
    assert f"{tmp_path / 'quickstart.yaml'} already exists" in str(info.value)
    assert (tmp_path / "quickstart.yaml").read_text() == "my edits\n"


def test_copy_out_of_an_unknown_name_lists_the_shipped_ones(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        copy_out("quickstrat", tmp_path)
    message = str(info.value)
    assert "no shipped search space 'quickstrat'" in message
    assert ", ".join(shipped()) in message and "\n" not in message
    assert list(tmp_path.iterdir()) == []
