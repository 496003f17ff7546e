"""Ctrl-C (SIGINT) and SIGTERM while a run is driven: stop at the next safe point.

While :func:`guard` is active (the runner's :meth:`~statekeeper.runner.Runner.drive`), the
first SIGINT or SIGTERM only asks for a stop: the step that runs goes on to its end (its
``step.succeeded`` / ``step.failed`` is recorded), then the runner records ``run.interrupted``
and raises :class:`Interrupted`, with the lease released and the run resumable. A tool that
runs (pg_dump, a health check command) is left to finish: it runs in its own session, out of
reach of the terminal's Ctrl-C.

A second signal stops at once, as before there was a guard: SIGINT raises KeyboardInterrupt
where the process is, SIGTERM ends it by SIGTERM; the tools it runs are stopped
(:mod:`statekeeper.children`), the step stays open, and ``resume`` settles it by its probe as
after a crash.

Only the main thread can receive signals; elsewhere the guard does nothing.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
from collections.abc import Iterator
from types import FrameType
from typing import Any

from .errors import EXIT_INTERRUPTED, EXIT_TERMINATED

log = logging.getLogger("statekeeper.interrupts")

SIGNALS = (signal.SIGINT, signal.SIGTERM)
EXIT_FOR_SIGNAL = {signal.SIGINT: EXIT_INTERRUPTED, signal.SIGTERM: EXIT_TERMINATED}


class Interrupted(BaseException):
    """A run stopped at a safe point on a signal; ``run.interrupted`` is recorded and the run
    is resumable. Outside the error tree, as KeyboardInterrupt is: nothing failed."""

    def __init__(self, run_id: str, signum: int, state: str, after: str | None) -> None:
        self.run_id = run_id
        self.signum = signum
        self.state = state
        self.after = after  # the last step that ended, if any
        super().__init__(self.message())

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.signum).name

    @property
    def exit_code(self) -> int:
        return EXIT_FOR_SIGNAL.get(signal.Signals(self.signum), 128 + self.signum)

    @property
    def commands(self) -> dict[str, str]:
        """The commands that finish and undo the run (a rollback under way only finishes)."""
        out = {"finish": f"statekeeper resume {self.run_id}"}
        if self.state != "rolling_back":
            out["undo"] = f"statekeeper resume {self.run_id} --rollback"
        return out

    def message(self) -> str:
        where = f" after step {self.after}" if self.after else ""
        c = self.commands
        if "undo" in c:
            todo = f"finish it with '{c['finish']}' or undo it with '{c['undo']}'"
        else:
            todo = f"its rollback goes on with '{c['finish']}'"
        return (f"interrupted ({self.signal_name}): run {self.run_id} stopped at a safe point"
                f"{where} (state {self.state}); {todo}")


class StoppedAtOnce(KeyboardInterrupt):
    """The second Ctrl-C: the run stopped where it was, its step (if one ran) left open for
    ``resume`` to settle by its probe, as after a crash."""

    def __init__(self, run_id: str, step: str | None) -> None:
        self.run_id = run_id
        self.step = step
        doubt = f", step {step} in doubt" if step else ""
        super().__init__(f"interrupted at once: run {run_id} stopped where it was{doubt}; "
                         f"'statekeeper resume {run_id}' settles it and goes on (or "
                         f"'statekeeper resume {run_id} --rollback')")


class Terminated(BaseException):
    """A SIGTERM that must stop the process now (the second one, or one while a guarded tool
    runs with no guard): whoever holds children stops them, then the process dies of it."""


def die_of_sigterm() -> None:  # pragma: no cover - the signal ends the process
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(10)


_requested: int | None = None
_depth = 0


def requested() -> int | None:
    """The signal that asked for a stop, if one did (inside a guard)."""
    return _requested


def guarded() -> bool:
    """Is a guard deciding what SIGTERM does (so that a tool runner must not take it over)?"""
    return _depth > 0


def _on_signal(signum: int, frame: FrameType | None) -> None:
    global _requested
    if _requested is None:
        _requested = signum
        name = signal.Signals(signum).name
        again = "Ctrl-C" if signum == signal.SIGINT else "SIGTERM"
        log.warning("%s received: stopping after the current step (%s again stops at once; "
                    "the run is then resumed as after a crash)", name, again)
        return
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    raise Terminated


@contextlib.contextmanager
def guard() -> Iterator[None]:
    """Inside, the first SIGINT/SIGTERM is a request (see :func:`requested`); the second
    stops at once."""
    global _requested, _depth
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old: dict[int, Any] = {}
    if _depth == 0:
        _requested = None
        old = {s: signal.signal(s, _on_signal) for s in SIGNALS}
    _depth += 1
    try:
        yield
    except Terminated:
        die_of_sigterm()
        raise
    finally:
        _depth -= 1
        if _depth == 0:
            for s, h in old.items():
                signal.signal(s, h)
            _requested = None
