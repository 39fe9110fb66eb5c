"""kdsearch's messages: the logger `kdsearch`, and the console handler the CLI prints them with.

Every message kdsearch gives (the live status of a search, notes, warnings) is a record of the
logger "kdsearch" or a child of it, at INFO (progress, notes) or WARNING (something to act on).
As a library kdsearch only logs: an application decides where the records go
(`logging.basicConfig(level=logging.INFO)` shows them). The CLI runs in `console()`, which
prints each message as a plain line, INFO to stdout and WARNING and above to stderr.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from typing import Iterator

log = logging.getLogger("kdsearch")
log.addHandler(logging.NullHandler())  # a library's logger: quiet until someone listens


class ConsoleHandler(logging.Handler):
    """Each record's message alone on a line: INFO and below to stdout, WARNING and above to
    stderr, the streams looked up when a record is written (so a redirected sys.stdout is
    followed)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            stream = sys.stderr if record.levelno >= logging.WARNING else sys.stdout
            stream.write(self.format(record) + "\n")
            stream.flush()
        except Exception:
            self.handleError(record)


@contextlib.contextmanager
def console(level: int = logging.INFO) -> Iterator[None]:
    """kdsearch's messages printed on the console for the block, as the CLI prints them; the
    logger as it was after it."""
    handler = ConsoleHandler()
    before = (log.level, log.propagate)
    log.addHandler(handler)
    log.setLevel(level)
    log.propagate = False  # printed here, not again by a root handler
    try:
        yield
    finally:
        log.removeHandler(handler)
        log.setLevel(before[0])
        log.propagate = before[1]
