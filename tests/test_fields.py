"""kdsearch.fields: the rules a config value is checked by, and report.target's."""

from __future__ import annotations

import math

import pytest

from kdsearch.config import ConfigError, config_from_dict
from kdsearch.fields import (MAX_SEED, MAX_TEMPERATURE, MAX_WIDTH, VALUE_RULES,
                             built_in_or_code, gpu_share_ok, is_object_name, kwargs_spec,
                             object_name, plain, seed_spec, target_spec)

# (dimension, kind, values allowed, values refused): each range's edges from both sides
RANGES = [
    ("temperature", float, [1e-9, 1.0, MAX_TEMPERATURE], [0.0, -1.0, MAX_TEMPERATURE + 1e-6]),
    ("alpha", float, [0.0, 0.5, 1.0], [-1e-9, 1.0 + 1e-9]),
    ("lr", float, [1e-12, 10.0], [0.0, -1e-3]),
    ("width", int, [1, 64, MAX_WIDTH], [0, -1, MAX_WIDTH + 1]),
    ("batch_size", int, [1, 4096], [0, -8]),
    ("weight_decay", float, [0.0, 1e-4], [-1e-12]),
    ("epochs", int, [1, 100], [0, -1]),
]


@pytest.mark.parametrize("name, kind, good, bad", RANGES, ids=[r[0] for r in RANGES])
def test_each_searched_value_has_its_kind_and_range(name: str, kind: type, good: list,
                                                    bad: list) -> None:
    rule_kind, check, allowed = VALUE_RULES[name]
    assert rule_kind is kind
    assert [v for v in good if not check(v)] == []
    assert [v for v in bad if check(v)] == []
    assert allowed  # the words a message says are allowed


def test_every_searched_value_has_a_rule() -> None:
    from kdsearch.config import SEARCHABLE

    assert set(VALUE_RULES) == set(SEARCHABLE) == {
        "temperature", "alpha", "lr", "width", "batch_size", "weight_decay", "epochs", "loss",
        "dkd_alpha", "dkd_beta", "dkd_warmup", "ls_weight"}


def test_the_rules_refuse_in_the_config_and_in_the_search_space_alike() -> None:
    with pytest.raises(ConfigError, match=rf"student.width = {MAX_WIDTH + 1} .*"
                                          rf"an integer in \[1, {MAX_WIDTH}\]"):
        config_from_dict({"student": {"width": MAX_WIDTH + 1}})
    with pytest.raises(ConfigError, match=r"search.space.width.*1048577"):
        config_from_dict({"search": {"space": {"width": {
            "distribution": "int", "low": 8, "high": MAX_WIDTH + 1}}}})
    config_from_dict({"student": {"width": MAX_WIDTH}, "training": {"temperature": 1000}})


def _target_check():
    meta = target_spec().metadata
    return meta["check"], meta["convert"]


@pytest.mark.parametrize("target", [
    {"within_teacher": 0}, {"within_teacher": 1.0}, {"within_teacher": 99.9},
    {"accuracy": 0.1}, {"accuracy": 95}, {"accuracy": 99.99},
])
def test_a_target_of_one_kind_within_its_range_is_allowed(target: dict) -> None:
    check, convert = _target_check()
    assert check(target)
    (kind, value), = convert(target).items()
    assert isinstance(value, float) and value == float(target[kind])


@pytest.mark.parametrize("target", [
    {}, {"within_teacher": 1, "accuracy": 95},  # one key, not none or two
    {"within_teacher": 100}, {"within_teacher": -0.5},  # 0 <= P < 100
    {"accuracy": 0}, {"accuracy": 100}, {"accuracy": -1},  # 0 < A < 100
    {"accuracy": True}, {"within_teacher": False},  # a boolean is not a number
    {"accuracy": "95"}, {"accuracy": None}, {"accuracy": math.nan},
    {"within_teacher": math.inf}, {"top5": 95},
])
def test_a_target_of_the_wrong_shape_or_range_is_refused(target: dict) -> None:
    check, _ = _target_check()
    assert not check(target)


def test_the_default_target_is_one_point_within_the_teacher() -> None:
    assert target_spec().default_factory() == {"within_teacher": 1.0}
    assert config_from_dict({}).report.target == {"within_teacher": 1.0}


def test_a_refused_target_is_named_in_one_line_with_what_is_allowed() -> None:
    with pytest.raises(ConfigError) as info:
        config_from_dict({"report": {"target": {"accuracy": 100}}})
    message = str(info.value)
    assert "\n" not in message
    assert "report.target = {'accuracy': 100}" in message
    assert "0 < A < 100" in message and "0 <= P < 100" in message
    assert config_from_dict({"report": {"target": {"accuracy": 97}}}).report.target == {
        "accuracy": 97.0}


def test_gpu_shares_are_a_fraction_of_one_or_whole_gpus() -> None:
    assert all(gpu_share_ok(v) for v in (0, 0.25, 1, 2.0, 4))
    assert not any(gpu_share_ok(v) for v in (1.5, -0.5, 2.25))


def test_seeds_fit_in_32_bits() -> None:
    check = seed_spec().metadata["check"]
    assert check(0) and check(MAX_SEED) and MAX_SEED == 2**32 - 1
    assert not check(-1) and not check(MAX_SEED + 1)


def test_an_object_is_named_by_its_qualified_name() -> None:
    def load_data() -> None:
        pass

    name = object_name(load_data)
    assert name == ("<object test_an_object_is_named_by_its_qualified_name.<locals>"
                    ".load_data>")
    assert is_object_name(name)
    assert object_name(3) == "<object int>"  # no __qualname__: its type's
    assert not is_object_name("my_nets:Teacher") and not is_object_name(None)


def test_a_model_name_is_built_in_code_or_an_object() -> None:
    check, allowed = built_in_or_code(("mlp_student",), "model factory")
    assert check("mlp_student") and check("my_nets:make_student") and check("<object f>")
    assert not check("resnet50") and not check("my nets:make") and not check("")
    assert "module:attribute naming your own model factory" in allowed


def test_kwargs_are_identifiers_to_plain_values() -> None:
    check = kwargs_spec("make_student(width=W, **kwargs)").metadata["check"]
    assert check({"depth": 3, "act": "relu", "sizes": [1, 2], "opts": {"a": None}})
    assert not check({"not an identifier": 1})
    assert not check({"x": math.nan})
    assert not check({"x": object()})


def test_plain_values_stop_at_a_depth_of_twenty() -> None:
    nested: object = 1
    for _ in range(21):
        nested = [nested]
    assert plain([[[1.5, "a", None, True]]])
    assert not plain(nested)
    assert not plain({1: "key not a string"})
