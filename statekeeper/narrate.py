"""A run's events as an operator wants to read them: one line per event worth a line.

Pure: returns text; the CLI and the demo decide where it goes.
"""

from __future__ import annotations

import re
from typing import Any

from . import steps
from .logs import elapsed

_DRIVER = re.compile(r"^([A-Za-z][A-Za-z0-9]*)\+[A-Za-z0-9_]+://")


def shown_url(key: str) -> str:
    """A recorded target (the normalized key, password already redacted) as an operator
    wrote it: the scheme without SQLAlchemy's driver (``postgresql+psycopg://`` ->
    ``postgresql://``)."""
    return _DRIVER.sub(r"\1://", key)


def narrate(kind: str, p: dict[str, Any]) -> str | None:
    if kind == "run.created":
        return (
            f"run {p['run_id']}: {p['application']} {p['from_version']} -> "
            f"{p['to_version']} on {shown_url(p['target'])}"
        )
    if kind == "run.resumed":
        if p["mode"] == "rollback" and p["state"] == "completed":  # `statekeeper rollback`
            return f"rolling back a completed run on {p['host']} pid {p['pid']}"
        return f"resuming ({p['mode']}) from state {p['state']} on {p['host']} pid {p['pid']}"
    if kind == "lease.taken_over":
        return (
            f"took over the lease from dead pid {p['from_pid']} on {p['from_host']} ({p['reason']})"
        )
    if kind == "migrations.lock_released":
        return (f"released Liquibase's DATABASECHANGELOGLOCK ({p['lockedby']}, since "
                f"{p['lockgranted']}) left by dead pid {p['pid']} ({p['command']})")
    if kind == "state.changed":
        why = f": {p['reason']}" if p.get("reason") and p["trigger"] != "begin" else ""
        return f"  [{p['from']} -> {p['to']}]{why}"
    if kind == "run.interrupted":
        return f"  stopped by {p['signal']} in state {p['state']}, before the next step"
    if kind == "step.succeeded":
        tag = " (settled after a crash: it had happened)" if p.get("recovered") else ""
        return f"    ok    {p['step']}{_describe(p)}{tag}{_ms(p)}"
    if kind == "step.failed":
        if p.get("recovered"):
            return f"    redo  {p['step']} (interrupted by a crash before it took effect)"
        return f"    FAIL  {p['step']}: {p['error']}{_ms(p)}"
    return None


def _ms(p: dict[str, Any]) -> str:
    return f"  [{elapsed(p['duration_ms'])}]" if p.get("duration_ms") is not None else ""


def _describe(p: dict[str, Any]) -> str:
    k = steps.kind(str(p.get("kind")))
    return k.describe(p.get("result") or {}) if k is not None else ""
