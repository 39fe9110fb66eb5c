"""Bad input, fuzzed: every malformed space file and every CLI misuse ends in one line and exit 2.

Each example drives `kdsearch run` or `kdsearch train` in-process on a file that is invalid by
construction: the quickstart config with valid noise and one or more breaking mutations from
MUTATIONS, a raw YAML literal (a tag, a bomb, a huge number, deep nesting, broken syntax) injected
at one value, undecodable bytes, or plain junk. For every one: stderr is exactly one non-empty
line, "kdsearch: error: ...", naming the file; the exit code is 2; no exception escapes; nothing
appears in the example's folder (results, cache, data dir, current directory).

Tripwires stand in for starting Ray and loading the dataset, so a file that wrongly passes
validation fails the test instead of starting a search or a training run.
KDSEARCH_FUZZ_EXAMPLES=10 runs ten times the examples (the default: the file in 20-30 s).
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
import string
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
import yaml
from hypothesis import HealthCheck, given, reject, settings
from hypothesis import strategies as st

import kdsearch.data
import kdsearch.inputs
import kdsearch.cluster
from kdsearch.cli import main
from kdsearch.config import (DATASETS, DISTRIBUTIONS, OPTIMIZERS, SCHEDULERS, SEARCH_ALGORITHMS,
                             SEARCHABLE, SECTIONS, STUDENT_MODELS, TEACHER_MODELS, TOP_LEVEL)
from kdsearch.fields import LOSSES

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = REPO / "search_spaces" / "quickstart.yaml"
BASE: dict[str, Any] = yaml.safe_load(QUICKSTART.read_text())
COMMANDS = ("run", "train")
SECONDS = 3.0  # the most one refusal may take (a valid file is refused in milliseconds)
SCALE = float(os.environ.get("KDSEARCH_FUZZ_EXAMPLES", "1"))


def fuzz(examples: int) -> Callable[[Callable[..., None]], Callable[..., None]]:
    return settings(max_examples=max(1, int(examples * SCALE)), deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow, HealthCheck.data_too_large])


# --------------------------------------------------------------------------- harness
class Tripwire(Exception):
    """Validation let the input through: the command went on to start real work."""


@pytest.fixture(autouse=True)
def _tripwires(monkeypatch: pytest.MonkeyPatch) -> None:
    def start_ray(*args: Any, **kwargs: Any) -> None:
        raise Tripwire("run got past validation: it would start Ray")

    def load_data(*args: Any, **kwargs: Any) -> None:
        raise Tripwire("train got past validation: it would load the dataset")

    monkeypatch.setattr(kdsearch.cluster, "init_ray", start_ray)
    monkeypatch.setattr(kdsearch.data, "load_dataset", load_data)
    monkeypatch.setattr(kdsearch.inputs, "load_dataset", load_data)  # (run loads it first)


@contextlib.contextmanager
def sandbox(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A fresh folder per example: the current directory, the cache and the data dir point in."""
    with tempfile.TemporaryDirectory(prefix="kdfuzz-") as d:
        root = Path(d)
        monkeypatch.setenv("KDSEARCH_CACHE_DIR", str(root / "cache"))
        monkeypatch.setenv("KDSEARCH_DATA_DIR", str(root / "data"))
        with contextlib.chdir(root):
            yield root


def snapshot(root: Path) -> dict[str, tuple[bool, int, int]]:
    """Every path under root -> (is a dir, size, mtime_ns): equal before and after = untouched."""
    out = {}
    for p in sorted(root.rglob("*")):
        s = p.lstat()
        out[str(p.relative_to(root))] = (p.is_dir(), s.st_size, s.st_mtime_ns)
    return out


def argv_for(command: str, path: Path | str, root: Path, *extra: str) -> list[str]:
    if command == "run":
        return ["run", str(path), "--results-dir", str(root / "results"), *extra]
    return ["train", str(path), "--device", "cpu", *extra]


def refused(capfd: pytest.CaptureFixture[str], argv: list[str], root: Path, *,
            names: str | None = None, junk: bool = False, seconds: float = SECONDS) -> str:
    """Run the CLI in-process; assert one error line, exit 2, nothing written. Return the line.

    junk: the input was not built to be invalid (random bytes or text); should it happen to be a
    valid config, the example is discarded instead of failed.
    """
    before = snapshot(root)
    capfd.readouterr()
    t0 = time.perf_counter()
    try:
        code = main(argv)
    except SystemExit as e:  # argparse
        code = e.code
    except Tripwire:
        if junk:
            reject()
        raise
    elapsed = time.perf_counter() - t0
    out, err = capfd.readouterr()
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, f"exit {code}; stderr {err!r}"
    assert len(lines) == 1, f"expected one line on stderr, got {err!r}"
    line = lines[0]
    assert line.startswith("kdsearch: error: "), line
    if names is not None:
        assert names in line, f"the error does not name {names}: {line}"
    assert snapshot(root) == before, "a refused command wrote files"
    assert elapsed < seconds, f"refusing took {elapsed:.1f} s: {line[:200]}"
    return line


def write(root: Path, content: str | bytes, name: str = "space.yaml") -> Path:
    path = root / name
    if isinstance(content, str):
        content = content.encode("utf-8")
    path.write_bytes(content)
    return path


# --------------------------------------------------------------------------- values
def _parses_as_float(s: str) -> bool:
    try:
        float(s)
    except ValueError:
        return False
    return True


CONTAINERS = st.one_of(st.lists(st.integers(), min_size=1, max_size=3),
                       st.dictionaries(st.text(max_size=4), st.integers(), min_size=1, max_size=2),
                       st.just([]), st.just({}))
JUNK_TEXT = st.text(max_size=20).filter(lambda s: not _parses_as_float(s))
NON_FINITE = st.sampled_from([math.inf, -math.inf, math.nan])
DATES = st.one_of(st.dates(), st.datetimes())
# ints beyond int64 (torch's and numpy's limit) and ints no float can hold (10**400)
HUGE_INTS = st.one_of(st.integers(min_value=2**63), st.integers(max_value=-2**63),
                      st.sampled_from([10**400, -10**400]))
