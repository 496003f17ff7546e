"""Replay of an operation: a change made through statekeeper outside an upgrade (``backup
create/restore/prune``, ``migrate up/down/tag/baseline``, ``keys rotate``, ``init``) is the
fold of its stream ``ops/<op_id>``. Pure: stdlib only, no I/O, no side effects (the report
imports it).

The stream holds, in order: ``op.created`` (what, on which target, with which arguments, why,
how it was confirmed), the steps (``step.started`` / ``step.succeeded`` / ``step.failed``,
exactly the run's step events) and ``op.ended`` (outcome, error, duration). A crash leaves an
operation without ``op.ended``: its :attr:`Operation.status` is ``interrupted``.

:func:`apply` takes any event with the attributes of :class:`statekeeper.replay.RunEvent`
(``position``, ``type``, ``payload``, ``at``, ``seq``, ``actor``) and raises
:class:`~statekeeper.errors.HistoryError` for what it cannot apply. The operation names and
step kinds are not checked against a list (nothing acts on an operation's history: it is
only read), their payloads' structure is.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from .errors import HistoryError
from .plan import field_problem

STREAM_PREFIX = "ops/"
OP_CREATED = "op.created"
OP_ENDED = "op.ended"
STEP_STARTED = "step.started"
STEP_SUCCEEDED = "step.succeeded"
STEP_FAILED = "step.failed"

#: the operations this version records (``op.created`` ``op``)
OPS = ("backup.create", "backup.restore", "backup.prune", "migrate.up", "migrate.down",
       "migrate.tag", "migrate.baseline", "keys.rotate", "init", "rehearse")
#: the ones that discard data, which ask for confirmation (``confirmed``)
DESTRUCTIVE = ("backup.restore", "backup.prune", "migrate.down")
CONFIRMATIONS = ("prompt", "--yes")
OUTCOMES = ("succeeded", "failed")


def stream_of(op_id: str) -> str:
    return STREAM_PREFIX + op_id


class Event(Protocol):
    @property
    def position(self) -> int: ...
    @property
    def type(self) -> str: ...
    @property
    def payload(self) -> Mapping[str, Any]: ...
    @property
    def at(self) -> str: ...
    @property
    def seq(self) -> int: ...
    @property
    def actor(self) -> Mapping[str, Any]: ...


@dataclass
class OpStep:
    """One step of an operation, as the run's :class:`statekeeper.replay.StepRecord`."""

    name: str
    kind: str
    status: str  # open | succeeded | failed
    started_at: str
    args: dict[str, Any]
    seq: int = 0  # ledger seq of its step.started
    attempt: int = 1  # 1 + the steps of the same name before it
    ended_at: str | None = None
    result: dict[str, Any] | None = None
    error: str | None = None
    duration_ms: int | None = None


@dataclass
class Operation:
    op_id: str
    op: str  # one of OPS
    target: str | None  # the target's display URL (password redacted); None: no target
    args: dict[str, Any]  # the operation's arguments (backup_id, to_tag, to, new_key_id...)
    version: str  # the statekeeper version that recorded it
    created_at: str  # recorded_at of op.created (UTC text)
    reason: str | None = None
    ticket: str | None = None
    confirmed: str | None = None  # "prompt" | "--yes" (destructive ones); None otherwise
    user: str | None = None  # OS user and host of op.created's actor
    host: str | None = None
    actor: dict[str, Any] = field(default_factory=dict)  # op.created's whole actor
    first_seq: int = 0  # ledger seq of op.created
    position: int = 0  # stream_seq of the last event applied
    last_seq: int = 0
    last_at: str = ""
    steps: list[OpStep] = field(default_factory=list)
    outcome: str | None = None  # "succeeded" | "failed" from op.ended; None without one
    error: str | None = None  # op.ended's error (failed only)
    ended_at: str | None = None
    duration_ms: int | None = None

    @property
    def status(self) -> str:
        """``succeeded`` or ``failed`` (op.ended), else ``interrupted``: a crash left it
        without an end (or, read while it runs, it has not ended yet)."""
        return self.outcome or "interrupted"

    @property
    def open_step(self) -> OpStep | None:
        return self.steps[-1] if self.steps and self.steps[-1].status == "open" else None

    def succeeded(self, kind: str) -> list[OpStep]:
        return [s for s in self.steps if s.kind == kind and s.status == "succeeded"]

    @property
    def backup(self) -> dict[str, Any] | None:
        """The backup step's result (backup_id, method, size, sha256, fingerprint)."""
        done = self.succeeded("backup")
        return done[-1].result if done else None

    @property
    def restore(self) -> dict[str, Any] | None:
        """The restore step's result (backup_id, method, size, sha256, fingerprint_before,
        fingerprint_after, undone)."""
        done = self.succeeded("restore")
        return done[-1].result if done else None

    def backups_pruned(self) -> list[str]:
        """The backups a ``backup.prune`` deleted (its ``prune`` steps that succeeded)."""
        return [str(s.args.get("backup_id")) for s in self.succeeded("prune")]

    def migrations_applied(self) -> list[str]:
        return [str(s.args.get("migration")) for s in self.succeeded("migrate")]

    def migrations_reverted(self) -> list[str]:
        return [str(s.args.get("migration")) for s in self.succeeded("revert")]


