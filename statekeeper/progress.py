"""The progress seam: how the code doing long work (a fingerprint reading table after table, a
backup tool writing its artifact, a restore) says how far it got, without printing.

The work reports through :func:`task`; whoever wants to show it installs a :class:`Reporter`
for the duration of a verb with :func:`reporting` (the runner does so for an observer that is
also a Reporter). Nobody listening costs one context-variable lookup per task. A context
variable, not a parameter: the readers sit four or five calls below the verbs (verb, runner,
step kind, backup manager, method, dialect), and threading a parameter through each of
those signatures would change every backup method and dialect for a display concern.

The library never renders: :mod:`cli.progress` does, on a terminal only.
"""

from __future__ import annotations

import contextlib
import itertools
import time
from collections.abc import Iterator
from contextvars import ContextVar
from typing import IO, Protocol, runtime_checkable


@runtime_checkable
class Reporter(Protocol):
    """Receives the progress of long work. ``key`` tells concurrent tasks apart (a
    fingerprint read while pg_dump writes); ``total`` is None when unknown; ``unit`` is
    ``"rows"``, ``"bytes"``, ``"tables"`` or ``"%"``."""

    def task_started(self, key: str, label: str, total: int | None, unit: str) -> None: ...

    def task_advanced(self, key: str, done: int, total: int | None) -> None: ...

    def task_ended(self, key: str) -> None: ...


_reporter: ContextVar[Reporter | None] = ContextVar("statekeeper_progress", default=None)
_keys = itertools.count(1)
# At most this many updates a second reach the reporter: a reader calls update() per batch of
# rows, which can be thousands a second.
_MIN_INTERVAL_S = 0.1


class Task:
    """One piece of long work, as the code doing it sees it."""

    def __init__(self, reporter: Reporter | None, key: str, total: int | None) -> None:
        self._reporter = reporter
        self.key = key
        self.total = total
        self.done = 0
        self._last = 0.0
        self._sent: int | None = None  # the last ``done`` the reporter was told

    def update(self, done: int, total: int | None = None) -> None:
        """``done`` so far (absolute); ``total`` when it became known."""
        self.done = done
        if total is not None:
            self.total = total
        if self._reporter is None:
            return
        now = time.monotonic()
        if now - self._last >= _MIN_INTERVAL_S or (self.total is not None
                                                   and done >= self.total):
            self._last = now
            self._sent = done
            self._reporter.task_advanced(self.key, done, self.total)

    def flush(self) -> None:
        """Tell the reporter the last count if a throttled update held it back."""
        if self._reporter is not None and self._sent != self.done and (
                self._sent is not None or self.done):
            self._sent = self.done
            self._reporter.task_advanced(self.key, self.done, self.total)

    def advance(self, n: int = 1) -> None:
        self.update(self.done + n)


@contextlib.contextmanager
def task(label: str, total: int | None = None, unit: str = "") -> Iterator[Task]:
    """Report a piece of work while the block runs (ended however the block ends)."""
    reporter = _reporter.get()
    t = Task(reporter, f"t{next(_keys)}", total)
    if reporter is None:
        yield t
        return
    reporter.task_started(t.key, label, total, unit)
    try:
        yield t
    finally:
        t.flush()
        reporter.task_ended(t.key)


@contextlib.contextmanager
def reporting(reporter: object) -> Iterator[None]:
    """Send the progress of the work done in the block to ``reporter`` if it is a
    :class:`Reporter` (anything else, None included, leaves the current one in place)."""
    if not isinstance(reporter, Reporter):
        yield
        return
    token = _reporter.set(reporter)
    try:
        yield
    finally:
        _reporter.reset(token)


def copy(src: IO[bytes], dst: IO[bytes], label: str, total: int | None = None,
         chunk: int = 1 << 20) -> int:
    """``shutil.copyfileobj`` reporting the bytes copied; returns their number."""
    done = 0
    with task(label, total, "bytes") as t:
        while block := src.read(chunk):
            dst.write(block)
            done += len(block)
            t.update(done)
    return done


def active() -> bool:
    """Is anyone listening (worth, say, a query for a total)?"""
    return _reporter.get() is not None