FLOAT_HUGE_INTS = st.sampled_from([10**400, -10**400, 2**1100])
NOT_A_NUMBER = st.one_of(CONTAINERS, JUNK_TEXT, NON_FINITE, DATES, st.booleans(),
                         st.binary(min_size=1, max_size=8))
NOT_A_FLOAT = st.one_of(NOT_A_NUMBER, FLOAT_HUGE_INTS)
NOT_A_STRING = st.one_of(CONTAINERS, st.integers(), st.floats(), st.booleans(), DATES,
                         st.binary(min_size=1, max_size=8))


def bad_int(below: int | None = None, above: int | None = None) -> st.SearchStrategy[Any]:
    """Values an integer field must refuse: wrong types, fractions, strings, huge, out of range."""
    out = [NOT_A_NUMBER, HUGE_INTS,
           st.floats(allow_nan=False, allow_infinity=False).filter(lambda v: not v.is_integer()),
           st.floats(min_value=2.0**63, allow_infinity=False),
           st.integers(-99, 99).map(str)]  # "8" is a string, not an integer
    if below is not None:
        out.append(st.integers(max_value=below - 1))
    if above is not None:
        out.append(st.integers(min_value=above + 1, max_value=2**63 - 1))
    return st.one_of(*out)


def bad_float(ok: Callable[[float], bool]) -> st.SearchStrategy[Any]:
    """Values a number field must refuse: wrong types, non-finite, beyond float, out of range."""
    out_of_range = st.one_of(st.floats(allow_nan=False, allow_infinity=False),
                             st.integers(-10**6, 10**6)).filter(lambda v: not ok(v))
    return st.one_of(NOT_A_FLOAT, out_of_range)


def bad_name(allowed: tuple[str, ...]) -> st.SearchStrategy[Any]:
    return st.one_of(st.text(max_size=12).filter(lambda s: s not in allowed), NOT_A_STRING)


NOT_BOOL = st.one_of(st.integers(), st.text(max_size=5), st.floats(), CONTAINERS)
SEED = bad_int(below=0, above=2**32 - 1)
POSITIVE = bad_float(lambda v: v > 0)
NON_NEGATIVE = bad_float(lambda v: v >= 0)
AT_LEAST_1 = bad_int(below=1)
# (section, key) -> values it must refuse, and whether null is allowed there
FIELDS: dict[tuple[str, str], tuple[st.SearchStrategy[Any], bool]] = {
    ("dataset", "name"): (bad_name(DATASETS), False),
    ("dataset", "val_size"): (st.one_of(NOT_A_NUMBER, FLOAT_HUGE_INTS,
                                        st.floats(max_value=0, allow_nan=False),
                                        st.integers(max_value=0),
                                        st.floats(1.0, 1e9).filter(lambda v: not v.is_integer())),
                              True),
    ("dataset", "split_seed"): (SEED, False),
    ("dataset", "data_dir"): (NOT_A_STRING, True),
    ("teacher", "model"): (bad_name(TEACHER_MODELS), False),
    ("teacher", "width"): (AT_LEAST_1, True),
    ("teacher", "dropout"): (bad_float(lambda v: 0 <= v < 1), False),
    ("teacher", "epochs"): (AT_LEAST_1, False),
    ("teacher", "batch_size"): (AT_LEAST_1, False),
    ("teacher", "lr"): (POSITIVE, False),
    ("teacher", "weight_decay"): (NON_NEGATIVE, False),
    ("teacher", "shift"): (bad_int(below=0), False),
    ("teacher", "seed"): (SEED, False),
    ("student", "model"): (bad_name(STUDENT_MODELS), False),
    ("student", "width"): (AT_LEAST_1, False),
    ("training", "epochs"): (AT_LEAST_1, False),
    ("training", "batch_size"): (AT_LEAST_1, False),
    ("training", "lr"): (POSITIVE, False),
    ("training", "weight_decay"): (NON_NEGATIVE, False),
    ("training", "optimizer"): (bad_name(OPTIMIZERS), False),
    ("training", "temperature"): (POSITIVE, False),
    ("training", "alpha"): (bad_float(lambda v: 0 <= v <= 1), False),
    ("training", "shift"): (bad_int(below=0), False),
    ("training", "seed"): (SEED, False),
    ("training", "loss"): (bad_name(LOSSES), False),
    ("training", "dkd_alpha"): (bad_float(lambda v: 0 < v <= 100), True),
    ("training", "dkd_beta"): (bad_float(lambda v: 0 < v <= 100), True),
    ("training", "dkd_warmup"): (bad_int(below=0, above=10_000), True),
    ("training", "ls_weight"): (bad_float(lambda v: 0 < v <= 100), True),
    ("search", "algorithm"): (bad_name(SEARCH_ALGORITHMS), False),
    ("search", "startup_trials"): (AT_LEAST_1, True),
    ("search", "scheduler"): (bad_name(SCHEDULERS), False),
    ("search", "num_samples"): (AT_LEAST_1, False),
    ("search", "max_concurrent_trials"): (AT_LEAST_1, True),
    ("search", "grace_period"): (AT_LEAST_1, False),
    ("search", "reduction_factor"): (bad_int(below=2), False),
    ("search", "seed"): (SEED, False),  # Optuna's TPE takes seeds below 2**32 only
    ("search", "cpus_per_trial"): (POSITIVE, False),
    ("search", "gpus_per_trial"): (NON_NEGATIVE, True),
    ("search", "max_failures"): (bad_int(below=0), False),
    ("search", "checkpoint_every_s"): (NON_NEGATIVE, False),
    ("search", "per_width"): (NOT_BOOL, False),
    ("search", "baseline"): (NOT_BOOL, False),
    ("search", "baseline_num_samples"): (AT_LEAST_1, True),
    ("report", "seeds"): (AT_LEAST_1, False),
    ("report", "max_widths"): (AT_LEAST_1, False),
}
# searched dimension -> (a valid low, a valid high, integer?)
DIM_RANGES: dict[str, tuple[float, float, bool]] = {
    "temperature": (0.5, 50.0, False), "alpha": (0.0, 1.0, False), "lr": (1e-5, 1.0, False),
    "width": (1, 256, True), "batch_size": (1, 512, True), "weight_decay": (0.0, 0.1, False),
    "epochs": (4, 30, True),  # >= the base's grace_period of 4
    # (a loss's own weights: valid values, though the base's loss, kd, refuses them)
    "dkd_alpha": (0.5, 10.0, False), "dkd_beta": (1.0, 20.0, False), "dkd_warmup": (0, 20, True),
    "ls_weight": (0.5, 20.0, False),
}
# the dimensions with numeric bounds (the loss is a choice of names)
NUMERIC_DIMS = sorted(DIM_RANGES)
# values a searched dimension's bound must refuse (beyond wrong types)
DIM_OUT_OF_RANGE: dict[str, st.SearchStrategy[Any]] = {
    "temperature": st.floats(max_value=0, allow_nan=False), "lr": st.floats(max_value=0),
    "alpha": st.one_of(st.floats(max_value=-1e-9, allow_nan=False),
                       st.floats(min_value=1 + 1e-9, allow_nan=False)),
    "weight_decay": st.floats(max_value=-1e-9, allow_nan=False),
    "width": st.integers(max_value=0), "batch_size": st.integers(max_value=0),
    "epochs": st.integers(max_value=0),
    "dkd_alpha": st.floats(max_value=0), "dkd_beta": st.floats(min_value=100.5),
    "dkd_warmup": st.integers(max_value=-1), "ls_weight": st.floats(max_value=0),
}


