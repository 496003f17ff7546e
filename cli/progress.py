"""A run's progress as the operator sees it: the observer of its events and the renderer of
the steps' progress (:class:`statekeeper.progress.Reporter`).

* On a terminal: the narrated lines (:mod:`statekeeper.narrate`), ``ok`` green, ``FAIL`` red
  and ``redo`` yellow on a colour terminal, and below them a live display (rich) of the step
  that runs with its elapsed time and the work inside it (a fingerprint table by table, the
  backup's artifact growing, a restore) with rows or bytes done where the tool tells us.
* Not on a terminal (a pipe, a CI log): the narrated lines only, one per step with its
  duration; no colour, no control characters.
* ``-q``: nothing (the command's last line and its errors remain).

``NO_COLOR`` (any value) turns colour off, ``TERM=dumb`` the live display. The stream is the
caller's: stdout by default, stderr when stdout carries JSON.
"""

from __future__ import annotations

import atexit
import os
import sys
from typing import IO, Any

import click

from statekeeper.narrate import narrate

_STYLES = {"ok": "green", "FAIL": "bold red", "redo": "yellow"}


def _quiet_from_context() -> bool:
    ctx = click.get_current_context(silent=True)
    return bool(getattr(ctx.obj if ctx is not None else None, "quiet", False))


class Progress:
    """Prints a run's events as an operator wants to read them, and shows the progress of the
    step that runs on a terminal."""

    def __init__(self, stream: IO[str] | None = None, *, quiet: bool | None = None,
                 color: bool | None = None, live: bool | None = None) -> None:
        self.stream = stream if stream is not None else sys.stdout
        self.quiet = _quiet_from_context() if quiet is None else quiet
        tty = _isatty(self.stream)
        self.color = (tty and "NO_COLOR" not in os.environ) if color is None else color
        self.live = (tty and os.environ.get("TERM") != "dumb" and not self.quiet
                     if live is None else live)
        self._console: Any = None
        self._bars: Any = None
        self._step: Any = None  # the rich task of the step that runs
        self._tasks: dict[str, Any] = {}

    # -- the run's events --------------------------------------------------------------------
    def __call__(self, kind: str, p: dict[str, Any]) -> None:
        if self.quiet:
            return
        if kind == "step.started" and self.live:
            self._start_step(str(p.get("step")))
        elif kind in ("step.succeeded", "step.failed"):
            self._end_step()
        line = narrate(kind, p)
        if line is not None:
            self.line(line)
        if kind == "lease.released":  # the last event of a session
            self.close()

    def line(self, text: str) -> None:
        if self._console is None and not (self.live or self.color):
            click.echo(text, file=self.stream)
            return
        from rich.text import Text

        t = Text(text)
        word = text.split()[0] if text.strip() else ""
        if self.color and word in _STYLES:
            at = text.index(word)
            t.stylize(_STYLES[word], at, at + len(word))
        self.console().print(t, soft_wrap=True)

    # -- statekeeper.progress.Reporter -------------------------------------------------------
    def task_started(self, key: str, label: str, total: int | None, unit: str) -> None:
        if not self.live or self.quiet:
            return
        bars = self.bars()
        self._tasks[key] = bars.add_task(label, total=total, unit=unit, shown="")
        bars.refresh()

    def task_advanced(self, key: str, done: int, total: int | None) -> None:
        task = self._tasks.get(key)
        if task is None:
            return
        unit = self._bars.tasks[self._bars.task_ids.index(task)].fields.get("unit", "")
        self._bars.update(task, completed=done, total=total, shown=_amount(done, total, unit))
        self._bars.refresh()  # the library already sends at most ten updates a second

    def task_ended(self, key: str) -> None:
        task = self._tasks.pop(key, None)
        if task is not None:
            self._bars.remove_task(task)

    # -- rendering ---------------------------------------------------------------------------
    def console(self) -> Any:
        if self._console is None:
            from rich.console import Console

            self._console = Console(file=self.stream, no_color=not self.color,
                                    highlight=False, soft_wrap=True,
                                    force_terminal=self.live or self.color or None)
        return self._console

    def bars(self) -> Any:
        if self._bars is None:
            from rich.progress import (
                BarColumn,
                SpinnerColumn,
                TextColumn,
                TimeElapsedColumn,
            )
            from rich.progress import (
                Progress as Bars,
            )

            self._bars = Bars(SpinnerColumn(), TextColumn("{task.description}"),
                              BarColumn(bar_width=24), TextColumn("{task.fields[shown]}"),
                              TimeElapsedColumn(), console=self.console(), transient=True)
            self._bars.start()
            atexit.register(self.close)
        return self._bars

    def _start_step(self, name: str) -> None:
        self._end_step()
        self._step = self.bars().add_task(name, total=None, unit="", shown="")

    def _end_step(self) -> None:
        if self._step is not None and self._bars is not None:
            self._bars.remove_task(self._step)
        self._step = None
        for key in list(self._tasks):
            self.task_ended(key)

    def close(self) -> None:
        """Stop the live display (idempotent)."""
        self._end_step()
        if self._bars is not None:
            self._bars.stop()
            self._bars = None


def _isatty(stream: IO[str]) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def _amount(done: int, total: int | None, unit: str) -> str:
    if unit == "bytes":
        from rich.filesize import decimal

        return decimal(done) + (f" of {decimal(total)}" if total else "")
    if unit == "%":
        return f"{done}%"
    of = f"/{total:,}" if total else ""
    return f"{done:,}{of} {unit}".rstrip()
