"""kdsearch.yamlfile: YAML read safely (size, depth, keys written twice, YAML 1.2 booleans) and
the values of --set, each failure one line naming the file."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from kdsearch.errors import ConfigError
from kdsearch.yamlfile import (MAX_DEPTH, MAX_FILE_BYTES, apply_overrides, parse_override,
                               read_yaml, safe_load)


def _write(tmp_path: Path, text: str | bytes) -> Path:
    path = tmp_path / "space.yaml"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return path


def _error(path: Path) -> str:
    """read_yaml's one-line ConfigError for `path`, which names the file."""
    with pytest.raises(ConfigError) as info:
        read_yaml(path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message, message
    return message


def test_a_key_written_twice_is_refused_with_its_line_and_column(tmp_path: Path) -> None:
    text = "name: x\ntraining:\n  lr: 3.0e-3\n  epochs: 4\n  lr: 5.0\n"
    message = _error(_write(tmp_path, text))
    assert "the key 'lr' appears twice in one section" in message
    assert "at line 5, column 3" in message


def test_a_top_level_key_written_twice_is_refused_and_equal_keys_in_two_sections_are_not(
        tmp_path: Path) -> None:
    assert "the key 'training' appears twice" in _error(
        _write(tmp_path, "training: {lr: 1}\ntraining: {epochs: 2}\n"))
    assert read_yaml(_write(tmp_path, "teacher: {epochs: 2}\ntraining: {epochs: 3}\n")) == {
        "teacher": {"epochs": 2}, "training": {"epochs": 3}}


def test_a_merge_key_may_be_overridden_by_the_sections_own_key(tmp_path: Path) -> None:
    text = "base: &b {epochs: 4, lr: 1.0}\ntraining:\n  <<: *b\n  lr: 3.0\n"
    assert read_yaml(_write(tmp_path, text))["training"] == {"epochs": 4, "lr": 3.0}


def test_nesting_up_to_the_limit_loads_and_one_level_more_is_refused(tmp_path: Path) -> None:
    deepest = "[" * MAX_DEPTH + "]" * MAX_DEPTH
    value = read_yaml(_write(tmp_path, deepest))
    for _ in range(MAX_DEPTH - 1):
        assert isinstance(value, list) and len(value) == 1
        value = value[0]
    assert value == []
    too_deep = "[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1)
    message = _error(_write(tmp_path, too_deep))
    assert f"nested deeper than {MAX_DEPTH} levels" in message and "line 1" in message


def test_a_deeply_nested_bomb_is_refused_quickly(tmp_path: Path) -> None:
    message = _error(_write(tmp_path, "a: " + "[" * 10_000 + "]" * 10_000 + "\n"))
    assert "nested deeper" in message


def test_a_file_over_the_size_limit_is_refused_unread(tmp_path: Path) -> None:
    comment = b"# " + b"x" * 97 + b"\n"  # 100 bytes a line
    at_limit = b"a: 1\n" + comment * ((MAX_FILE_BYTES - 5) // 100)
    at_limit += b"#" * (MAX_FILE_BYTES - len(at_limit))
    assert len(at_limit) == MAX_FILE_BYTES
    assert read_yaml(_write(tmp_path, at_limit)) == {"a": 1}
    message = _error(_write(tmp_path, at_limit + b"\n"))
    assert f"{MAX_FILE_BYTES + 1:,} bytes is too big" in message


def test_only_true_and_false_are_booleans(tmp_path: Path) -> None:
    text = ("a: off\nb: yes\nc: true\nd: False\ne: No\nf: ON\ng: TRUE\n"
            "training: {fast_step: off}\n")
    assert read_yaml(_write(tmp_path, text)) == {
        "a": "off", "b": "yes", "c": True, "d": False, "e": "No", "f": "ON", "g": True,
        "training": {"fast_step": "off"}}
    # and a word as a key stays a word
    assert safe_load("on: 1\nyes: 2\n") == {"on": 1, "yes": 2}


def test_pyyamls_own_loader_is_left_as_it_was() -> None:
    assert yaml.safe_load("a: off") == {"a": False}  # YAML 1.1, for everyone else


def test_other_scalars_are_plain_yaml(tmp_path: Path) -> None:
    text = "n: 8\nf: 1.0e-3\nnull_value: null\nname: mlp_student\nlist: [1, two]\n"
    assert read_yaml(_write(tmp_path, text)) == {"n": 8, "f": 1e-3, "null_value": None,
                                                "name": "mlp_student", "list": [1, "two"]}


@pytest.mark.parametrize("content, words", [
    (b"a: \xff\xfe\n", "not UTF-8 text (byte 3)"),
    (b"training:\n  epochs: [1, 2\n", "YAML does not parse at line 3"),
    (b"name: !!python/object/apply:os.getcwd []\n", "YAML does not parse"),
    (b"when: 2001-02-30\n", "YAML does not load: ValueError"),
])
def test_a_file_that_does_not_read_is_one_line(tmp_path: Path, content: bytes, words: str
                                               ) -> None:
    assert words in _error(_write(tmp_path, content))


def test_a_missing_file_or_a_folder_is_named(tmp_path: Path) -> None:
    assert "no such file" in _error(tmp_path / "nope.yaml")
    (tmp_path / "dir.yaml").mkdir()
    assert "not a file" in _error(tmp_path / "dir.yaml")


@pytest.mark.parametrize("text, parsed", [
    ("search.num_samples=8", (["search", "num_samples"], 8)),
    ("training.lr=1.0e-3", (["training", "lr"], 1e-3)),
    ("training.fast_step=off", (["training", "fast_step"], "off")),
    ("search.baseline=false", (["search", "baseline"], False)),
    ("search.space.width.values=[8, 16]", (["search", "space", "width", "values"], [8, 16])),
    ("name=a=b", (["name"], "a=b")),  # the first = splits
    (" student.model = cnn_student", (["student", "model"], "cnn_student")),
    ("teacher.width=", (["teacher", "width"], None)),
])
def test_parse_override_reads_key_and_yaml_value(text: str, parsed: tuple) -> None:
    assert parse_override(text) == parsed


@pytest.mark.parametrize("text, words", [
    ("search.num_samples", "expected KEY=VALUE"),
    ("search..num_samples=3", "is not a dotted path"),
    ("=3", "is not a dotted path"),
    ("training.lr=[1, 2", "the value does not parse as YAML"),
    ("training.lr=" + "[" * 100 + "]" * 100, "the value does not parse as YAML"),
])
def test_a_bad_override_is_one_line(text: str, words: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_override(text)
    assert words in str(info.value) and "\n" not in str(info.value)


def test_apply_overrides_sets_nested_values_on_a_copy() -> None:
    raw = {"name": "x", "training": {"lr": 1.0, "epochs": 3}}
    out = apply_overrides(raw, ["training.lr=2.0", "search.space.lr.low=1.0e-4", "name=y"])
    assert out == {"name": "y", "training": {"lr": 2.0, "epochs": 3},
                   "search": {"space": {"lr": {"low": 1e-4}}}}
    assert raw == {"name": "x", "training": {"lr": 1.0, "epochs": 3}}  # the file's values kept
    assert apply_overrides(None, ["training.epochs=2"]) == {"training": {"epochs": 2}}
    assert apply_overrides(raw, []) is raw
    assert apply_overrides([1, 2], ["a=1"]) == [1, 2]  # config_from_dict names the top level


def test_an_override_through_a_value_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"--set 'training.lr.low=1': training.lr is not a "
                                          r"section"):
        apply_overrides({"training": {"lr": 1.0}}, ["training.lr.low=1"])
    # a section set to null is a section to fill
    assert apply_overrides({"training": None}, ["training.lr=1"]) == {"training": {"lr": 1}}
