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


