"""How the documents (HTML, PDF) show times, durations and what was not recorded. Pure."""

from __future__ import annotations

from datetime import datetime
from typing import Any

NOT_RECORDED = "not recorded"


def when(iso: str | None) -> str:
    """``2024-05-01 14:00:00.123 +02:00`` (milliseconds shown; the offset always)."""
    if not iso:
        return "-"
    t = datetime.fromisoformat(iso)
    off = t.strftime("%z")
    return f"{t:%Y-%m-%d %H:%M:%S}.{t.microsecond // 1000:03d} {off[:3]}:{off[3:]}"


def size(n: Any) -> str:
    """A size in bytes as everywhere else (:func:`statekeeper.sizes.size_text`)."""
    from ..sizes import size_text

    return size_text(n) if isinstance(n, int) and not isinstance(n, bool) else shown(n)


def duration(ms: int | None) -> str:
    if ms is None:
        return "-"
    if ms < 1000:
        return f"{ms} ms"
    s = ms / 1000
    if s < 60:
        return f"{s:.1f} s"
    m, sec = divmod(round(s), 60)
    if m < 60:
        return f"{m} min {sec:02d} s"
    h, m = divmod(m, 60)
    return f"{h} h {m:02d} min"


def shown(value: Any) -> str:
    """A value for a document: None is "not recorded" (an older history never had it)."""
    if value is None or value == "":
        return NOT_RECORDED
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def who(w: dict[str, Any] | None) -> str:
    w = w or {}
    if not w.get("user") and not w.get("host"):
        return NOT_RECORDED
    return f"{w.get('user') or '?'}@{w.get('host') or '?'}"


def timeline(entry: dict[str, Any]) -> list[dict[str, Any]]:
    """Bars for a run's steps: offset and width in percent of the run's span."""
    steps = [s for s in entry.get("steps") or [] if s.get("started_at")]
    if not steps:
        return []
    start = datetime.fromisoformat(steps[0]["started_at"])
    ends = [datetime.fromisoformat(s["ended_at"] or s["started_at"]) for s in steps]
    end = max([*ends, datetime.fromisoformat(steps[-1]["started_at"])])
    span = max((end - start).total_seconds(), 0.001)
    bars = []
    for s, e in zip(steps, ends, strict=True):
        t0 = (datetime.fromisoformat(s["started_at"]) - start).total_seconds()
        width = max((e - datetime.fromisoformat(s["started_at"])).total_seconds() / span * 100,
                    0.4)
        bars.append({"name": s["name"], "outcome": s["outcome"],
                     "left": round(min(t0 / span * 100, 99.6), 2),
                     "width": round(min(width, 100 - t0 / span * 100), 2) or 0.4})
    return bars