def unknown_key(known: tuple[str, ...] | list[str]) -> st.SearchStrategy[Any]:
    return st.one_of(st.text(max_size=16), st.integers(), st.booleans(), st.none(),
                     st.floats(allow_nan=False)).filter(lambda k: k not in known)


def valid_dim(draw: Callable[..., Any], name: str) -> dict[str, Any]:
    low, high, integer = DIM_RANGES[name]
    if integer:
        return {"distribution": "int", "low": int(low), "high": int(high)}
    return {"distribution": draw(st.sampled_from(["uniform", "loguniform"])) if low > 0
            else "uniform", "low": low, "high": high}


# --------------------------------------------------------------------------- noise (stays valid)
NOISE_DELETIONS = [("teacher", "epochs"), ("teacher", "batch_size"), ("teacher", "lr"),
                   ("student", "width"), ("training", "lr"), ("training", "temperature"),
                   ("training", "alpha"), ("training", "batch_size"), ("search", "seed"),
                   ("search", "reduction_factor"), ("report",), ("name",),
                   ("search", "space", "alpha"), ("search", "space", "temperature")]
NOISE_VALUES: dict[tuple[str, str], st.SearchStrategy[Any]] = {
    ("training", "lr"): st.one_of(st.floats(1e-5, 1.0), st.just("1e-3")),  # PyYAML's string
    ("training", "alpha"): st.floats(0.0, 1.0),
    ("training", "temperature"): st.floats(0.5, 50.0),
    ("training", "shift"): st.integers(0, 2),
    ("training", "optimizer"): st.sampled_from(OPTIMIZERS),
    ("student", "width"): st.integers(1, 512),
    ("dataset", "split_seed"): st.integers(0, 2**32 - 1),
    ("search", "num_samples"): st.integers(1, 64),
    ("search", "seed"): st.integers(0, 2**32 - 1),
    ("search", "algorithm"): st.sampled_from(SEARCH_ALGORITHMS),
    ("search", "scheduler"): st.sampled_from(SCHEDULERS),
    ("search", "baseline"): st.booleans(),
    ("search", "max_concurrent_trials"): st.one_of(st.none(), st.integers(1, 8)),
}


@st.composite
def noised_base(draw: Callable[..., Any]) -> dict[str, Any]:
    """The quickstart config with valid changes: keys left out, values changed within range."""
    raw = copy.deepcopy(BASE)
    for path in draw(st.lists(st.sampled_from(NOISE_DELETIONS), max_size=3, unique=True)):
        node = raw
        for part in path[:-1]:
            node = node.get(part, {})
        node.pop(path[-1], None)
    for (section, key) in draw(st.lists(st.sampled_from(sorted(NOISE_VALUES)), max_size=3,
                                        unique=True)):
        raw.setdefault(section, {})[key] = draw(NOISE_VALUES[(section, key)])
    return raw


def dump(draw: Callable[..., Any], raw: Any) -> str:
    style = {"default_flow_style": draw(st.sampled_from([False, None, True])),
             "allow_unicode": draw(st.booleans())}
    try:
        return yaml.safe_dump(raw, sort_keys=draw(st.booleans()), **style)
    except TypeError:  # keys of mixed types do not sort
        return yaml.safe_dump(raw, sort_keys=False, **style)


# --------------------------------------------------------------------------- mutations
# Each breaks the config whatever else it holds, writes its whole target (so valid noise cannot
# repair it) and returns the top-level keys it touched; combined mutations touch disjoint keys.
Draw = Callable[..., Any]
Mutation = Callable[[Draw, dict[str, Any]], set[str]]


def _section(raw: dict[str, Any], name: str) -> dict[str, Any]:
    if not isinstance(raw.get(name), dict):
        raw[name] = {}
    return raw[name]


def _space(raw: dict[str, Any]) -> dict[str, Any]:
    search = _section(raw, "search")
    if not isinstance(search.get("space"), dict):
        search["space"] = {}
    return search["space"]


def m_bad_value(draw: Draw, raw: dict[str, Any]) -> set[str]:
    """Wrong type, out of range, huge, nan or null where null is not allowed."""
    section, key = draw(st.sampled_from(sorted(FIELDS)))
    values, optional = FIELDS[(section, key)]
    _section(raw, section)[key] = draw(values if optional else st.one_of(values, st.none()))
    return {section}


def m_section_not_mapping(draw: Draw, raw: dict[str, Any]) -> set[str]:
    section = draw(st.sampled_from(sorted(SECTIONS)))
    raw[section] = draw(st.one_of(st.integers(), st.text(max_size=8), st.booleans(),
                                  st.lists(st.integers(), max_size=3), st.floats(), DATES))
    return {section}


def m_unknown_section_key(draw: Draw, raw: dict[str, Any]) -> set[str]:
    section = draw(st.sampled_from(sorted(SECTIONS)))
    known = [k for (s, k) in FIELDS if s == section] + (["space"] if section == "search" else [])
    _section(raw, section)[draw(unknown_key(known))] = draw(st.integers())
    return {section}


