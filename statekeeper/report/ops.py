"""Operations (``ops/<op_id>`` streams) for the report. PURE: the standard library only.

TO BE REPLACED by the ops replay once the ops part of issue 10 lands (branch ops10): this is
a small reader of the event formats of /work/notes/issue10-spec.md ("Operations"), written so
the report has something to read until then. It folds ``op.created``, the step events and
``op.ended`` into the report's entry; anything it cannot read makes the operation
*unreadable* (shown as such, never dropped). An operation without ``op.ended`` is
"interrupted" (the process died).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .model import (
    TimeZone,
    backup_of,
    between_ms,
    migrations_of,
    step_entry,
    unreadable_entry,
    who,
)

STREAM_PREFIX = "ops/"
OP_CREATED = "op.created"
OP_ENDED = "op.ended"


@dataclass
class OpEvent:
    position: int  # stream_seq
    type: str
    payload: Mapping[str, Any]
    at: str
    seq: int
    actor: Mapping[str, Any]


@dataclass
class _Step:
    name: str
    kind: str
    attempt: int
    started_at: str
    args: dict[str, Any]
    status: str = "open"
    ended_at: str | None = None
    result: dict[str, Any] | None = None
    error: str | None = None
    duration_ms: int | None = None
    recovered: bool = False
    integrity: bool = False


class OpUnreadable(Exception):
    def __init__(self, seq: int, reason: str) -> None:
        super().__init__(reason)
        self.seq = seq
        self.reason = reason


@dataclass
class _Op:
    created: Mapping[str, Any]
    created_at: str
    actor: Mapping[str, Any]
    steps: list[_Step] = field(default_factory=list)
    ended: Mapping[str, Any] | None = None
    ended_at: str | None = None
    last_at: str = ""


def _fold(events: Iterable[OpEvent]) -> _Op:
    op: _Op | None = None
    for ev in events:
        p = ev.payload
        if not isinstance(p, Mapping):
            raise OpUnreadable(ev.seq, f"{ev.type}: payload is not an object")
        if op is None:
            if ev.type != OP_CREATED or ev.position != 1:
                raise OpUnreadable(ev.seq, f"an operation must begin with {OP_CREATED}, "
                                   f"not {ev.type}")
            if not isinstance(p.get("op"), str):
                raise OpUnreadable(ev.seq, f"{OP_CREATED}: field 'op' missing or not text")
            op = _Op(p, ev.at, ev.actor, last_at=ev.at)
            continue
        if op.ended is not None:
            raise OpUnreadable(ev.seq, f"{ev.type} after {OP_ENDED}")
        open_ = op.steps[-1] if op.steps and op.steps[-1].status == "open" else None
        if ev.type == "step.started":
            if open_ is not None:
                raise OpUnreadable(ev.seq, f"step started while {open_.name} is open")
            name, kind = p.get("step"), p.get("kind")
            if not isinstance(name, str) or not isinstance(kind, str):
                raise OpUnreadable(ev.seq, "step.started: field 'step' or 'kind' missing")
            op.steps.append(_Step(name, kind, 1 + sum(s.name == name for s in op.steps), ev.at,
                                  {k: v for k, v in p.items() if k not in ("step", "kind")}))
        elif ev.type in ("step.succeeded", "step.failed"):
            if open_ is None or open_.name != p.get("step"):
                raise OpUnreadable(ev.seq, f"{ev.type} for {p.get('step')!r}, which is not open")
            open_.status = "succeeded" if ev.type == "step.succeeded" else "failed"
            open_.ended_at = ev.at
            r = p.get("result")
            open_.result = dict(r) if isinstance(r, Mapping) else None
            open_.error = p.get("error") if isinstance(p.get("error"), str) else None
            d = p.get("duration_ms")
            open_.duration_ms = d if isinstance(d, int) else None
            open_.recovered = bool(p.get("recovered"))
            open_.integrity = bool(p.get("integrity"))
        elif ev.type == OP_ENDED:
            if p.get("outcome") not in ("succeeded", "failed"):
                raise OpUnreadable(ev.seq, f"{OP_ENDED}: outcome {p.get('outcome')!r}")
            op.ended, op.ended_at = p, ev.at
        else:
            raise OpUnreadable(ev.seq, f"unknown event type {ev.type!r}")
        op.last_at = ev.at
    if op is None:
        raise OpUnreadable(0, "no events")
    return op


def op_entry(tz: TimeZone, op_id: str, events: list[OpEvent]) -> dict[str, Any]:
    """The report's entry for one operation (or an unreadable one)."""
    try:
        op = _fold(events)
    except OpUnreadable as e:
        first = events[0] if events else None
        return unreadable_entry(tz, "operation", op_id, e.reason, e.seq,
                                first.at if first else None, first.actor if first else None)
    c = op.created
    end = op.ended
    outcome = "interrupted" if end is None else str(end["outcome"])
    errors = [{"step": s.name, "at": tz.iso(s.ended_at), "message": s.error}
              for s in op.steps if s.status == "failed" and s.error]
    if end is not None and isinstance(end.get("error"), str):
        errors.append({"step": None, "at": tz.iso(op.ended_at), "message": end["error"]})
    backup = next((backup_of(s.result) for s in op.steps
                   if s.kind == "backup" and s.status == "succeeded"), None)
    restore = None
    for s in op.steps:
        if s.kind == "restore" and s.status == "succeeded":
            r = s.result or {}
            restore = {"backup_id": r.get("backup_id") or s.args.get("backup_id"),
                       "fingerprint_before": _digest(r, "before"),
                       "fingerprint_after": _digest(r, "after"),
                       "undone": [str(x) for x in r.get("undone") or []]}
    args = c.get("args")
    return {
        "type": "operation",
        "id": op_id,
        "readable": True,
        "op": str(c["op"]),
        "state": outcome,
        "outcome": outcome,
        "target": c.get("target") if isinstance(c.get("target"), str) else None,
        "args": dict(args) if isinstance(args, Mapping) else {},
        "who": who(op.actor),
        "reason": c.get("reason") if isinstance(c.get("reason"), str) else None,
        "ticket": c.get("ticket") if isinstance(c.get("ticket"), str) else None,
        "confirmed": c.get("confirmed") if isinstance(c.get("confirmed"), str) else None,
        "version": c.get("version") if isinstance(c.get("version"), str) else None,
        "started_at": tz.iso(op.created_at),
        "ended_at": tz.iso(op.ended_at),
        "duration_ms": (end.get("duration_ms") if end is not None
                        and isinstance(end.get("duration_ms"), int)
                        else between_ms(op.created_at, op.ended_at)),
        "steps": [step_entry(tz, s.name, s.kind, s.attempt, s.status, s.started_at, s.ended_at,
                             s.duration_ms, s.args, s.result, s.error, s.recovered,
                             s.integrity) for s in op.steps],
        "backup": backup,
        "restore": restore,
        "migrations": migrations_of(tz, op.steps),
        "errors": errors,
        "problem": None,
    }


def _digest(r: Mapping[str, Any], which: str) -> str | None:
    for key in (f"fingerprint_{which}", f"{which}_digest", which):
        v = r.get(key)
        if isinstance(v, str):
            return v
        if isinstance(v, Mapping) and isinstance(v.get("digest"), str):
            return str(v["digest"])
    return None
