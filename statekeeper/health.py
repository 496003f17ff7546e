"""Health checks by SQL against the target, with retries and a timeout per attempt.

``[health] checks = [{name = "users readable", sql = "SELECT count(*) > 0 FROM users",
expect = "true"}]``. A check passes when its query runs and, if ``expect`` is given, the first
column of the first row, as text (booleans lower-case), equals it.

``retries`` (default 2) is how many more times a failing check is tried after its first
attempt, ``interval`` (default 1s) the pause between attempts and ``timeout`` (default 10s) the
limit on each attempt's query. Durations are a number of seconds or a string with a unit:
``"500ms"``, ``"2s"``, ``"1.5s"``, ``"1m"``. Each check carries the values it runs with, so the
runner passes nothing but the list.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Mapping
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any

from .errors import ConfigError, StatekeeperError, TargetError

if TYPE_CHECKING:  # validating [health] runs at every configuration load: keep it light
    from .targets import Target

DEFAULT_RETRIES = 2
DEFAULT_INTERVAL_MS = 1_000
DEFAULT_TIMEOUT_MS = 10_000
# Bounds: a health check runs while writers are stopped for the upgrade; more than a hundred
# retries or a ten-minute pause is a typo, not a policy. The timeout has millisecond
# resolution and must be positive (0 would disable PostgreSQL's statement_timeout).
RETRIES_MAX = 100
INTERVAL_MS = (0, 600_000)
TIMEOUT_MS = (1, 3_600_000)

_UNITS = {"ms": Decimal(1), "s": Decimal(1000), "m": Decimal(60_000), "h": Decimal(3_600_000)}
_DURATION = re.compile(r"\s*(\d+(?:\.\d+)?|\.\d+)\s*(ms|s|m|h)?\s*")
_CHECK_KEYS = ("name", "sql", "expect")


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
    shown = _shown(value)
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


def parse_retries(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= RETRIES_MAX:
        raise ConfigError(
            f"{where} must be an integer from 0 to {RETRIES_MAX}, not {_shown(value)}"
        )
    return value


def _shown(value: Any) -> str:
    """A value as the file spells it, cut short: the error line stays one short line."""
    if isinstance(value, bool):
        return "true" if value else "false"
    text = repr(value) if isinstance(value, str) else str(value)
    return text if len(text) <= 40 else text[:37] + "..."


def validate_health(section: Mapping[str, Any], source: str) -> list[dict[str, Any]]:
    """The ``[health]`` table, validated: each check with the retries, interval and timeout
    it runs with. Errors are one line naming the file and the key."""
    retries = parse_retries(section.get("retries", DEFAULT_RETRIES), f"{source}: [health] retries")
    interval = parse_duration(section.get("interval", DEFAULT_INTERVAL_MS / 1000),
                              f"{source}: [health] interval", INTERVAL_MS)
    timeout = parse_duration(section.get("timeout", DEFAULT_TIMEOUT_MS / 1000),
                             f"{source}: [health] timeout", TIMEOUT_MS)
    checks = section.get("checks", [])
    if not isinstance(checks, list):
        raise ConfigError(f"{source}: [health] checks must be a list of tables")
    return [
        {**c, "retries": retries, "interval_ms": interval, "timeout_ms": timeout}
        for c in validate_checks(checks, source)
    ]


def validate_checks(checks: list[Any], source: str) -> list[dict[str, Any]]:
    out = []
    for i, c in enumerate(checks):
        where = f"{source}: [health] checks[{i}]"
        if not isinstance(c, dict) or not isinstance(c.get("sql"), str):
            raise ConfigError(f'{where} needs a sql = "..." string')
        unknown = set(c) - set(_CHECK_KEYS)
        if unknown:
            raise ConfigError(f"{where} has unknown key {sorted(unknown)[0]}")
        if not c["sql"].strip():
            # an empty query "succeeds" without looking at anything
            raise ConfigError(f"{where} sql is empty")
        name = c.get("name")
        if name is not None and not isinstance(name, str):
            raise ConfigError(f"{where} name must be a string")
        expect = c.get("expect")
        if expect is not None and not isinstance(expect, str | int | bool):
            raise ConfigError(f"{where} expect must be a string, an integer or a boolean")
        out.append(
            {
                "name": name or f"check {i + 1}",
                "sql": c["sql"],
                # compared as text the way the result is: expect = true matches a boolean true
                "expect": None if expect is None else _as_text(expect),
            }
        )
    return out


def _as_text(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return "" if v is None else str(v)


def run_checks(
    target: Target,
    checks: list[dict[str, Any]],
    *,
    retries: int = DEFAULT_RETRIES,
    interval_ms: int = DEFAULT_INTERVAL_MS,
    timeout_ms: int = DEFAULT_TIMEOUT_MS,
    hook: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """Run every check in order; the first that fails all its attempts fails the step. The
    keyword values apply to checks that do not carry their own (see :func:`validate_health`)."""
    results = []
    for n, check in enumerate(checks):
        if n == 1 and hook:
            hook()
        tries = int(check.get("retries", retries)) + 1
        pause = int(check.get("interval_ms", interval_ms)) / 1000
        limit = int(check.get("timeout_ms", timeout_ms))
        last = ""
        for attempt in range(1, tries + 1):
            try:
                got = _run_one(target, check["sql"], limit)
                if check["expect"] is None or got == check["expect"]:
                    results.append({"name": check["name"], "ok": True, "attempts": attempt})
                    break
                # the value itself stays out of the ledger: it may be application data
                last = "returned a value other than the one expected"
            except TargetError as e:
                last = str(e)
            if attempt < tries:
                time.sleep(pause)
        else:
            times = "1 attempt" if tries == 1 else f"{tries} attempts"
            raise TargetError(f"health check {check['name']!r} failed after {times}: {last}")
    if len(checks) < 2 and hook:
        hook()
    return {"checks": results}


def _run_one(target: Target, sql: str, timeout_ms: int) -> str:
    try:
        row = target.dialect.health_query(target, sql, timeout_ms)
    except TimeoutError as e:
        raise TargetError(f"timed out after {format_ms(timeout_ms)}") from e
    except StatekeeperError:  # no connection (TargetError), no database file (ConfigError)
        raise
    except Exception as e:  # the driver's error, whichever the backend
        from .dialects.base import first_line

        raise TargetError(first_line(e)) from e
    return _as_text(row[0]) if row else ""
