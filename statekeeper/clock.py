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


def timestamp(t: datetime) -> str:
    """UTC, microseconds, ``Z``: the text form of a time that statekeeper stores (backup
    manifests; the same form as the ledger's and the changelog's)."""
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