def m_unknown_top_level_key(draw: Draw, raw: dict[str, Any]) -> set[str]:
    key = draw(unknown_key(list(TOP_LEVEL)))
    raw[key] = draw(st.one_of(st.none(), st.integers(), st.dictionaries(st.text(max_size=3),
                                                                        st.integers(), max_size=2)))
    return {"<unknown>"}


NAME_CHARS = string.ascii_letters + string.digits + "-_."


def m_bad_name(draw: Draw, raw: dict[str, Any]) -> set[str]:
    raw["name"] = draw(st.one_of(
        st.just(""), NOT_A_STRING,
        st.text(min_size=1, max_size=20).filter(
            lambda s: any(not (c.isalnum() or c in "-_.") for c in s)),  # '/', ' ', ...
        st.text(alphabet=NAME_CHARS, max_size=10).map(lambda s: "." + s),  # hidden, '..'
        st.text(alphabet=string.ascii_letters, min_size=256, max_size=400)))  # no such file name
    return {"name"}


def m_bad_cache_dir(draw: Draw, raw: dict[str, Any]) -> set[str]:
    raw["cache_dir"] = draw(NOT_A_STRING)
    return {"cache_dir"}


def m_space_not_mapping(draw: Draw, raw: dict[str, Any]) -> set[str]:
    # falsy ones included: `space: 0` or `space: []` is a mistake, not an empty space
    _section(raw, "search")["space"] = draw(st.one_of(
        st.sampled_from([0, "", [], False, 0.0]), st.integers(), st.text(min_size=1, max_size=8),
        st.lists(st.sampled_from(NUMERIC_DIMS), min_size=1, max_size=3), DATES))
    return {"search"}


def m_unknown_dimension(draw: Draw, raw: dict[str, Any]) -> set[str]:
    name = draw(unknown_key(list(SEARCHABLE)))
    _space(raw)[name] = {"distribution": "uniform", "low": 0.1, "high": 0.9}
    return {"search"}


def m_dimension_not_mapping(draw: Draw, raw: dict[str, Any]) -> set[str]:
    _space(raw)[draw(st.sampled_from(NUMERIC_DIMS))] = draw(st.one_of(
        st.none(), st.integers(), st.floats(), st.text(max_size=8), st.booleans(),
        st.lists(st.integers(), max_size=3)))
    return {"search"}


def m_unknown_dimension_key(draw: Draw, raw: dict[str, Any]) -> set[str]:
    name = draw(st.sampled_from(NUMERIC_DIMS))
    dim = valid_dim(draw, name)
    dim[draw(unknown_key(["distribution", "low", "high", "step", "values"]))] = 1
    _space(raw)[name] = dim
    return {"search"}


def m_bad_distribution(draw: Draw, raw: dict[str, Any]) -> set[str]:
    name = draw(st.sampled_from(NUMERIC_DIMS))
    dim = valid_dim(draw, name)
    if draw(st.booleans()):
        del dim["distribution"]  # missing
    else:
        dim["distribution"] = draw(st.one_of(st.none(), bad_name(DISTRIBUTIONS)))
    _space(raw)[name] = dim
    return {"search"}


def m_kind_mismatch(draw: Draw, raw: dict[str, Any]) -> set[str]:
    """A float distribution on an integer dimension, or int on a float one."""
    name = draw(st.sampled_from(NUMERIC_DIMS))
    low, high, integer = DIM_RANGES[name]
    dist = draw(st.sampled_from(["uniform", "loguniform"])) if integer else "int"
    _space(raw)[name] = {"distribution": dist, "low": low if low > 0 else 1, "high": high}
    return {"search"}


def m_missing_bound(draw: Draw, raw: dict[str, Any]) -> set[str]:
    name = draw(st.sampled_from(NUMERIC_DIMS))
    dim = valid_dim(draw, name)
    for key in draw(st.lists(st.sampled_from(["low", "high"]), min_size=1, unique=True)):
        del dim[key]
    _space(raw)[name] = dim
    return {"search"}


def m_reversed_bounds(draw: Draw, raw: dict[str, Any]) -> set[str]:
    name = draw(st.sampled_from(NUMERIC_DIMS))
    low, high, integer = DIM_RANGES[name]
    inside = st.integers(int(low), int(high)) if integer else st.floats(low, high)
    a, b = sorted([draw(inside), draw(inside)])
    dim = valid_dim(draw, name)
    dim["low"], dim["high"] = b, a  # low >= high
    _space(raw)[name] = dim
    return {"search"}


def m_bound_out_of_range(draw: Draw, raw: dict[str, Any]) -> set[str]:
    """width.low = 0, alpha.high = 1.5, a string, nan, 1e400, a huge integer..."""
    name = draw(st.sampled_from(NUMERIC_DIMS))
    integer = DIM_RANGES[name][2]
    dim = valid_dim(draw, name)
    key = draw(st.sampled_from(["low", "high"]))
    dim[key] = draw(st.one_of(DIM_OUT_OF_RANGE[name], bad_int() if integer
                              else NOT_A_FLOAT, st.none()))
    _space(raw)[name] = dim
    return {"search"}


def m_loguniform_from_zero(draw: Draw, raw: dict[str, Any]) -> set[str]:
    name = draw(st.sampled_from(["alpha", "weight_decay"]))  # 0 is a valid value of theirs
    _space(raw)[name] = {"distribution": "loguniform", "low": 0, "high": DIM_RANGES[name][1]}
    return {"search"}


def m_bad_step(draw: Draw, raw: dict[str, Any]) -> set[str]:
    name = draw(st.sampled_from(NUMERIC_DIMS))
    dim = valid_dim(draw, name)
    if dim["distribution"] == "int":
        span = dim["high"] - dim["low"]
        dim["step"] = draw(st.one_of(st.integers(max_value=0), st.integers(min_value=span + 1),
                                     st.floats(0.1, 0.9), st.text(max_size=4), st.none(),
                                     st.booleans(), HUGE_INTS))
    else:
        dim["step"] = draw(st.integers(1, 3))  # step goes with int only
    _space(raw)[name] = dim
    return {"search"}


