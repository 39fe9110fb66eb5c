"""Reading YAML safely: a space file, and the values of `--set KEY=VALUE`.

The loader is `yaml.SafeLoader` with limits that a config never reaches (file size, nesting
depth). A key written twice is an error. PyYAML would silently keep the last one. Booleans are
YAML 1.2's: only true and false. PyYAML follows YAML 1.1, which also reads yes, no, on and off
as booleans, so `fast_step: off` would arrive as False. Every failure is a one-line ConfigError
that names the file and, where PyYAML gives them, the line and column. This module has no
kdsearch config types. It turns text into plain Python values, and `config` validates them.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import yaml
from yaml.composer import ComposerError
from yaml.constructor import ConstructorError

from kdsearch.errors import ConfigError, one_line, show

MAX_FILE_BYTES = 1 << 16  # a space file is a few kB. PyYAML takes 10 s to minutes for 1 MB.
MAX_DEPTH = 16  # a config nests 6 deep. PyYAML slows down with depth and recurses per level.


class _SafeLoader(yaml.SafeLoader):
    """yaml.SafeLoader that stops at nesting deeper than any config needs.

    Otherwise `[[[[...` 10,000 deep costs 2 s of scanning before a RecursionError.
    """

    _depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self._depth >= MAX_DEPTH:
            raise ComposerError(None, None, f"nested deeper than {MAX_DEPTH} levels",
                                self.peek_event().start_mark)
        self._depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        # PyYAML keeps the last of two equal keys, so a second `lr:` would silently win
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag.endswith(":merge"):
                continue  # `<<: *anchor` may be overridden by the section's own keys
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, (str, int, float, bool)) or key is None:
                if key in seen:
                    raise ConstructorError(None, None, f"the key {key!r} appears twice in one "
                                           f"section; keep one", key_node.start_mark)
                seen.add(key)
        return super().construct_mapping(node, deep=deep)


# YAML 1.2's booleans in place of YAML 1.1's (which add yes, no, on, off and their capitals)
_BOOL = "tag:yaml.org,2002:bool"
_SafeLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != _BOOL]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_SafeLoader.add_implicit_resolver(_BOOL, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                                  list("tTfF"))


def safe_load(text: str) -> Any:
    """Parse `text` like yaml.safe_load, with the limits and checks of _SafeLoader."""
    loader = _SafeLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def read_yaml(path: str | os.PathLike[str]) -> Any:
    """Parse a YAML file safely. Any problem becomes a one-line ConfigError."""
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"{p}: no such file; pass an existing YAML file, or the name of a "
                          f"shipped search space (`kdsearch spaces` lists them)")
    if not p.is_file():
        raise ConfigError(f"{p}: not a file; pass a YAML file, or the name of a shipped search "
                          f"space (`kdsearch spaces` lists them)")
    try:
        size = p.stat().st_size
        if size > MAX_FILE_BYTES:
            raise ConfigError(f"{p}: {size:,} bytes is too big for a config file (at most "
                              f"{MAX_FILE_BYTES:,}); is this the right file?")
        text = p.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{p}: not UTF-8 text (byte {e.start}); save it as UTF-8 YAML") from None
    except OSError as e:
        raise ConfigError(f"{p}: cannot read it ({e.strerror})") from None
    try:
        return safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or getattr(e, "reason", None) or type(e).__name__
        raise ConfigError(f"{p}: YAML does not parse{where}: {one_line(problem)}") from None
    except RecursionError:
        raise ConfigError(f"{p}: YAML nested too deeply to read") from None
    except Exception as e:  # PyYAML's constructors: `2001-02-30`, 5,000 digits, `!!bool maybe`
        raise ConfigError(f"{p}: YAML does not load: {one_line(f'{type(e).__name__}: {e}')}"
                          ) from None


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split a --set value into the key's parts and the parsed value.

    'search.num_samples=8' gives (['search', 'num_samples'], 8)."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected KEY=VALUE, e.g. --set search.num_samples=8")
    key, _, value = text.partition("=")
    parts = key.strip().split(".")
    if not all(parts):
        raise ConfigError(f"--set {text!r}: the key {key!r} is not a dotted path like "
                          f"training.lr")
    try:
        parsed = safe_load(value) if value.strip() else None
    except Exception:  # YAMLError, and the constructors' ValueError, KeyError...
        raise ConfigError(f"--set {show(text)}: the value does not parse as YAML") from None
    return parts, parsed


def apply_overrides(raw: Any, overrides: list[str] | tuple[str, ...]) -> Any:
    """Return the parsed file `raw` with each --set KEY=VALUE applied in order. `raw` is kept."""
    if not overrides:
        return raw
    raw = dict(raw or {}) if isinstance(raw, dict) or raw is None else raw
    if not isinstance(raw, dict):
        return raw  # the top-level error is reported by config_from_dict
    for text in overrides:
        parts, value = parse_override(text)
        node = raw
        for i, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = {}
            elif not isinstance(child, dict):
                raise ConfigError(f"--set {text!r}: {'.'.join(parts[:i + 1])} is not a section")
            node[part] = child = dict(child)
            node = child
        node[parts[-1]] = value
    return raw

