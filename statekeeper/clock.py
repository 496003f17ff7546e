"""The clock and the timestamp format of the ``statekeeper`` package. Everything that records
or measures time calls :func:`now` (so freezegun pins event times and durations in tests), and
every time statekeeper stores as text (changelog rows, manifests, leases) is :func:`stamp`'s
form: UTC, microseconds, ``Z`` -- the same form as the ledger's ``recorded_at``. (The ledger
package keeps its own, identical, clock: it knows nothing of statekeeper.)"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime

Clock = Callable[[], datetime]

FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"


def now() -> datetime:
    return datetime.now(UTC)


def stamp(t: datetime | None = None) -> str:
    """``t`` (default: now) as stored text; a naive time is taken to be UTC."""
    if t is None:
        t = now()
    elif t.tzinfo is None:
        t = t.replace(tzinfo=UTC)
    return t.astimezone(UTC).strftime(FORMAT)


def parse(text: object) -> datetime | None:
    """A stored time back (any ISO 8601 form; naive is UTC); None if it is not one."""
    try:
        t = datetime.fromisoformat(text)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return t if t.tzinfo is not None else t.replace(tzinfo=UTC)


def monotonic_ms() -> float:
    # Monotonic, so a clock step (NTP) never makes a negative duration; freezegun freezes it too.
    return time.monotonic() * 1000.0
