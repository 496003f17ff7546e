"""``statekeeper report``: audit reports replayed from the verified ledger.

- :mod:`.model` is pure (the standard library only): the report's entries, built from
  replayed runs (:mod:`statekeeper.replay`) and operations (:mod:`statekeeper.opreplay`);
- :mod:`.source` is the shell: it verifies the ledger, then reads it stream by stream;
- the renderers are the edge: :mod:`.render_json` and :mod:`.render_csv` write as they read
  (a million events in a bounded memory), :mod:`.render_html` (Jinja2) and :mod:`.render_pdf`
  (fpdf2) hold the entries of the report, which are its pages anyway.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import ConfigError
from .model import SCHEMA_VERSION, TimeZone
from .source import Scope

if TYPE_CHECKING:
    from ledger import Checkpoint, Ledger

FORMATS = ("html", "pdf", "csv", "json")
__all__ = ["FORMATS", "SCHEMA_VERSION", "ReportResult", "Scope", "TimeZone", "parse_range",
           "parse_tz", "write_report"]


@dataclass(frozen=True)
class ReportResult:
    path: Path
    format: str
    ok: bool  # the ledger verified
    first_bad_seq: int | None
    reason: str | None
    message: str
    entries: int
    unreadable: int


def parse_tz(name: str | None) -> TimeZone:
    if name is None or name.upper() == "UTC":
        return TimeZone()
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        return TimeZone(ZoneInfo(name), name)
    except (ZoneInfoNotFoundError, ValueError) as e:
        raise ConfigError(f"--tz {name}: no such time zone (an IANA name such as "
                          "Europe/Berlin, or UTC)") from e


_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


def _when(value: str, option: str, tz: TimeZone, end: bool) -> datetime:
    try:
        t = datetime.fromisoformat(value.strip())
    except ValueError as e:
        raise ConfigError(f"{option} {value}: not a date (YYYY-MM-DD) or an ISO 8601 time") from e
    if t.tzinfo is None:
        t = t.replace(tzinfo=tz.zone)
    if end and _DATE.fullmatch(value.strip()):
        t += timedelta(days=1)  # --until a date includes that whole day
    return t.astimezone(UTC)


def parse_range(since: str | None, until: str | None,
                tz: TimeZone) -> tuple[datetime | None, datetime | None]:
    """``--since`` is inclusive, ``--until`` exclusive, except that a date alone includes its
    whole day; a time without an offset is in ``--tz``'s zone."""
    s = _when(since, "--since", tz, end=False) if since else None
    u = _when(until, "--until", tz, end=True) if until else None
    if s is not None and u is not None and s >= u:
        raise ConfigError(f"--since {since} is not before --until {until}")
    return s, u


def write_report(lg: Ledger, fmt: str, out: Path, *, scope: Scope, tz: TimeZone,
                 generated_at: str, against: Checkpoint | None = None,
                 against_file: str | None = None, tool: str = "") -> ReportResult:
    """Verify ``lg``, replay it and write the report to ``out`` (0600, atomically). It is
    written whether or not the ledger verified: the result says which."""
    from .. import files
    from .source import open_report

    if fmt not in FORMATS:
        raise ConfigError(f"--format {fmt}: must be one of {', '.join(FORMATS)}")
    if not out.parent.is_dir():
        raise ConfigError(f"--out {out}: directory {out.parent} does not exist")
    report = open_report(lg, tz=tz, scope=scope, generated_at=generated_at, against=against,
                         against_file=against_file, tool=tool)
    try:
        with files.atomic_file(out) as f:
            if fmt == "json":
                from .render_json import write_json

                write_json(report, f)
            elif fmt == "csv":
                from .render_csv import write_csv

                write_csv(report, f)
            elif fmt == "html":
                from .render_html import write_html

                write_html(report, f)
            else:
                from .render_pdf import write_pdf

                f.flush()
                write_pdf(report, f.buffer)  # type: ignore[attr-defined]
                f.buffer.flush()  # type: ignore[attr-defined]
    except OSError as e:
        raise ConfigError(f"--out {out}: cannot write: {e.strerror or e}") from e
    s = report.summary
    integrity = report.header["integrity"]
    return ReportResult(out, fmt, report.ok, integrity["first_bad_seq"], integrity["reason"],
                        integrity["message"], sum(s.runs.values()) + sum(s.ops.values()),
                        s.runs["unreadable"] + s.ops["unreadable"])
