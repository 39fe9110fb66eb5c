"""The search spaces shipped with kdsearch: found by name from any folder, listed, copied out.

They are the YAML files of the repository's `search_spaces/`, installed as package data
(`kdsearch/search_spaces/` in a wheel). `kdsearch run quickstart` runs one by name when no file of
that name is in the current folder; `kdsearch spaces` lists them; `kdsearch init NAME` copies one
into the current folder to be edited.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from kdsearch.errors import ConfigError

_HERE = Path(__file__).resolve().parent


def shipped_dir() -> Path:
    """The folder of the shipped spaces: inside the installed package, or the repository's own
    (an editable install, or the source tree)."""
    for folder in (_HERE / "search_spaces", _HERE.parent / "search_spaces"):
        if folder.is_dir() and any(folder.glob("*.yaml")):
            return folder
    raise ConfigError(f"no shipped search spaces beside {_HERE}; reinstall kdsearch")


def shipped() -> dict[str, Path]:
    """Name (the file's stem) -> file, sorted by name."""
    return {p.stem: p for p in sorted(shipped_dir().glob("*.yaml"))}


def summary(path: Path) -> str:
    """The first sentence of a space file's opening comment."""
    lines = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("#").strip())
    text = " ".join(lines)
    end = text.find(". ")
    return text if end < 0 else text[:end + 1]


def find(space: str) -> Path:
    """The space file `space` names: a path to a file, else a shipped space's name
    ("quickstart" or "quickstart.yaml")."""
    path = Path(space)
    if path.exists() or path.parent != Path("."):
        return path  # a path: load_config says what is wrong with it, if anything
    name = path.stem if path.suffix in (".yaml", ".yml") else space
    found = shipped().get(name)
    if found is None:
        return path  # no such file and no such shipped space: load_config names the file
    return found


def copy_out(name: str, dest: Path) -> Path:
    """Copy the shipped space `name` to `dest` (a folder: as <name>.yaml in it) for editing;
    an existing file is never overwritten."""
    spaces = shipped()
    key = Path(name).stem
    if key not in spaces:
        raise ConfigError(f"no shipped search space {name!r}; `kdsearch spaces` lists them: "
                          f"{', '.join(spaces)}")
    target = dest / f"{key}.yaml" if dest.is_dir() else dest
    if target.exists():
        raise ConfigError(f"{target} already exists; edit it, or remove it first")
    shutil.copyfile(spaces[key], target)
    return target
