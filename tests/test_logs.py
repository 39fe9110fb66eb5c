"""kdsearch.logs: quiet as a library; in console(), INFO on stdout and WARNING on stderr, each
message alone on a line, and the logger as it was afterwards."""

from __future__ import annotations

import contextlib
import io
import logging

import pytest

from kdsearch import logs


def _state() -> tuple:
    return logs.log.level, logs.log.propagate, list(logs.log.handlers)


def test_info_goes_to_stdout_and_warnings_to_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    with logs.console():
        logs.log.info("trial %s: val_acc %.2f", "a1", 0.95)
        logging.getLogger("kdsearch.search").info("from a child logger")
        logs.log.warning("the teacher is worse than the baseline")
        logs.log.error("a trial failed")
        logs.log.debug("not shown at INFO")
    out, err = capsys.readouterr()
    assert out == "trial a1: val_acc 0.95\nfrom a child logger\n"  # the message alone
    assert err == "the teacher is worse than the baseline\na trial failed\n"


def test_the_level_chooses_what_is_printed(capsys: pytest.CaptureFixture[str]) -> None:
    with logs.console(logging.WARNING):  # kdsearch -q
        logs.log.info("progress")
        logs.log.warning("act on this")
    assert capsys.readouterr() == ("", "act on this\n")
    with logs.console(logging.DEBUG):  # kdsearch -v
        logs.log.debug("details")
    assert capsys.readouterr().out == "details\n"


def test_the_logger_is_put_back_after_the_block_even_on_an_error(
        capsys: pytest.CaptureFixture[str]) -> None:
    original = logs.log.level
    logs.log.setLevel(logging.ERROR)
    before = _state()
    try:
        with pytest.raises(RuntimeError):
            with logs.console(logging.DEBUG):
                assert logs.log.level == logging.DEBUG and logs.log.propagate is False
                assert any(isinstance(h, logs.ConsoleHandler) for h in logs.log.handlers)
                raise RuntimeError("boom")
        assert _state() == before
        logs.log.error("after the block")
        assert capsys.readouterr() == ("", "")  # no console handler left behind
    finally:
        logs.log.setLevel(original)


def test_as_a_library_it_prints_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    logs.log.warning("nobody listens")  # no handler but the NullHandler: no lastResort print
    assert capsys.readouterr() == ("", "")


def test_a_redirected_stdout_is_followed() -> None:
    buffer = io.StringIO()
    with logs.console(), contextlib.redirect_stdout(buffer):
        logs.log.info("into the buffer")
    assert buffer.getvalue() == "into the buffer\n"