def _field(p: Mapping[str, Any], key: str, kind: type | tuple[type, ...], ev: Event,
           optional: bool = False) -> Any:
    problem = field_problem(p, key, kind, optional)
    if problem:
        raise HistoryError(ev.position, f"{ev.type}: {problem}", ev.seq)
    return p.get(key)


def who(actor: Any) -> tuple[str | None, str | None]:
    """The OS user and host of an event's actor (text, or None)."""
    a = actor if isinstance(actor, Mapping) else {}
    user, host = a.get("user"), a.get("host")
    return (user if isinstance(user, str) else None, host if isinstance(host, str) else None)


def apply(op: Operation | None, ev: Event) -> Operation:
    """Apply one event; return the operation (created by the first). Raises
    :class:`HistoryError` for anything it cannot apply."""
    p = ev.payload
    if not isinstance(p, Mapping):
        raise HistoryError(ev.position, f"{ev.type}: payload is not an object", ev.seq)
    actor = dict(ev.actor) if isinstance(ev.actor, Mapping) else {}
    if op is None:
        if ev.type != OP_CREATED or ev.position != 1:
            raise HistoryError(ev.position, f"an operation must begin with {OP_CREATED}, not "
                               f"{ev.type}", ev.seq)
        confirmed = _field(p, "confirmed", (str, type(None)), ev, optional=True)
        if confirmed is not None and confirmed not in CONFIRMATIONS:
            raise HistoryError(ev.position, f"{ev.type}: confirmed {confirmed!r} is not one of "
                               f"{', '.join(CONFIRMATIONS)}", ev.seq)
        user, host = who(actor)
        return Operation(
            op_id=_field(p, "op_id", str, ev),
            op=_field(p, "op", str, ev),
            target=_field(p, "target", (str, type(None)), ev),
            args=dict(_field(p, "args", Mapping, ev)),
            version=_field(p, "version", str, ev),
            created_at=ev.at,
            reason=_field(p, "reason", str, ev, optional=True),
            ticket=_field(p, "ticket", str, ev, optional=True),
            confirmed=confirmed,
            user=user, host=host, actor=actor,
            first_seq=ev.seq, position=1, last_seq=ev.seq, last_at=ev.at,
        )
    if ev.position != op.position + 1:
        raise HistoryError(ev.position, f"expected event #{op.position + 1}", ev.seq)
    if op.outcome is not None:
        raise HistoryError(ev.position, f"{ev.type} after {OP_ENDED}", ev.seq)
    t = ev.type
    if t == STEP_STARTED:
        name = _field(p, "step", str, ev)
        kind = _field(p, "kind", str, ev)
        if op.open_step is not None:
            raise HistoryError(ev.position, f"step {name} started while "
                               f"{op.open_step.name} is open", ev.seq)
        op.steps.append(OpStep(name, kind, "open", ev.at,
                               {k: v for k, v in p.items() if k not in ("step", "kind")},
                               seq=ev.seq,
                               attempt=1 + sum(s.name == name for s in op.steps)))
    elif t in (STEP_SUCCEEDED, STEP_FAILED):
        step = op.open_step
        if step is None or step.name != p.get("step"):
            raise HistoryError(ev.position, f"{t} for {p.get('step')!r}, which is not open",
                               ev.seq)
        result = _field(p, "result", Mapping, ev, optional=True)
        step.status = "succeeded" if t == STEP_SUCCEEDED else "failed"
        step.ended_at = ev.at
        step.result = dict(result or {}) if t == STEP_SUCCEEDED else None
        step.error = _field(p, "error", str, ev) if t == STEP_FAILED else None
        step.duration_ms = _field(p, "duration_ms", int, ev, optional=True)
    elif t == OP_ENDED:
        outcome = _field(p, "outcome", str, ev)
        if outcome not in OUTCOMES:
            raise HistoryError(ev.position, f"{t}: outcome {outcome!r} is not one of "
                               f"{', '.join(OUTCOMES)}", ev.seq)
        if op.open_step is not None:
            raise HistoryError(ev.position, f"{t} while step {op.open_step.name} is open",
                               ev.seq)
        op.outcome = outcome
        op.error = _field(p, "error", str, ev) if outcome == "failed" else None
        op.duration_ms = _field(p, "duration_ms", int, ev, optional=True)
        op.ended_at = ev.at
    elif t == OP_CREATED:
        raise HistoryError(ev.position, "an operation is created only once", ev.seq)
    else:
        raise HistoryError(ev.position, f"unknown event type {t!r}", ev.seq)
    op.position = ev.position
    op.last_seq = ev.seq
    op.last_at = ev.at
    return op


def replay(events: Iterable[Event], op_id: str | None = None) -> Operation:
    """The operation the events make; ``op_id`` (its stream's): ``op.created`` must name it.
    HistoryError for anything that cannot be applied, and for no events at all."""
    op: Operation | None = None
    for ev in events:
        op = apply(op, ev)
        if op_id is not None and op.position == 1 and op.op_id != op_id:
            raise HistoryError(1, f"{OP_CREATED} names operation {op.op_id!r}", ev.seq)
    if op is None:
        raise HistoryError(0, "no events")
    return op
