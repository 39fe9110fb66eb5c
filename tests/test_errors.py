"""kdsearch.errors: a value quoted in a message is short and on one line, whatever it holds."""

from __future__ import annotations

import time

import pytest

from kdsearch.errors import MAX_INT, ConfigError, UserError, one_line, show, show_key


def test_a_user_error_is_a_config_errors_base() -> None:
    # the CLI catches UserError; a config mistake is one, and a ValueError for the API
    assert issubclass(ConfigError, UserError) and issubclass(ConfigError, ValueError)


def test_an_integer_int64_holds_is_shown_whole() -> None:
    assert show(MAX_INT) == "9223372036854775807"
    assert show(-MAX_INT) == "-9223372036854775807"
    assert show(8) == "8"


def test_a_huge_integer_is_shown_by_its_size_at_once() -> None:
    start = time.perf_counter()
    text = show(10**100_000)  # str() refuses past 4,300 digits
    assert time.perf_counter() - start < 1.0
    assert text == "<an integer of about 100001 digits>"
    assert show(-(10**30)) == "-<an integer of about 31 digits>"
    assert show(MAX_INT + 1).startswith("<an integer of about")
    assert show([10**5000]) == "[<an integer of about 5001 digits>]"  # inside a container too


def test_a_long_string_is_cut_to_80_characters() -> None:
    text = show("x" * 10_000)
    assert "..." in text and text.startswith("'xxx")
    assert len(text) == 80 and text.endswith("x'")  # both ends kept
    assert show_key("x" * 10_000) == text
    assert show("short") == "'short'"


def test_line_breaks_are_escaped_not_printed() -> None:
    for value in ("a\nb", "a\r\nb", ["one\ntwo"], {"k\n": "v"}):
        assert "\n" not in show(value) and "\r" not in show(value)
    assert show("a\nb") == "'a\\nb'"


def test_a_deep_or_large_structure_is_shown_short() -> None:
    bomb: object = ["lol"] * 9
    for _ in range(9):  # 9**10 strings once expanded, as a YAML alias bomb
        bomb = [bomb] * 9
    start = time.perf_counter()
    text = show(bomb)
    assert time.perf_counter() - start < 1.0
    assert len(text) <= 80 and text.endswith("...")
    assert show(list(range(100))) == "[0, 1, 2, 3, 4, 5, ...]"
    assert show({"a": {"b": {"c": {"d": 1}}}}) == "{'a': {'b': {'c': {...}}}}"


@pytest.mark.parametrize("key, shown", [
    ("lr", "lr"), ("search.space", "search.space"), ("x" * 60, "x" * 60),
    ("x" * 61, "'" + "x" * 61 + "'"),  # past 60: quoted
    ("a\nb", "'a\\nb'"), ("", "''"), ("tab\there", "'tab\\there'"),
    (3, "3"), (None, "None"),
    # (an id of its own: pytest cannot print the number either)
    pytest.param(10**5000, "<an integer of about 5001 digits>", id="huge-int"),
])
def test_a_key_is_shown_as_typed_when_short_and_printable(key: object, shown: str) -> None:
    assert show_key(key) == shown


def test_one_line_joins_lines_and_cuts_at_200_characters() -> None:
    assert one_line("module 'x'\n  has no\tattribute  'y'\n") == "module 'x' has no attribute 'y'"
    assert one_line(ValueError("first\nsecond")) == "first second"
    assert one_line("w " * 500) == ("w " * 100)[:200]
    assert len(one_line("y" * 10_000)) == 200
    assert one_line("") == "" and one_line(None) == "None"
