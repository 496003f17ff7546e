"""Where the library's log records go: the global ``-v``/``-q``, ``--log-format`` and
``--log-file`` options of the root group.

* stderr: warnings only by default (so that a command's stderr is its error line and its
  warnings, as before there was logging), ``-v`` info, ``-vv`` debug, ``-q`` errors only.
  Human lines: ``2026-12-03T15:04:05.123Z WARNING statekeeper.runner: message``.
* ``--log-format json``: one JSON object per line (``ts``, ``level``, ``logger``, ``message``,
  plus ``run_id`` and ``step`` where known, ``exc`` for an exception), for log shippers; it
  applies to stderr and to the file.
* ``--log-file PATH``: appended to, created 0600; at least info (what an operator looks for
  afterwards), debug with ``-vv``; ``-q`` does not quieten it.

Every handler masks secrets first (:class:`statekeeper.logs.RedactFilter`).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import IO, Any

from statekeeper.errors import ConfigError
from statekeeper.logs import ContextFilter, RedactFilter, clear_context

ROOTS = ("statekeeper", "ledger")
FORMATS = ("text", "json")
_installed: list[tuple[logging.Logger, logging.Handler]] = []
_files: list[IO[str]] = []


def _iso(record: logging.LogRecord) -> str:
    t = time.gmtime(record.created)
    return time.strftime("%Y-%m-%dT%H:%M:%S", t) + f".{int(record.msecs):03d}Z"


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        where = "".join(f" [{k} {v}]" for k in ("run_id", "step")
                        if (v := getattr(record, k, None)))
        line = f"{_iso(record)} {record.levelname} {record.name}{where}: {record.getMessage()}"
        if record.exc_text:
            line += "\n" + record.exc_text
        return line


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {"ts": _iso(record), "level": record.levelname,
                               "logger": record.name, "message": record.getMessage()}
        for k in ("run_id", "step"):
            if (v := getattr(record, k, None)) is not None:
                out[k] = v
        if record.exc_text:
            out["exc"] = record.exc_text
        return json.dumps(out, ensure_ascii=False, sort_keys=True)


def stderr_level(verbose: int, quiet: bool) -> int:
    if quiet:
        return logging.ERROR
    return {0: logging.WARNING, 1: logging.INFO}.get(verbose, logging.DEBUG)


def open_log_file(path: Path) -> IO[str]:
    """``path`` opened to append, created 0600 (made 0600 if it was not), never through a
    symlink; ConfigError naming the flag when it cannot be."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW
                     | os.O_CLOEXEC, 0o600)
    except OSError as e:
        raise ConfigError(f"--log-file {path}: cannot open: {e.strerror or e}") from e
    try:
        os.fchmod(fd, 0o600)
    except OSError as e:
        os.close(fd)
        raise ConfigError(f"--log-file {path}: cannot make it private (0600): "
                          f"{e.strerror or e}") from e
    return os.fdopen(fd, "a", encoding="utf-8", buffering=1)


class _Stderr(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is when a record comes (a test runner's capture, a
    progress display's redirection), never to a stream left over from an earlier command."""

    def __init__(self) -> None:
        super().__init__()

    @property
    def stream(self) -> IO[str]:
        return sys.stderr

    @stream.setter
    def stream(self, value: IO[str]) -> None:
        pass


def configure(verbose: int = 0, quiet: bool = False, fmt: str = "text",
              log_file: Path | None = None) -> None:
    """Install the handlers on the ``statekeeper`` and ``ledger`` loggers (replacing those of
    an earlier call: the tests invoke the CLI many times in one process)."""
    reset()
    clear_context()
    formatter: logging.Formatter = JsonFormatter() if fmt == "json" else TextFormatter()
    err = _Stderr()
    err.setLevel(stderr_level(verbose, quiet))
    handlers: list[logging.Handler] = [err]
    if log_file is not None:
        f = open_log_file(log_file)
        _files.append(f)
        fh = logging.StreamHandler(f)
        fh.setLevel(logging.DEBUG if verbose >= 2 else logging.INFO)
        handlers.append(fh)
    for h in handlers:
        h.setFormatter(formatter)
        h.addFilter(ContextFilter())
        h.addFilter(RedactFilter())
    lowest = min(h.level for h in handlers)
    for name in ROOTS:
        lg = logging.getLogger(name)
        lg.setLevel(lowest)
        lg.propagate = False  # an embedding application's root handlers would print twice
        for h in handlers:
            lg.addHandler(h)
            _installed.append((lg, h))


def reset() -> None:
    """Remove what :func:`configure` installed (closing the log file)."""
    while _installed:
        lg, h = _installed.pop()
        lg.removeHandler(h)
    while _files:
        _files.pop().close()
