"""The process-wide state a search changes while it runs, put back when it returns.

Ray and Ray Tune are configured through environment variables, and quieted through their loggers
and Python's warning filters; `ray.init` itself sets variables (RAY_AUTH_MODE, ...) and loggers
for good, and Optuna's verbosity is a logger level. `restored()` saves all three at the start of
a search, a resume or a report and puts them back at the end, so that kdsearch used as a library
leaves its caller's process as it found it. Loggers first created during the block (by importing
Ray) are left as they are.
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from typing import Any, Iterator


def _loggers() -> dict[str, logging.Logger]:
    found = {name: obj for name, obj in logging.Logger.manager.loggerDict.items()
             if isinstance(obj, logging.Logger)}
    found[""] = logging.getLogger()
    return found


def _state(logger: logging.Logger) -> tuple[Any, ...]:
    return (logger.level, list(logger.handlers), list(logger.filters), logger.propagate,
            logger.disabled)


@contextlib.contextmanager
def restored() -> Iterator[None]:
    """Environment variables, warning filters and every existing logger's level, handlers,
    filters and propagation: as they were before the block, after it."""
    environ = dict(os.environ)
    loggers = {name: (logger, _state(logger)) for name, logger in _loggers().items()}
    try:
        with warnings.catch_warnings():  # the filters, put back on the way out
            yield
    finally:
        for key in set(os.environ) - set(environ):
            del os.environ[key]
        for key, value in environ.items():
            if os.environ.get(key) != value:
                os.environ[key] = value
        for logger, (level, handlers, kept, propagate, disabled) in loggers.values():
            logger.setLevel(level)
            logger.handlers[:] = handlers
            logger.filters[:] = kept
            logger.propagate, logger.disabled = propagate, disabled