def m_bad_choice(draw: Draw, raw: dict[str, Any]) -> set[str]:
    name = draw(st.sampled_from(NUMERIC_DIMS))
    low, high, integer = DIM_RANGES[name]
    good = [int(low), int(high)] if integer else [low, high]
    dim: dict[str, Any] = {"distribution": "choice", "values": list(good)}
    how = draw(st.sampled_from(["missing", "not a list", "empty", "repeated", "bad value",
                                "with bounds"]))
    if how == "missing":
        del dim["values"]
    elif how == "not a list":
        dim["values"] = draw(st.one_of(st.none(), st.integers(), st.text(max_size=5),
                                       st.dictionaries(st.text(max_size=3), st.integers(),
                                                       max_size=2)))
    elif how == "empty":
        dim["values"] = []
    elif how == "repeated":
        dim["values"] = [good[0], good[1], good[0]]
    elif how == "bad value":
        bad = draw(st.one_of(DIM_OUT_OF_RANGE[name], bad_int() if integer
                             else NOT_A_FLOAT, st.none()))
        dim["values"].insert(draw(st.integers(0, 2)), bad)
    else:
        dim[draw(st.sampled_from(["low", "high", "step"]))] = 1
    _space(raw)[name] = dim
    return {"search"}


def m_values_without_choice(draw: Draw, raw: dict[str, Any]) -> set[str]:
    name = draw(st.sampled_from(NUMERIC_DIMS))
    dim = valid_dim(draw, name)
    dim["values"] = [dim["low"], dim["high"]]
    _space(raw)[name] = dim
    return {"search"}


def m_grace_beyond_budget(draw: Draw, raw: dict[str, Any]) -> set[str]:
    """Valid for train (it runs no ASHA), an error for run."""
    epochs = draw(st.integers(1, 50))
    _space(raw).pop("epochs", None)
    search = _section(raw, "search")
    search["scheduler"], search["grace_period"] = "asha", epochs + draw(st.integers(1, 100))
    _section(raw, "training")["epochs"] = epochs
    return {"search", "training"}


def m_shift_on_digits(draw: Draw, raw: dict[str, Any]) -> set[str]:
    _section(raw, "dataset")["name"] = "digits"
    _section(raw, "training")["shift"] = draw(st.integers(3, 2**62))
    return {"dataset", "training"}


def m_empty_space(draw: Draw, raw: dict[str, Any]) -> set[str]:
    """Valid for train (it ignores the space), an error for run."""
    search = _section(raw, "search")
    if draw(st.booleans()):
        search.pop("space", None)
    else:
        search["space"] = draw(st.sampled_from([{}, None]))
    return {"search"}


MUTATIONS: dict[str, Mutation] = {f.__name__[2:]: f for f in (
    m_bad_value, m_section_not_mapping, m_unknown_section_key, m_unknown_top_level_key,
    m_bad_name, m_bad_cache_dir, m_space_not_mapping, m_unknown_dimension,
    m_dimension_not_mapping, m_unknown_dimension_key, m_bad_distribution, m_kind_mismatch,
    m_missing_bound, m_reversed_bounds, m_bound_out_of_range, m_loguniform_from_zero,
    m_bad_step, m_bad_choice, m_values_without_choice, m_shift_on_digits)}
RUN_ONLY: dict[str, Mutation] = {"empty_space": m_empty_space,
                                 "grace_beyond_budget": m_grace_beyond_budget}


@st.composite
def mutated(draw: Draw, command: str) -> tuple[dict[str, Any], list[str]]:
    """A noised base with 1-3 breaking mutations on disjoint top-level keys."""
    raw = draw(noised_base())
    catalogue = {**MUTATIONS, **(RUN_ONLY if command == "run" else {})}
    touched: set[str] = set()
    applied: list[str] = []
    for _ in range(draw(st.integers(1, 3))):
        # bad_value covers 40 fields: drawn as often as a few single-purpose mutations
        name = draw(st.sampled_from(sorted(catalogue) + ["bad_value"] * 4))
        trial = copy.deepcopy(raw)
        keys = catalogue[name](draw, trial)
        if keys & touched:
            continue
        raw, touched = trial, touched | keys
        applied.append(name)
    return raw, applied


# --------------------------------------------------------------------------- raw YAML literals
SENTINEL = "KDSEARCH_FUZZ_SENTINEL"


def bomb(levels: int, width: int, *, mapping: bool = False) -> str:
    """Billion laughs: each level an anchored list of `width` aliases of the one below."""
    parts = [f"&l0 [{', '.join(['lol'] * width)}]"]
    parts += [f"&l{i} [{', '.join([f'*l{i - 1}'] * width)}]" for i in range(1, levels)]
    if mapping:
        return "{" + ", ".join(f"k{i}: {p}" for i, p in enumerate(parts)) + "}"
    return "[" + ", ".join(parts) + "]"


# invalid at any value position (a section, a field, a dimension, a bound, a choice value)
UNIVERSAL_LITERALS = st.one_of(
    st.sampled_from([
        # tags the safe loader must refuse (the unsafe one would run code)
        "!!python/object/apply:os.system ['echo pwned']", "!!python/object:os.system {}",
        "!!python/object/new:os.system [x]", "!!python/name:os.system ''",
        "!!python/module:os ''", "!!python/tuple [1, 2]", "!!python/str abc", "!custom 1",
        "!<tag:example.com,2000:app/foo> 1", "!<tag:x%0Ay> 1",  # (a newline in the tag)
        # tags the safe loader constructs: bytes, a set, a list of pairs, a date
        "!!binary aGk=", "!!set {a, b}", "!!omap [a: 1, b: 2]", "2001-02-03",
        "2001-02-03 04:05:06", "0x" + "f" * 5000,  # 10**6000: hex has no digit limit
        # values the loader chokes on (not YAMLError: ValueError, KeyError)
        "2001-02-30", "0000-01-01", "2001-13-01 00:00:00", "2001-01-01 00:00:00 +99:00",
        "!!bool maybe", "!!int abc", "!!float x", "!!timestamp yesterday", "9" * 5000,
        # syntax errors
        "[unclosed", "{a: 1", "'unterminated", '"unterminated', '"bad \\q escape"',
        "*undefined_alias", "{a: 1}}", "[1]]", "@reserved", "`backtick", "{<<: 1}",
        "{<<: [1]}", "\x07bell", "\x00nul", "[&r [*r]]",  # (a recursive list)
    ]),
    # nested (10,000 deep: test_deeply_nested_file_is_refused)
    st.integers(1, 100).map(lambda n: "[" * n + "]" * n),
    st.integers(1, 100).map(lambda n: "[" * n),  # unclosed
    st.integers(1, 100).map(lambda n: "{a: " * n + "1" + "}" * n),
    st.builds(bomb, st.integers(1, 6), st.integers(2, 9), mapping=st.booleans()),
)
# invalid at any numeric position: non-finite, beyond float, beyond int64
NUMERIC_LITERALS = st.sampled_from([
    "1.0e400", "-1.0e400", "1e400",  # inf, -inf, and (no dot) the string '1e400'
    ".inf", "-.Inf", ".nan", ".NaN", "1" + "0" * 400, "-1" + "0" * 400, "1" + "0" * 4299,
    "0b" + "1" * 3000, "0o" + "7" * 3000, "9" * 5000,
])


