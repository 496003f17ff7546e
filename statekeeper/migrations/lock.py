"""The target lock: the exclusive right to change one target's migrations, across processes
and hosts. How it is taken is the dialect's (PostgreSQL: a session advisory lock; SQLite:
``flock`` on a file beside the database); this is the part both share: one holder per
:class:`TargetLock`, reentrant, named after the process (and run) that holds it."""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import TYPE_CHECKING

from ..clock import stamp
from ..dialects.base import Release

if TYPE_CHECKING:
    from ..targets import Target


def process_label(run_id: str | None) -> str:
    """Who holds the lock, as a second holder is told (and PostgreSQL's application_name,
    which keeps 63 bytes)."""
    label = f"statekeeper pid={os.getpid()} host={socket.gethostname()}"
    if run_id:
        label += f" run={run_id}"
    return label[:63]


class TargetLock:
    """The lock of one target, held by one owner at a time (reentrant for that owner)."""

    def __init__(self, target: Target, clock: Callable[[], datetime]) -> None:
        self.target = target
        self.clock = clock
        self.depth = 0
        self.label = process_label(None)
        self._release: Release | None = None

    @property
    def held(self) -> bool:
        return self.depth > 0

    @contextlib.contextmanager
    def hold(self, run_id: str | None = None, *,
             on_release: Callable[[], None] | None = None) -> Iterator[None]:
        """Hold the lock for the block; LockHeld naming the other holder. Inside a block that
        already holds it, a no-op. ``on_release`` runs when the outermost block ends, before
        the lock is released."""
        if self.depth:
            self.depth += 1
            try:
                yield
            finally:
                self.depth -= 1
            return
        if run_id:
            self.label = process_label(run_id)
        release = self.target.dialect.lock(self.target, self.label, stamp(self.clock()))
        self.depth, self._release = 1, release
        try:
            yield
        finally:
            self.depth, self._release = 0, None
            try:
                if on_release is not None:
                    on_release()
            finally:
                release()
