"""Durations in configuration: a number of seconds or a string with one lower-case unit
(``"500ms"``, ``"2s"``, ``"1.5s"``, ``"1m"``, ``"1h"``), read as whole milliseconds within
bounds, with one-line errors naming the file and the key.

A module of its own (nothing but the standard library) so that :mod:`statekeeper.health`,
which runs commands through :mod:`statekeeper.procs`, and ``procs``, which prints timeouts,
share it without importing each other.
"""

from __future__ import annotations

import math
import re
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any

from .errors import ConfigError

_UNITS = {"ms": Decimal(1), "s": Decimal(1000), "m": Decimal(60_000), "h": Decimal(3_600_000)}
_DURATION = re.compile(r"\s*(\d+(?:\.\d+)?|\.\d+)\s*(ms|s|m|h)?\s*")


def format_ms(ms: int) -> str:
    """The shortest exact form: 1500 -> "1.5s", 60000 -> "1m", 250 -> "250ms"."""
    for unit in ("h", "m", "s"):
        n = Decimal(ms) / _UNITS[unit]
        if n >= 1 and n == n.quantize(Decimal("0.001")):
            return f"{n.normalize():f}{unit}"
    return f"{ms}ms"


def parse_duration(value: Any, where: str, bounds: tuple[int, int]) -> int:
    """A duration in whole milliseconds. ``where`` names the file and key for the error."""
    lo, hi = bounds
    shown = shown_value(value)
    wrong = ConfigError(
        f'{where} must be a duration such as "500ms", "2s" or "1m" (or a number of seconds), '
        f"not {shown}"
    )
    if isinstance(value, bool):
        raise wrong
    if isinstance(value, int | float):
        if isinstance(value, float) and not math.isfinite(value):
            raise wrong
        try:
            ms = Decimal(str(value)) * 1000
        except InvalidOperation as e:
            raise wrong from e
    elif isinstance(value, str):
        m = _DURATION.fullmatch(value)
        if m is None:
            raise wrong
        ms = Decimal(m.group(1)) * _UNITS[m.group(2) or "s"]
    else:
        raise wrong
    out_of_range = ConfigError(
        f"{where} must be between {format_ms(lo) if lo else '0s'} and {format_ms(hi)}, "
        f"not {shown}"
    )
    if not 0 <= ms <= hi + 1:  # before rounding: 1e300 has no whole number of milliseconds
        raise out_of_range
    whole = int(ms.quantize(Decimal(1), rounding=ROUND_HALF_UP))
    if not lo <= whole <= hi:
        raise out_of_range
    return whole


def shown_value(value: Any) -> str:
    """A value as the file spells it, cut short: the error line stays one short line."""
    if isinstance(value, bool):
        return "true" if value else "false"
    text = repr(value) if isinstance(value, str) else str(value)
    return text if len(text) <= 40 else text[:37] + "..."
