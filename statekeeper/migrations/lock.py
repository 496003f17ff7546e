"""The target lock: the exclusive right to change one target's migrations, across processes
and hosts. How it is taken is the dialect's (PostgreSQL: a session advisory lock; SQLite:
``flock`` on a file beside the database); this is the part both share: one holder per
:class:`TargetLock`, reentrant, named after the process (and run) that holds it.

A run resumed while the target's server is down (a pgBackRest restore interrupted with the
server stopped) holds the lock *deferred*: the ledger lease is its guard until the server
accepts connections, and :meth:`TargetLock.ensure` takes the lock before anything reads or
writes the target, and again whenever the server restarted under it."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import TYPE_CHECKING, Any

from ..clock import stamp
from ..dialects.base import Held
from ..errors import TargetUnreachable

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from ..targets import Target


def process_label(run_id: str | None) -> str:
    """Who holds the lock, as a second holder is told (and PostgreSQL's application_name,
    which keeps 63 bytes)."""
    head = f"statekeeper pid={os.getpid()} host="
    tail = f" run={run_id}" if run_id else ""
    # 63 bytes: a long host name is cut, never the run id a second holder is told
    return head + socket.gethostname()[: max(0, 63 - len(head) - len(tail))] + tail


class TargetLock:
    """The lock of one target, held by one owner at a time (reentrant for that owner)."""

    def __init__(self, target: Target, clock: Callable[[], datetime],
                 connection: Callable[[], Any] | None = None) -> None:
        self.target = target
        self.clock = clock
        self.depth = 0
        self.label = process_label(None)
        self._held: Held | None = None
        # the caller's connection to take a session lock on (the run's one connection)
        self._connection = connection

    @property
    def held(self) -> bool:
        return self.depth > 0

    @contextlib.contextmanager
    def hold(self, run_id: str | None = None, *,
             on_release: Callable[[], None] | None = None,
             defer_unreachable: bool = False) -> Iterator[None]:
        """Hold the lock for the block; LockHeld naming the other holder. Inside a block that
        already holds it, a no-op. ``on_release`` runs when the outermost block ends, before
        the lock is released. ``defer_unreachable``: a server that does not accept
        connections (TargetUnreachable) does not stop the block; the lock is then taken by
        :meth:`ensure`."""
        if self.depth:
            if self._held is None:
                self.ensure()  # held in name only: whatever the inner block does needs it
            self.depth += 1
            try:
                yield
            finally:
                self.depth -= 1
            return
        if run_id:
            self.label = process_label(run_id)
        held: Held | None = None
        try:
            held = self._take()
        except TargetUnreachable:
            if not defer_unreachable:
                raise
        self.depth, self._held = 1, held
        try:
            yield
        finally:
            held, self.depth, self._held = self._held, 0, None
            try:
                if on_release is not None:
                    on_release()
            finally:
                if held is not None:
                    held.release()

    @property
    def deferred(self) -> bool:
        """Held in name only: the block runs, the lock itself is not (yet) taken."""
        return self.depth > 0 and self._held is None

    def ensure(self) -> bool:
        """Inside :meth:`hold`: really hold the lock, taking it if it was deferred or its
        session died with a server restart (TargetUnreachable while the server is still down,
        LockHeld when another process took it in between). True if it was (re)taken."""
        assert self.depth, "ensure() outside hold()"
        if self._held is not None and self._held.alive():
            return False
        old, self._held = self._held, None
        if old is not None:
            with contextlib.suppress(Exception):
                old.release()
        self._held = self._take()
        return True

    def lives_on(self, conn: Any) -> bool:
        """Is the lock held on ``conn`` (so that closing it would release the lock)?"""
        return self._held is not None and conn is not None and self._held.conn is conn

    def _take(self) -> Held:
        log.debug("taking the lock on %s", self.target.display)
        dialect = self.target.dialect
        conn = self._connection() if self._connection is not None and dialect.session_lock else None
        held = dialect.lock(self.target, self.label, stamp(self.clock()), conn)
        log.info("holding the lock on %s", self.target.display)
        return held
