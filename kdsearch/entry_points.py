"""A user's code named the way packaging names an entry point: "module:attribute".

A space file or a command line names code but never holds it. `my_nets:Teacher` is the
attribute `Teacher` of the module `my_nets`. The module is imported and the attribute returned,
and the caller calls it with plain keyword values. The module is looked for first in the given
folders (the space file's own, then the current directory), then in the installed packages.
Nothing is evaluated. Every failure is one line. It names the entry point, where it came from
and what went wrong, with the import error's own message.
"""

from __future__ import annotations

import importlib
import re
import sys
from pathlib import Path
from typing import Any, Sequence

from kdsearch.errors import UserError, one_line, show

_NAME = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*$")


class EntryPointError(UserError, ValueError):
    """A named entry point cannot be resolved. The message says which one, and why."""


def is_entry_point(name: str) -> bool:
    """Return whether `name` has the form "module:attribute" (dotted names on both sides)."""
    return isinstance(name, str) and bool(_NAME.match(name))


def resolve(name: str, *, where: str, folders: Sequence[Path] = ()) -> Any:
    """Return the object named "module:attribute". It must be callable.

    `where` says what named it, for messages ("search.callbacks in space.yaml", "--callback").
    `folders` are searched for the module first, in order."""
    if not is_entry_point(name):
        raise EntryPointError(f"{where}: {name!r} is not a name of the form module:attribute "
                              f"(such as my_nets:Teacher)")
    module_name, _, attribute = name.partition(":")
    added = [str(Path(f).resolve()) for f in folders if str(Path(f).resolve()) not in sys.path]
    sys.path[:0] = added
    try:
        module = importlib.import_module(module_name)
    except Exception as e:  # ImportError, and whatever the module raises as it runs
        why = one_line(e) or type(e).__name__
        looked = ", ".join(str(f) for f in folders)
        raise EntryPointError(f"{where}: {name}: module {module_name!r} does not import "
                              f"({type(e).__name__}: {why})"
                              + (f"; looked in {looked}, then the installed packages"
                                 if looked else "")) from None
    finally:
        for path in added:
            if path in sys.path:
                sys.path.remove(path)
    obj: Any = module
    for part in attribute.split("."):
        if not hasattr(obj, part):
            raise EntryPointError(f"{where}: {name}: module {module_name!r} has no attribute "
                                  f"{attribute!r} (it has {_public(module)})")
        obj = getattr(obj, part)
    if not callable(obj):
        raise EntryPointError(f"{where}: {name} is not a class or a function to call (it is "
                              f"{type(obj).__name__} {show(obj)})")
    return obj


def _public(module: Any) -> str:
    """Return the module's public names (at most 12), for a message."""
    names = sorted(n for n in vars(module) if not n.startswith("_"))
    shown = ", ".join(names[:12]) + (", ..." if len(names) > 12 else "")
    return shown or "no public names"
