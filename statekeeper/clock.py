"""The one clock. Everything that records or measures time calls :func:`now`, so freezegun
pins event times and durations in tests."""

from __future__ import annotations

import time
from datetime import UTC, datetime


def now() -> datetime:
    return datetime.now(UTC)


def monotonic_ms() -> float:
    # Monotonic, so a clock step (NTP) never makes a negative duration; freezegun freezes it too.
    return time.monotonic() * 1000.0




def format_ts(t: datetime) -> str:
    """UTC, microseconds, ``Z``: the timestamp text statekeeper stores (the ledger's form). A
    naive time is taken as UTC."""
    if t.tzinfo is None:
        t = t.replace(tzinfo=UTC)
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