def _positions(node: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[tuple[Any, ...], Any]]:
    yield path, node
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _positions(v, path + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _positions(v, path + (i,))


def _put(raw: Any, path: tuple[Any, ...], value: Any) -> Any:
    if not path:
        return value
    node = raw
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value
    return raw


@st.composite
def injected(draw: Draw) -> tuple[str, str]:
    """A noised base with one value replaced by a raw YAML literal; (text, what was done)."""
    raw = draw(noised_base())
    positions = list(_positions(raw))
    numeric = [p for p, v in positions if isinstance(v, (int, float)) and not isinstance(v, bool)]
    if draw(st.booleans()):
        path, literal = draw(st.sampled_from(numeric)), draw(NUMERIC_LITERALS)
    else:
        path, literal = draw(st.sampled_from([p for p, _ in positions])), draw(UNIVERSAL_LITERALS)
    text = dump(draw, _put(copy.deepcopy(raw), path, SENTINEL))
    assert SENTINEL in text
    return text.replace(SENTINEL, literal, 1), f"{literal[:60]!r} at {path}"


# --------------------------------------------------------------------------- the fuzzed files
@fuzz(200)
@given(data=st.data())
def test_mutated_config_is_refused(data: st.DataObject, capfd: pytest.CaptureFixture[str],
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    command = data.draw(st.sampled_from(COMMANDS))
    raw, applied = data.draw(mutated(command), label="mutations")
    with sandbox(monkeypatch) as root:
        path = write(root, dump(data.draw, raw))
        refused(capfd, argv_for(command, path, root), root, names=str(path))


@fuzz(200)
@given(data=st.data())
def test_injected_yaml_literal_is_refused(data: st.DataObject, capfd: pytest.CaptureFixture[str],
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    command = data.draw(st.sampled_from(COMMANDS))
    text, what = data.draw(injected(), label="injection")
    with sandbox(monkeypatch) as root:
        path = write(root, text)
        refused(capfd, argv_for(command, path, root), root, names=str(path))


@fuzz(60)
@given(command=st.sampled_from(COMMANDS),
       doc=st.one_of(st.none(), st.integers(), st.floats(), st.text(max_size=30), st.booleans(),
                     st.lists(st.just(BASE), max_size=2), DATES, st.binary(max_size=8)),
       flow=st.sampled_from([False, None, True]))
def test_top_level_not_a_mapping_is_refused(command: str, doc: Any, flow: bool | None,
                                            capfd: pytest.CaptureFixture[str],
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    with sandbox(monkeypatch) as root:
        path = write(root, yaml.safe_dump(doc, default_flow_style=flow))
        refused(capfd, argv_for(command, path, root), root, names=str(path))


INVALID_UTF8 = [b"\xff", b"\xfe", b"\xc3\x28", b"\xa0\xa1", b"\xe2\x28\xa1", b"\xf0\x28\x8c\x28",
                b"\xc0\xaf", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80", b"\x80"]


@fuzz(60)
@given(command=st.sampled_from(COMMANDS), data=st.data())
def test_non_utf8_file_is_refused(command: str, data: st.DataObject,
                                  capfd: pytest.CaptureFixture[str],
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    text = dump(data.draw, data.draw(noised_base()))
    how = data.draw(st.sampled_from(["bytes", "utf-16", "utf-32", "latin-1"]))
    if how == "bytes":
        content = text.encode()
        at = data.draw(st.integers(0, len(content)))
        content = content[:at] + data.draw(st.sampled_from(INVALID_UTF8)) + content[at:]
    elif how == "latin-1":
        content = text.encode("latin-1") + b"# r\xe9sum\xe9\n"  # an old editor's default
    else:
        content = text.encode(how)  # with a byte-order mark: a Windows editor's "Unicode"
    with sandbox(monkeypatch) as root:
        path = write(root, content)
        refused(capfd, argv_for(command, path, root), root, names=str(path))


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("text", ["", "\n", "   \n\n", "# only a comment\n", "---\n", "...\n",
                                  "--- \n...\n", "~\n", "null\n", "---\na: 1\n---\nb: 2\n",
                                  "\ufeff", "\t\n"],
                         ids=["empty", "newline", "blank", "comment", "doc-start", "doc-end",
                              "empty-doc", "tilde", "null", "two-docs", "bom-only", "tab"])
def test_empty_file_is_refused(command: str, text: str, capfd: pytest.CaptureFixture[str],
                               monkeypatch: pytest.MonkeyPatch) -> None:
    with sandbox(monkeypatch) as root:
        path = write(root, text)
        refused(capfd, argv_for(command, path, root), root, names=str(path))


@fuzz(150)
@given(command=st.sampled_from(COMMANDS),
       content=st.one_of(st.binary(max_size=200), st.text(max_size=200).map(str.encode)))
def test_junk_is_refused(command: str, content: bytes, capfd: pytest.CaptureFixture[str],
                         monkeypatch: pytest.MonkeyPatch) -> None:
    with sandbox(monkeypatch) as root:
        path = write(root, content)
        refused(capfd, argv_for(command, path, root), root, names=str(path), junk=True)


# What the fuzzing found, pinned: each was a traceback, two lines, or a config that would train
# or search (file text, what the error line must say)
FOUND = {
    "seed beyond int64": ("dataset:\n  split_seed: 9223372036854775808\n", "dataset.split_seed"),
    "TPE seed beyond 32 bits": ("search:\n  seed: 4294967296\n", "search.seed"),
    "width 10**400": ("student:\n  width: 1" + "0" * 400 + "\n", "student.width"),
    "width 1e300": ("student:\n  width: 1.0e+300\n", "student.width"),
    "lr 10**400 (OverflowError)": ("training:\n  lr: 1" + "0" * 400 + "\n", "training.lr"),
    "lr 16**5000 (repr ValueError)": ("training:\n  lr: 0x" + "f" * 5000 + "\n", "training.lr"),
    "5000 digits (ValueError)": ("training:\n  lr: " + "9" * 5000 + "\n", "does not load"),
    "February 30 (ValueError)": ("name: 2001-02-30\n", "does not load"),
    "!!bool maybe (KeyError)": ("search:\n  baseline: !!bool maybe\n", "does not load"),
    "space: 0 read as empty": ("search:\n  space: 0\n", "search.space"),
    "space: [] read as empty": ("search:\n  space: []\n", "search.space"),
    "val_size 1.5": ("dataset:\n  val_size: 1.5\n", "dataset.val_size"),
    "name of 300 letters": (f"name: {'a' * 300}\n", "name"),
    "newline in a key": ('training:\n  "l\\nr": 1\n', "unknown key training.'l\\nr'"),
}


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("case", list(FOUND), ids=list(FOUND))
def test_found_by_fuzzing_is_refused(command: str, case: str, capfd: pytest.CaptureFixture[str],
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    text, says = FOUND[case]
    with sandbox(monkeypatch) as root:
        path = write(root, text)
        line = refused(capfd, argv_for(command, path, root), root, names=str(path))
        assert says in line, line


@pytest.mark.parametrize("command,text", [
    ("run", "[" * 10_000 + "]" * 10_000),
    ("train", "training:\n  lr: " + "[" * 10_000 + "]" * 10_000 + "\n"),
    ("run", "{a: " * 10_000 + "1" + "}" * 10_000),
    ("train", "- " * 10_000 + "x\n"),
    ("run", "".join(" " * i + "a:\n" for i in range(300))),
], ids=["lists", "in-a-value", "mappings", "block-lists", "block-mappings"])
def test_deeply_nested_file_is_refused(command: str, text: str,
                                       capfd: pytest.CaptureFixture[str],
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    # plain PyYAML takes 2 s over `[[[[...` (quadratic scanning) and then hits the recursion
    # limit; read_yaml's loader stops at 16 levels
    with sandbox(monkeypatch) as root:
        path = write(root, text)
        line = refused(capfd, argv_for(command, path, root), root, names=str(path))
        assert "nested deeper than" in line


@pytest.mark.parametrize("where", ["document", "section", "field", "choice values"])
def test_billion_laughs_is_refused_at_once(where: str, capfd: pytest.CaptureFixture[str],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """9**9 = 387 million 'lol's if anything expands the aliases (repr in an error message)."""
    lol = bomb(9, 9)
    text = {"document": lol,
            "section": f"name: laughs\ntraining: {lol}\n",
            "field": f"training:\n  lr: {lol}\n",
            "choice values": f"search:\n  space:\n    width: {{distribution: choice, "
                             f"values: [{lol}]}}\n"}[where]
    for command in COMMANDS:
        with sandbox(monkeypatch) as root:
            path = write(root, text)
            refused(capfd, argv_for(command, path, root), root, names=str(path), seconds=1.0)


def test_oversized_file_is_refused(capfd: pytest.CaptureFixture[str],
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Megabytes of aliases parse slowly in pure-Python YAML; a space file is a few kB."""
    text = "a: &a [1]\nb: [" + ", ".join(["*a"] * 2_000_000) + "]\n"
    with sandbox(monkeypatch) as root:
        path = write(root, text)
        line = refused(capfd, argv_for("run", path, root), root, names=str(path), seconds=1.0)
        assert "bytes" in line


def test_real_process_refuses_a_bomb_in_one_line(tmp_path: Path) -> None:
    """The installed entry point, not main(): exit status 2, one stderr line, no traceback."""
    path = write(tmp_path, f"training: {bomb(9, 9)}\n")
    env = {**os.environ, "KDSEARCH_CACHE_DIR": str(tmp_path / "cache"),
           "KDSEARCH_DATA_DIR": str(tmp_path / "data")}
    proc = subprocess.run([sys.executable, "-m", "kdsearch", "run", str(path), "--results-dir",
                           str(tmp_path / "results")], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith("kdsearch: error: "), proc.stderr[-2000:]
    assert str(path) in lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["space.yaml"]


# --------------------------------------------------------------------------- CLI misuse
@pytest.mark.parametrize("command", COMMANDS)
def test_missing_file_is_refused(command: str, capfd: pytest.CaptureFixture[str],
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    with sandbox(monkeypatch) as root:
        path = root / "no" / "such.yaml"
        line = refused(capfd, argv_for(command, path, root), root, names=str(path))
        assert "no such file" in line


@pytest.mark.parametrize("command", COMMANDS)
def test_directory_instead_of_file_is_refused(command: str, capfd: pytest.CaptureFixture[str],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    with sandbox(monkeypatch) as root:
        folder = root / "search_spaces"
        folder.mkdir()
        (folder / "quickstart.yaml").write_text(QUICKSTART.read_text())
        line = refused(capfd, argv_for(command, folder, root), root, names=str(folder))
        assert "not a file" in line


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a file whatever its mode")
def test_unreadable_file_is_refused(capfd: pytest.CaptureFixture[str],
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    with sandbox(monkeypatch) as root:
        path = write(root, QUICKSTART.read_text())
        path.chmod(0)
        refused(capfd, argv_for("run", path, root), root, names=str(path))


def _fake_results(folder: Path) -> None:
    """What an earlier search of the same name left behind."""
    (folder / "distill" / "trial_0").mkdir(parents=True)
    (folder / "config.yaml").write_text(QUICKSTART.read_text())
    (folder / "run.json").write_text('{"phases": {"distill": {"status": "started"}}}')
    (folder / "trials.csv").write_text("phase,trial_id,status\ndistill,t0,RUNNING\n")
    (folder / "distill" / "trial_0" / "result.json").write_text("{}\n")


@pytest.mark.parametrize("overrides", [[], ["--set", "search.num_samples=2"]])
def test_existing_results_folder_is_refused_with_a_hint(overrides: list[str],
                                                        capfd: pytest.CaptureFixture[str],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    with sandbox(monkeypatch) as root:
        folder = root / "results" / "quickstart"
        _fake_results(folder)
        before = {p: (p.read_bytes() if p.is_file() else None) for p in folder.rglob("*")}
        line = refused(capfd, argv_for("run", QUICKSTART, root, *overrides), root,
                       names=str(folder))
        assert "kdsearch resume" in line and "--force" in line, line
        assert {p: (p.read_bytes() if p.is_file() else None)
                for p in folder.rglob("*")} == before


def test_results_path_taken_by_a_file_is_refused(capfd: pytest.CaptureFixture[str],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    with sandbox(monkeypatch) as root:
        (root / "results").mkdir()
        (root / "results" / "quickstart").write_text("not a folder\n")
        refused(capfd, argv_for("run", QUICKSTART, root), root)


def test_results_dir_that_is_a_file_is_refused(capfd: pytest.CaptureFixture[str],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    with sandbox(monkeypatch) as root:
        (root / "results").write_text("not a folder\n")
        refused(capfd, argv_for("run", QUICKSTART, root), root)


BAD_OVERRIDES = {
    "no equals sign": "search.num_samples",
    "empty key": "=5",
    "empty part": "training..lr=1",
    "leading dot": ".lr=1",
    "unknown top-level key": "trainig.lr=1",
    "unknown section key": "training.learning_rate=1",
    "unknown dimension": "search.space.momentum.low=0.1",
    "bad value": "training.lr=fast",
    "out of range": "training.alpha=1.5",
    "width low 0": "search.space.width.low=0",
    "width choice value 0": "search.space.width.values=[0, 8]",
    "reversed bounds": "search.space.lr.low=1.0",
    "not YAML": "training.lr=[1, 2",
    "through a value": "training.lr.x=1",
    "through a list": "search.space.width.values.x=1",
    "section replaced": "training=3",
    "huge int": "search.num_samples=" + "9" * 5000,
    "bad date": "name=2001-02-30",
    "python tag": "name=!!python/object/apply:os.system ['echo pwned']",
    "bomb": "training=" + bomb(9, 9),
    "newline in key": "training.l\nr=1",
}


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("override", list(BAD_OVERRIDES.values()), ids=list(BAD_OVERRIDES))
def test_bad_override_is_refused(command: str, override: str, capfd: pytest.CaptureFixture[str],
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    with sandbox(monkeypatch) as root:
        refused(capfd, argv_for(command, QUICKSTART, root, f"--set={override}"), root)


NUMERIC_PATHS = sorted(f"{s}.{k}" for (s, k) in FIELDS
                       if (s, k) not in {("dataset", "name"), ("dataset", "data_dir")}
                       and not k.endswith(("model", "optimizer", "algorithm", "scheduler",
                                           "baseline", "loss")))


@fuzz(120)
@given(command=st.sampled_from(COMMANDS), data=st.data())
def test_fuzzed_override_is_refused(command: str, data: st.DataObject,
                                    capfd: pytest.CaptureFixture[str],
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    how = data.draw(st.sampled_from(["junk", "unknown key", "numeric", "universal"]))
    if how == "junk":  # anything at all: refused, or (rarely) a valid override, discarded
        override = data.draw(st.text(max_size=40))
    elif how == "unknown key":
        section = data.draw(st.sampled_from(sorted(SECTIONS)))
        known = [k for (s, k) in FIELDS if s == section] + ["space"]
        key = data.draw(st.text(alphabet=string.ascii_letters + "_", min_size=1, max_size=12)
                        .filter(lambda k: k not in known))
        override = f"{section}.{key}=1"
    elif how == "numeric":
        override = f"{data.draw(st.sampled_from(NUMERIC_PATHS))}={data.draw(NUMERIC_LITERALS)}"
    else:
        path = data.draw(st.sampled_from(NUMERIC_PATHS + sorted(SECTIONS) + ["name"]))
        override = f"{path}={data.draw(UNIVERSAL_LITERALS)}"
    valid = data.draw(st.lists(st.sampled_from(["search.num_samples=2", "report.seeds=1",
                                                "training.alpha=0.5"]), max_size=2))
    extra = [f"--set={o}" for o in [*valid, override]]  # `--set -x` would be an option
    with sandbox(monkeypatch) as root:
        refused(capfd, argv_for(command, QUICKSTART, root, *extra), root, junk=how == "junk")


@pytest.mark.parametrize("argv", [[], ["fly"], ["run"], ["train"], ["run", "a.yaml", "--bogus"],
                                  ["train", "a.yaml", "--device", "tpu"],
                                  ["run", "a.yaml", "--set"]],
                         ids=["nothing", "unknown command", "run without file",
                              "train without file", "unknown option", "bad device",
                              "set without value"])
def test_argparse_misuse_exits_2_without_traceback(argv: list[str],
                                                   capfd: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    err = capfd.readouterr().err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("kdsearch")  # "kdsearch run: error: ..."


@pytest.mark.parametrize("command", ["resume", "report"])
@pytest.mark.parametrize("make", ["missing", "empty folder", "no run.json"])
def test_non_results_folder_is_refused(command: str, make: str,
                                       capfd: pytest.CaptureFixture[str],
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    with sandbox(monkeypatch) as root:
        folder = root / "results" / "quickstart"
        if make != "missing":
            folder.mkdir(parents=True)
        if make == "no run.json":
            (folder / "config.yaml").write_text(QUICKSTART.read_text())
        refused(capfd, [command, str(folder)], root, names="quickstart")


def test_resume_of_an_unfinished_search_of_the_older_layout_is_refused(
        capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    # run.json without "search": a Tuner per phase, which this version cannot restore
    with sandbox(monkeypatch) as root:
        folder = root / "results" / "quickstart"
        _fake_results(folder)
        line = refused(capfd, ["resume", str(folder)], root, names=str(folder))
        assert "older kdsearch" in line and "--force" in line and "kdsearch report" in line
