"""The one clock. Everything that records or measures time calls :func:`now`, so freezegun
pins event times and durations in tests."""

from __future__ import annotations

from datetime import UTC, datetime


def now() -> datetime:
    return datetime.now(UTC)


def monotonic_ms() -> float:
    # Durations use the wall clock too, so a frozen clock gives reproducible durations.
    return now().timestamp() * 1000.0


