"""The errors a user can fix, and the short, one-line quoting of a value in their messages.

Every message a `UserError` carries is one line that names what is wrong (the file, the key, the
value) and what to do; the CLI prints it and exits with 2. This module imports nothing of
kdsearch, torch or ray: every other module can raise these.
"""

from __future__ import annotations

import math
import reprlib
from typing import Any

MAX_INT = 2**63 - 1  # torch's int64: counts, sizes and widths beyond it cannot be used


class UserError(Exception):
    """A mistake the user can fix: the CLI prints its one-line message and exits with 2."""


class ConfigError(UserError, ValueError):
    """Bad user input: the message is one line that says what is wrong and what to do."""


class _Short(reprlib.Repr):
    """repr() for messages: short, one line, and safe on alias bombs, deep nesting, huge ints."""

    def __init__(self) -> None:
        super().__init__()
        self.maxlevel, self.maxstring, self.maxother = 3, 80, 80

    def repr_int(self, x: int, level: int) -> str:
        if abs(x) <= MAX_INT:
            return super().repr_int(x, level)
        digits = int(x.bit_length() * math.log10(2)) + 1  # str() refuses over 4,300 digits
        return f"{'-' if x < 0 else ''}<an integer of about {digits} digits>"


_SHORT = _Short()


def show(value: Any) -> str:
    # a YAML alias bomb is small in memory until repr() expands it: 9**9 'lol's
    shown = _SHORT.repr(value)
    return shown if len(shown) <= 80 else shown[:77] + "..."


def show_key(key: Any) -> str:
    """A key as typed when it is a short printable string, else its short repr."""
    if isinstance(key, str) and key.isprintable() and 0 < len(key) <= 60:
        return key
    return show(key)



def one_line(text: Any) -> str:
    """`text` on one line, at most 200 characters (a library's message quoted in ours)."""
    return " ".join(str(text).split())[:200]
