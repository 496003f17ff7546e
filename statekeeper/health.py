"""Health checks by SQL against the target, with retries and a timeout per attempt.

``[health] checks = [{name = "users readable", sql = "SELECT count(*) > 0 FROM users",
expect = "true"}]``. A check passes when its query runs and, if ``expect`` is given, the first
column of the first row, as text (booleans lower-case), equals it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from .errors import ConfigError, TargetError
from .targets import Target, first_line


def validate_checks(checks: list[Any], source: str) -> list[dict[str, Any]]:
    out = []
    for i, c in enumerate(checks):
        if not isinstance(c, dict) or not isinstance(c.get("sql"), str):
            raise ConfigError(f'{source}: [health] checks[{i}] needs a sql = "..." string')
        unknown = set(c) - {"name", "sql", "expect"}
        if unknown:
            raise ConfigError(
                f"{source}: [health] checks[{i}] has unknown key {sorted(unknown)[0]}"
            )
        out.append(
            {
                "name": str(c.get("name") or f"check {i + 1}"),
                "sql": c["sql"],
                "expect": None if c.get("expect") is None else str(c["expect"]),
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
    retries: int = 3,
    interval: float = 1.0,
    timeout_s: int = 10,
    hook: Callable[[], None] | None = None,
) -> dict[str, Any]:
    results = []
    for n, check in enumerate(checks):
        if n == 1 and hook:
            hook()
        last = ""
        for attempt in range(1, retries + 1):
            try:
                got = _run_one(target, check["sql"], timeout_s)
                if check["expect"] is None or got == check["expect"]:
                    results.append({"name": check["name"], "ok": True, "attempts": attempt})
                    break
                # the value itself stays out of the ledger: it may be application data
                last = "returned a value other than the one expected"
            except TargetError as e:
                last = str(e)
            if attempt < retries:
                time.sleep(interval)
        else:
            raise TargetError(f"health check {check['name']!r} failed: {last}")
    if len(checks) < 2 and hook:
        hook()
    return {"checks": results}


def _run_one(target: Target, sql: str, timeout_s: int) -> str:
    conn = target.connect(autocommit=True)
    try:
        if target.backend == "postgresql":
            conn.execute(f"SET statement_timeout = {int(timeout_s) * 1000}")
        cur = conn.execute(sql)
        row = cur.fetchone()
        return _as_text(row[0]) if row else ""
    except Exception as e:  # driver errors of either backend
        if isinstance(e, TargetError):
            raise
        raise TargetError(first_line(e)) from e
    finally:
        conn.close()
