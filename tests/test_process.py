"""kdsearch.process: restored() puts back the environment, the warning filters and the loggers a
search changes, so kdsearch as a library leaves its caller's process as it found it."""

from __future__ import annotations

import logging
import os
import uuid
import warnings
from typing import Iterator

import pytest

from kdsearch.process import restored


@pytest.fixture
def names() -> Iterator[list[str]]:
    """Environment variable names no one else uses; removed after the test."""
    made = [f"KDSEARCH_TEST_{uuid.uuid4().hex.upper()}" for _ in range(3)]
    yield made
    for name in made:
        os.environ.pop(name, None)


def test_environment_variables_are_put_back(names: list[str]) -> None:
    added, changed, removed = names
    os.environ[changed] = "before"
    os.environ[removed] = "kept"
    with restored():
        os.environ[added] = "1"  # ray.init sets RAY_AUTH_MODE, say
        os.environ[changed] = "during"
        del os.environ[removed]
    assert added not in os.environ
    assert os.environ[changed] == "before"
    assert os.environ[removed] == "kept"


def test_warning_filters_are_put_back() -> None:
    before = list(warnings.filters)
    with restored():
        warnings.simplefilter("ignore")
        warnings.filterwarnings("error", message="from ray")
        assert warnings.filters != before
    assert warnings.filters == before


def test_a_loggers_level_handlers_filters_and_propagation_are_put_back() -> None:
    logger = logging.getLogger(f"kdsearch_test.{uuid.uuid4().hex}")
    logger.setLevel(logging.INFO)
    handler, kept = logging.NullHandler(), logging.Filter("x")
    logger.addHandler(handler)
    logger.addFilter(kept)
    root_level = logging.getLogger().level
    try:
        with restored():
            logger.setLevel(logging.ERROR)  # Optuna's verbosity, Ray's quieting
            logger.removeHandler(handler)
            logger.addHandler(logging.StreamHandler())
            logger.removeFilter(kept)
            logger.propagate = False
            logger.disabled = True
            logging.getLogger().setLevel(logging.CRITICAL)
        assert logger.level == logging.INFO
        assert logger.handlers == [handler] and logger.filters == [kept]
        assert logger.propagate is True and logger.disabled is False
        assert logging.getLogger().level == root_level
    finally:
        logger.handlers.clear()
        logger.filters.clear()


def test_a_logger_first_made_in_the_block_is_left_as_it_is() -> None:
    name = f"kdsearch_test.new_{uuid.uuid4().hex}"
    with restored():
        logging.getLogger(name).setLevel(logging.WARNING)  # importing Ray makes its loggers
    assert logging.getLogger(name).level == logging.WARNING


def test_everything_is_put_back_when_the_block_raises(names: list[str]) -> None:
    logger = logging.getLogger(f"kdsearch_test.{uuid.uuid4().hex}")
    filters = list(warnings.filters)
    with pytest.raises(KeyboardInterrupt):
        with restored():
            os.environ[names[0]] = "1"
            logger.setLevel(logging.CRITICAL)
            warnings.simplefilter("ignore")
            raise KeyboardInterrupt  # a search stopped with Ctrl-C
    assert names[0] not in os.environ
    assert logger.level == logging.NOTSET
    assert warnings.filters == filters
