"""What the library logs, and the redaction every log line goes through.

The library logs through stdlib :mod:`logging` under ``statekeeper.*`` (and ``ledger.*``) and
configures nothing: no handler, no level (the CLI does, :mod:`cli.logs`). What an operator
needs is logged: each step started and ended with its duration, state changes, child tools'
argument vectors, connection attempts, lease and lock waits, a requested stop.

Secrets never reach a log: :class:`RedactFilter`, which the CLI puts on every handler, masks
passwords in URLs (``postgresql://u:***@h/db``, ``?password=***``), in libpq conninfo strings
and ``NAME=value`` pairs (``password=***``, ``PGPASSWORD=***``), and every value registered with
:func:`register_secret` (the configuration's secrets: :func:`secrets_of`), wherever it
appears. It reuses the masking of ``statekeeper config show`` (:mod:`statekeeper.showconfig`).

:func:`context` names the run and step a record belongs to (``run_id``, ``step`` attributes on
every record logged inside it), for the JSON format.
"""

from __future__ import annotations

import contextlib
import logging
import re
import shlex
from collections.abc import Iterator, Mapping, Sequence
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

from .masking import MASK, SECRET_WORDS, mask_url

if TYPE_CHECKING:
    from .config import Config

_SECRET_WORDS = "|".join(SECRET_WORDS)
# scheme://anything-up-to-white-space-or-a-quote: a URL inside a message or an argv
_URL = re.compile(r"\b[A-Za-z][A-Za-z0-9+.\-]*://[^\s'\"<>]+")
# NAME=value and NAME = 'quoted value' in conninfo strings, environments and argv
_PAIR = re.compile(
    rf"(?i)(\b[\w.-]*(?:{_SECRET_WORDS})[\w.-]*\s*[=:]\s*)('(?:[^'\\]|\\.)*'|\"[^\"]*\"|[^\s,;&]+)")

# The library configures no output; without these, Python's last-resort handler would print
# its warnings to the stderr of whoever embeds it.
for _root in ("statekeeper", "ledger"):
    logging.getLogger(_root).addHandler(logging.NullHandler())

_secrets: set[str] = set()
_context: ContextVar[dict[str, str]] = ContextVar("statekeeper_log_context", default={})  # noqa: B039


def register_secret(value: str | None) -> None:
    """Mask ``value`` wherever it appears in a log line from now on (too short a value would
    mask ordinary words: values under 4 characters are masked only where they are named)."""
    if value and len(value) >= 4:
        _secrets.add(value)
        if (decoded := unquote(value)) != value:
            _secrets.add(decoded)


def secrets_of(cfg: Config) -> list[str]:
    """The secret values of a configuration: URL passwords (target, ledger, any URL in it)
    and every value under a key that names a secret, after ``${VAR}`` interpolation."""
    found: list[str] = []

    def url_password(text: str) -> None:
        with contextlib.suppress(ValueError):
            pw = urlsplit(text).password
            if pw:
                found.append(pw)

    def walk(value: Any, key: str) -> None:
        if isinstance(value, Mapping):
            for k, v in value.items():
                walk(v, str(k))
        elif isinstance(value, list | tuple):
            for v in value:
                walk(v, key)
        elif isinstance(value, str):
            if re.search(_SECRET_WORDS, key, re.I):
                found.append(value)
            elif "://" in value:
                url_password(value)

    walk(cfg.raw, "")
    for url in (cfg.target_url, cfg.ledger.url):
        if url:
            url_password(url)
    return found


def redact(text: str) -> str:
    """``text`` with every password and registered secret masked."""
    for s in sorted(_secrets, key=len, reverse=True):
        if s in text:
            text = text.replace(s, MASK)
    text = _URL.sub(lambda m: mask_url(m.group(0)), text)
    return _PAIR.sub(lambda m: m.group(1) + MASK, text)


def argv_text(argv: Sequence[str]) -> str:
    """An argument vector as one shell-quoted, redacted line (for a log record)."""
    return redact(shlex.join(str(a) for a in argv))


class RedactFilter(logging.Filter):
    """Masks secrets in a record's message, its arguments, its exception text and the
    run/step context, before any handler formats it."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: show it as it came, masked
            message = f"{record.msg} {record.args}"
        record.msg = redact(message)
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        record.exc_info = None  # the masked exc_text is what is shown
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


class ContextFilter(logging.Filter):
    """Adds ``run_id`` and ``step`` (None outside a run or step) to every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        ctx = _context.get()
        for k in ("run_id", "step"):
            if not hasattr(record, k):
                setattr(record, k, ctx.get(k))
        return True


@contextlib.contextmanager
def context(**values: str | None) -> Iterator[None]:
    """Records logged inside carry these (``run_id=..., step=...``) besides the outer ones."""
    token = _context.set({**_context.get(), **{k: v for k, v in values.items() if v}})
    try:
        yield
    finally:
        _context.reset(token)


def clear_context() -> None:
    """Forget the run and step of earlier work in this thread (a new command begins)."""
    _context.set({})


def set_context(**values: str | None) -> None:
    """Like :func:`context`, for the rest of the current context (a run id learnt midway)."""
    _context.set({**_context.get(), **{k: v for k, v in values.items() if v}})


def elapsed(duration_ms: int | float) -> str:
    """A duration for a log line: ``850 ms``, ``12.3 s``, ``4 min 05 s``."""
    d = float(duration_ms)
    if d < 1000:
        return f"{d:.0f} ms"
    if d < 60_000:
        return f"{d / 1000:.1f} s"
    m, s = divmod(int(d // 1000), 60)
    return f"{m} min {s:02d} s"

