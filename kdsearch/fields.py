"""The rules that check a config value: each field's kind, range and allowed names.

The module also holds the rules that a searched dimension's fixed value and its bounds share.
`config` uses them to declare its dataclasses. This module imports neither torch nor ray.
"""

from __future__ import annotations

import math
from dataclasses import field
from typing import Any, Callable

from kdsearch.entry_points import is_entry_point
from kdsearch.errors import MAX_INT

Check = Callable[[Any], bool]
# a width of 2**20 units makes a layer of 2**40 weights, far beyond any machine. Wider layers
# overflow torch's size arithmetic even on the meta device, in an error outside any trial.
MAX_WIDTH = 2**20
MAX_TEMPERATURE = 1000.0  # Hinton et al. used up to 20
MAX_SEED = 2**32 - 1  # Optuna's TPE seeds numpy's RandomState, which takes 32 bits


def spec(default: Any, kind: type | tuple[type, ...], check: Check | None = None,
          allowed: str = "", *, optional: bool = False,
          convert: Callable[[Any], Any] | None = None) -> Any:
    """Return a config field: its default, its kind, the check its value must pass, and the
    words that say what is allowed. `convert` turns an allowed value into the value the config
    holds."""
    return field(default=default, metadata={"kind": kind, "check": check, "allowed": allowed,
                                            "optional": optional, "convert": convert})


def positive(v: float) -> bool:
    return v > 0


def in_unit(v: float) -> bool:
    return 0.0 <= v <= 1.0


def gpu_share_ok(v: float) -> bool:
    return 0 <= v <= 1 or (v > 1 and float(v).is_integer())


def at_least(n: int) -> Check:
    return lambda v: v >= n


def one_of(names: tuple[str, ...]) -> tuple[Check, str]:
    return (lambda v: v in names), "one of " + ", ".join(names)


def is_object_name(name: str) -> bool:
    """Return whether `name` is what a config records for an object given to run_search.

    That name has the form "<object NAME>"."""
    return isinstance(name, str) and name.startswith("<object ") and name.endswith(">")


def object_name(obj: Any) -> str:
    """Return the name a config records for `obj`, given to run_search: "<object NAME>"."""
    what = getattr(obj, "__qualname__", None) or type(obj).__qualname__
    return f"<object {what}>"


def built_in_or_code(names: tuple[str, ...], what: str) -> tuple[Check, str]:
    """Return the check and the words for a field that takes a built-in name or a user's code.

    A user's code is named as "module:attribute" (see kdsearch.entry_points)."""
    return ((lambda v: v in names or is_entry_point(v) or is_object_name(v)),
            "one of " + ", ".join(names) + f", or module:attribute naming your own {what}")


def plain(v: Any, depth: int = 0) -> bool:
    """Return whether `v` is a plain YAML value: a number, string, boolean or null, or a list or
    mapping of them."""
    if depth > 20:
        return False
    if v is None or isinstance(v, (bool, int, str)):
        return True
    if isinstance(v, float):
        return math.isfinite(v)
    if isinstance(v, list):
        return all(plain(x, depth + 1) for x in v)
    if isinstance(v, dict):
        return all(isinstance(k, str) and plain(x, depth + 1) for k, x in v.items())
    return False


def kwargs_spec(called: str) -> Any:
    """Return a field of keyword arguments for a user's model, passed to `called`."""
    # left out of the hash, so that a frozen config with a dict in it still hashes
    return field(default_factory=dict, hash=False, metadata={
        "kind": dict, "optional": False,
        "check": lambda v: all(isinstance(k, str) and k.isidentifier() for k in v) and plain(v),
        "allowed": f"a mapping of keyword names to plain values, passed to {called}"})


TARGETS = ("within_teacher", "accuracy")  # report.target's kinds


def _target_ok(v: dict[str, Any]) -> bool:
    if len(v) != 1:
        return False
    (kind, value), = v.items()
    if kind not in TARGETS or isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    if not math.isfinite(value):
        return False
    # an accuracy of 100% can never be shown: a 95% lower bound is always below it
    return 0 <= value < 100 if kind == "within_teacher" else 0 < value < 100


def target_spec() -> Any:
    """Return the field report.target: the accuracy that a student must reach.

    It is relative to the teacher's test accuracy ({within_teacher: P}, P points below it) or
    absolute ({accuracy: A}, in percent)."""
    return field(default_factory=lambda: {"within_teacher": 1.0}, hash=False, metadata={
        "kind": dict, "optional": False, "check": _target_ok,
        "convert": lambda v: {k: float(x) for k, x in v.items()},
        "allowed": "one of {within_teacher: P} (P points below the teacher's test accuracy, "
                   "0 <= P < 100) or {accuracy: A} (a test accuracy in percent, 0 < A < 100: "
                   "100% can never be shown)"})


