"""Ctrl-C at safe points: SIGINT held back while steps that belong together run.

A write commits to SQL, then applies the change to the in-memory vector index (and counts it
in its report); the index file is written when the writer lock is released. Interrupted in
between, nothing committed is lost (SQL is the truth, the file a cache rebuilt from it), but
the file is left behind SQL (a rebuild at the next open), an interrupted commit leaves the
program unsure whether it happened, and a report says less than what was stored.
:func:`critical_section` closes those gaps: Ctrl-C (``SIGINT``) during the block is recorded,
and ``KeyboardInterrupt`` is raised when the outermost block ends, at the safe point after it.

The sections are short (a commit of one batch and its index update, the write of the index
file), so a command still stops promptly. Pressing Ctrl-C :data:`FORCE_AFTER` times within one
section stops at once, as ``kill -9`` would: what is committed is kept, and the next command
rebuilds the index file from SQL if it is behind.

Python runs signal handlers in the main thread only, so elsewhere (a server's worker threads)
a section changes nothing. The handler in force before a section is restored after it and
given the deferred signal (``KeyboardInterrupt`` for Python's default one); signals ignored
(``SIG_IGN``) stay ignored.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

logger = logging.getLogger(__name__)

#: Ctrl-C presses within one section after which it is abandoned (KeyboardInterrupt at once).
FORCE_AFTER: int = 3


class _Held:
    """The main thread's deferral: process-wide, as signal handlers are."""

    depth = 0  # nesting of critical sections in the main thread
    pending = 0  # SIGINTs received during the outermost one
    what = ""  # what the outermost one does, for the message


_held = _Held()


def _record(signum: int, frame: FrameType | None) -> None:
    """The SIGINT handler during a section: count the press, stop at once after a few."""
    _held.pending += 1
    if _held.pending >= FORCE_AFTER:
        logger.warning("interrupted during %s: stopping at once", _held.what)
        raise KeyboardInterrupt
    if _held.pending == 1:
        logger.warning(
            "interrupt: stopping once %s is done (press Ctrl-C %d more times to stop at once)",
            _held.what,
            FORCE_AFTER - 1,
        )


def _deliver(previous: Any) -> None:
    """Give the deferred SIGINT to the handler that was in force before the section."""
    if previous is signal.default_int_handler:
        raise KeyboardInterrupt
    if callable(previous):
        previous(signal.SIGINT, None)
    elif previous == signal.SIG_DFL:
        signal.raise_signal(signal.SIGINT)


@contextmanager
def critical_section(what: str) -> Iterator[None]:
    """Hold SIGINT back while the block runs; raise it at the end (see the module doc).

    ``what`` says what the block does ("a database commit", ...), for the message logged
    when Ctrl-C is pressed during it. Re-entrant; a no-op outside the main thread.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    if _held.depth:
        _held.depth += 1
        try:
            yield
        finally:
            _held.depth -= 1
        return
    try:
        previous: Callable[[int, FrameType | None], Any] | int | None = signal.signal(
            signal.SIGINT, _record
        )
    except ValueError:  # not the main interpreter
        yield
        return
    if previous is None:  # installed outside Python: the best restore is the default action
        previous = signal.SIG_DFL
    if previous == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        yield
        return
    _held.depth, _held.pending, _held.what = 1, 0, what
    try:
        yield
    finally:
        _held.depth = 0
        signal.signal(signal.SIGINT, previous)
        pending, _held.pending = _held.pending, 0
        if 0 < pending < FORCE_AFTER:
            _deliver(previous)


def complete(what: str, step: Callable[[], None]) -> None:
    """Run ``step`` in a :func:`critical_section` even when Ctrl-C comes just before it (a
    step that must follow what ran before, such as saving the index file when the writer lock
    is released): the step runs, then ``KeyboardInterrupt`` goes on."""
    entered = False
    try:
        with critical_section(what):
            entered = True
            step()
    except KeyboardInterrupt:
        if entered:  # during the step: deferred to its end, or forced
            raise
        with critical_section(what):
            step()
        raise


def interrupt_pending() -> bool:
    """True when Ctrl-C was pressed during the current section (it ends in KeyboardInterrupt)."""
    return _held.pending > 0


__all__ = ["FORCE_AFTER", "complete", "critical_section", "interrupt_pending"]