LOSSES = ("kd", "dkd", "ls_kd")  # training.loss (kdsearch.losses)
MAX_LOSS_WEIGHT = 100.0

# Rules for a searched dimension's values, shared by the fixed config fields and the space bounds.
VALUE_RULES: dict[str, tuple[type, Check, str]] = {
    # above ~1e4 the softened targets are uniform to float32 and the KD loss loses its digits
    "temperature": (float, lambda v: 0 < v <= MAX_TEMPERATURE,
                    f"a number in (0, {MAX_TEMPERATURE:g}]"),
    "alpha": (float, in_unit, "a number in [0, 1] (the weight of the hard-label loss)"),
    "lr": (float, positive, "a number > 0"),
    "width": (int, lambda v: 1 <= v <= MAX_WIDTH, f"an integer in [1, {MAX_WIDTH}]"),
    "batch_size": (int, at_least(1), "an integer >= 1"),
    "weight_decay": (float, lambda v: v >= 0, "a number >= 0"),
    "epochs": (int, at_least(1), "an integer >= 1"),
    "loss": (str, lambda v: v in LOSSES, "one of " + ", ".join(LOSSES)),
    "dkd_alpha": (float, lambda v: 0 < v <= MAX_LOSS_WEIGHT,
                  f"a number in (0, {MAX_LOSS_WEIGHT:g}] (DKD's weight of TCKD)"),
    "dkd_beta": (float, lambda v: 0 < v <= MAX_LOSS_WEIGHT,
                 f"a number in (0, {MAX_LOSS_WEIGHT:g}] (DKD's weight of NCKD)"),
    "dkd_warmup": (int, lambda v: 0 <= v <= 10_000, "an integer in [0, 10000] (epochs)"),
    "ls_weight": (float, lambda v: 0 < v <= MAX_LOSS_WEIGHT,
                  f"a number in (0, {MAX_LOSS_WEIGHT:g}] (the LS term's weight)"),
}


def optional_rule(name: str) -> Any:
    """Return a field with the rule VALUE_RULES[name] that may be null.

    null means the default of kdsearch.losses."""
    kind, check, allowed = VALUE_RULES[name]
    return spec(None, kind, check, allowed, optional=True)


def rule(name: str, default: Any) -> Any:
    """Return a field with the rule VALUE_RULES[name] and the default `default`."""
    kind, check, allowed = VALUE_RULES[name]
    return spec(default, kind, check, allowed)


def seed_spec() -> Any:
    """Return a field for a random seed: an integer in [0, 2**32 - 1], 0 by default."""
    return spec(0, int, lambda v: 0 <= v <= MAX_SEED, "an integer in [0, 2**32 - 1]")


# --------------------------------------------------------------------------- a value's kind
# YAML 1.1's other words for true and false, which yamlfile reads as text. They are accepted.
_BOOL_WORDS = {"yes": True, "on": True, "no": False, "off": False}


def coerce(value: Any, kind: type | tuple[type, ...]) -> tuple[bool, Any]:
    """Return (ok, value) with ints accepted as floats, '1e-3' strings as numbers, and yes, no,
    on and off as booleans."""
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool):
        return (bool in kinds, value)
    if bool in kinds and isinstance(value, str) and value.lower() in _BOOL_WORDS:
        return True, _BOOL_WORDS[value.lower()]
    if isinstance(value, int) and abs(value) > MAX_INT:
        return False, value  # 10**400: beyond int64 and (as a float) infinite
    if float in kinds and isinstance(value, str):
        try:
            value = float(value)  # PyYAML reads 1e-3 (no dot) as a string
        except ValueError:
            return False, value
    if float in kinds and isinstance(value, int):
        return True, value if int in kinds else float(value)
    if int in kinds and isinstance(value, float) and float not in kinds:
        ok = value.is_integer() and abs(value) <= MAX_INT  # False for inf and nan
        return ok, int(value) if ok else value
    if isinstance(value, float) and not math.isfinite(value):
        return False, value
    if int in kinds and isinstance(value, float) and value >= 1 and value.is_integer():
        return True, int(value)  # a count: 5000.0 is 5000 (the teacher cache's key hashes it)
    return isinstance(value, kinds), value


def kind_name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    names = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}
    if float in kinds:
        return "a number"
    return " or ".join(names[k] for k in kinds)
