"""Replay: the state of a run is the fold of its events. Pure: no I/O, no side effects.

A live run and a replay apply events through the same :func:`apply`, driving the same
:class:`~statekeeper.machine.UpgradeMachine`, which is why they cannot disagree. A history the
machine would not allow raises :class:`HistoryError`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from . import steps
from .errors import HistoryError, IllegalTransition
from .machine import TRANSITIONS, UpgradeMachine
from .opreplay import who
from .plan import Plan, PlanError, field_problem

RUN_CREATED = "run.created"
STATE_CHANGED = "state.changed"
STEP_STARTED = "step.started"
STEP_SUCCEEDED = "step.succeeded"
STEP_FAILED = "step.failed"
LEASE_ACQUIRED = "lease.acquired"
LEASE_TAKEN_OVER = "lease.taken_over"
LEASE_RELEASED = "lease.released"
RUN_RESUMED = "run.resumed"
# Stopped at a safe point on a signal (statekeeper.interrupts): no step open, the state as it
# was; the run is for resume.
RUN_INTERRUPTED = "run.interrupted"
#: the migration tool's own lock (Liquibase's DATABASECHANGELOGLOCK) left by a dead child of
#: the run, released before the next step
MIGRATION_LOCK_RELEASED = "migrations.lock_released"
# The reason recorded when an operator turned an unfinished run around (resume --rollback).
OPERATOR_ROLLBACK = "operator chose to roll back"

# (state, trigger) -> destination, read off the machine's own table: checking an event costs a
# dict lookup, not a machine.
_DEST: dict[tuple[str, str], str] = {
    (str(src), str(t["trigger"])): str(t["dest"])
    for t in TRANSITIONS
    for src in (t["source"] if isinstance(t["source"], list) else [t["source"]])
}


def destination(state: str, trigger: str) -> str | None:
    """Where ``trigger`` leads from ``state``; None when the machine does not allow it."""
    return _DEST.get((state, trigger))


@dataclass(frozen=True)
class RunEvent:
    """A run's event as the domain sees it (the ledger's envelope stripped away)."""

    position: int  # stream_seq
    type: str
    payload: Mapping[str, Any]
    at: str  # recorded_at, fixed-precision UTC text
    seq: int = 0  # global ledger seq, for reports
    actor: Mapping[str, Any] = field(default_factory=dict)


@dataclass
class StepRecord:
    name: str
    kind: str
    status: str  # open | succeeded | failed
    attempt: int
    started_at: str
    args: dict[str, Any]
    ended_at: str | None = None
    result: dict[str, Any] | None = None
    error: str | None = None
    recovered: bool = False
    # failed because what it would act on does not match the ledger (a swapped backup):
    # retrying cannot help, a human must look
    integrity: bool = False
    duration_ms: int | None = None
    # the error's class and, for a migration, its structured fields (errors.failure_fields);
    # None for a failure recorded before steps recorded it
    failure: dict[str, Any] | None = None


@dataclass
class Run:
    run_id: str
    plan: Plan
    machine: UpgradeMachine
    created_at: str
    position: int = 0
    steps: list[StepRecord] = field(default_factory=list)
    transitions: list[dict[str, Any]] = field(default_factory=list)
    leases: list[dict[str, Any]] = field(default_factory=list)
    resumes: int = 0
    takeovers: int = 0
    last_at: str = ""
    failure: str | None = None
    phase_start: int = 0  # index in ``steps`` where the current rollback attempt began
    # "failure": undoing a failed upgrade, back to the exact state before it (restore allowed).
    # "operator": undoing a completed one that the application has used since: the schema goes
    # back, data written since stays, and the backup is restored only if the operator said so.
    rollback_mode: str = "failure"
    allow_restore: bool = True
    # An operator asked for the rollback (``rollback RUN_ID`` or ``resume --rollback``): ending
    # rolled_back is then what was asked, whichever command finishes it.
    rollback_requested: bool = False
    # Who and why (``--reason``/``--ticket`` on start; absent in runs recorded before them).
    # The OS user and host of each event are its actor (RunEvent.actor).
    reason: str | None = None
    ticket: str | None = None
    user: str | None = None  # the actor of run.created
    host: str | None = None
    # each run.resumed (resume, or the operator rollback of a completed run): at, mode,
    # state, user, host, and its own reason/ticket when given
    resumptions: list[dict[str, Any]] = field(default_factory=list)
    # each run.interrupted: at, signal, state, host, pid
    interruptions: list[dict[str, Any]] = field(default_factory=list)
    #: the migration tool's locks released (a dead child's), in order
    lock_releases: list[dict[str, Any]] = field(default_factory=list)

    @property
    def state(self) -> str:
        return self.machine.state

    @property
    def from_version(self) -> str:
        return self.plan.from_version

    @property
    def to_version(self) -> str:
        return self.plan.to_version

    @property
    def open_step(self) -> StepRecord | None:
        return self.steps[-1] if self.steps and self.steps[-1].status == "open" else None

    def succeeded(self, name: str) -> StepRecord | None:
        for s in reversed(self.steps):
            if s.name == name and s.status == "succeeded":
                return s
        return None

    def phase_steps(self) -> list[StepRecord]:
        return self.steps[self.phase_start :]

    def attempts(self, name: str) -> int:
        return sum(1 for s in self.steps if s.name == name)

    @property
    def backup(self) -> dict[str, Any] | None:
        s = self.succeeded("backup")
        return s.result if s else None

    def migrations_applied(self) -> list[str]:
        """Migrations this run applied and has not reverted, in the order applied."""
        applied: list[str] = []
        for s in self.steps:
            if s.status != "succeeded":
                continue
            if s.kind == "migrate":
                applied.append(str(s.args["migration"]))
            elif s.kind == "revert":
                mid = str(s.args["migration"])
                if mid in applied:
                    applied.remove(mid)
            elif s.kind == "restore":
                applied.clear()
        return applied

    def tags_made(self) -> list[str]:
        """Tags this run created on the target (not those that already existed), in order."""
        out: list[str] = []
        for s in self.steps:
            if s.kind != "tag" or s.status != "succeeded":
                continue
            name = str(s.args["tag"])
            made = (s.result or {}).get("created")
            if made is None:  # recorded before tag steps said so: only the new version's
                made = name == self.to_version
            if made and name not in out:
                out.append(name)
        return out

    @property
    def ended_at(self) -> str | None:
        return self.last_at if self.machine.terminal else None


def _field(p: Mapping[str, Any], key: str, kind: type | tuple[type, ...], ev: RunEvent,
           optional: bool = False) -> Any:
    problem = field_problem(p, key, kind, optional)
    if problem:
        raise HistoryError(ev.position, f"{ev.type}: {problem}", ev.seq)
    return p.get(key)


def _check_result(kind: str, r: Mapping[str, Any], ev: RunEvent) -> None:
    """What the policy reads of a step's result (each kind says what it needs)."""
    k = steps.kind(kind)
    err = k.check_result(r) if k is not None else None
    if err:
        raise HistoryError(ev.position, f"{ev.type}: {err}", ev.seq)


def _plan(p: Mapping[str, Any], ev: RunEvent) -> Plan:
    """The plan ``run.created`` recorded, with the types replay and the policy read."""
    _field(p, "run_id", str, ev)
    try:
        return Plan.from_payload(p)
    except PlanError as e:
        raise HistoryError(ev.position, f"{ev.type}: {e}", ev.seq) from e


def apply(run: Run | None, ev: RunEvent) -> Run:
    """Apply one event; return the run (created by the first event). Raises
    :class:`HistoryError` for anything it cannot apply, and then leaves ``run`` unchanged."""
    p = ev.payload
    if not isinstance(p, Mapping):
        raise HistoryError(ev.position, f"{ev.type}: payload is not an object", ev.seq)
    if run is None:
        if ev.type != RUN_CREATED or ev.position != 1:
            raise HistoryError(ev.position, f"a run must begin with {RUN_CREATED}, not {ev.type}",
                               ev.seq)
        plan = _plan(p, ev)
        reason = _field(p, "reason", str, ev, optional=True)
        ticket = _field(p, "ticket", str, ev, optional=True)
        user, host = who(ev.actor)
        return Run(
            str(p["run_id"]), plan, UpgradeMachine(), created_at=ev.at, position=1,
            last_at=ev.at, reason=reason, ticket=ticket, user=user, host=host,
        )
    if ev.position != run.position + 1:
        raise HistoryError(ev.position, f"expected event #{run.position + 1}", ev.seq)
    t = ev.type
    if t == STATE_CHANGED:
        trigger = _field(p, "trigger", str, ev)
        if p.get("from") != run.state:
            raise HistoryError(
                ev.position, f"transition from {p.get('from')!r} but run is {run.state!r}", ev.seq
            )
        if run.open_step is not None:
            raise HistoryError(
                ev.position, f"state changed while step {run.open_step.name} is open", ev.seq
            )
        to = destination(run.state, trigger)
        if to is None:
            raise HistoryError(ev.position, str(IllegalTransition(trigger, run.state)), ev.seq)
        if to != p.get("to"):
            raise HistoryError(
                ev.position, f"transition lands in {to!r}, event says {p.get('to')!r}", ev.seq
            )
        run.machine.fire(trigger)
        if run.state == "rolling_back":
            run.phase_start = len(run.steps)
            if trigger == "rollback":
                run.rollback_mode = "operator"
                run.allow_restore = bool(p.get("restore"))
        if trigger == "rollback" or p.get("requested") is True or (
            trigger in ("fail", "abort") and p.get("reason") == OPERATOR_ROLLBACK
        ):
            run.rollback_requested = True
        run.transitions.append(
            {
                "trigger": p["trigger"],
                "from": p["from"],
                "to": p["to"],
                "at": ev.at,
                "reason": p.get("reason"),
            }
        )
        if trigger in ("fail", "abort", "rollback_failed") and p.get("reason"):
            run.failure = str(p["reason"])
    elif t == STEP_STARTED:
        name = _field(p, "step", str, ev)
        kind = _field(p, "kind", str, ev)
        k = steps.kind(kind)
        if k is None:
            raise HistoryError(ev.position, f"unknown step kind {kind!r}", ev.seq)
        for arg in k.args:
            _field(p, arg, str, ev)
        if run.open_step is not None:
            raise HistoryError(
                ev.position, f"step {name} started while {run.open_step.name} is open", ev.seq
            )
        if run.machine.terminal:
            raise HistoryError(ev.position, f"step started in terminal state {run.state}", ev.seq)
        run.steps.append(
            StepRecord(
                name=name,
                kind=kind,
                status="open",
                attempt=run.attempts(name) + 1,
                started_at=ev.at,
                args={k: v for k, v in p.items() if k not in ("step", "kind")},
            )
        )
    elif t in (STEP_SUCCEEDED, STEP_FAILED):
        step = run.open_step
        if step is None or step.name != p.get("step"):
            raise HistoryError(ev.position, f"{t} for {p.get('step')!r}, which is not open",
                               ev.seq)
        result = _field(p, "result", Mapping, ev, optional=True)
        if t == STEP_SUCCEEDED:
            _check_result(step.kind, result or {}, ev)
        error = _field(p, "error", str, ev) if t == STEP_FAILED else None
        duration = _field(p, "duration_ms", int, ev, optional=True)
        step.status = "succeeded" if t == STEP_SUCCEEDED else "failed"
        step.ended_at = ev.at
        step.result = dict(result or {}) if t == STEP_SUCCEEDED else None
        step.error = error
        step.recovered = bool(p.get("recovered"))
        step.integrity = bool(p.get("integrity"))
        step.duration_ms = duration
        failure = _field(p, "failure", Mapping, ev, optional=True) if t == STEP_FAILED else None
        step.failure = None if failure is None else dict(failure)
    elif t in (LEASE_ACQUIRED, LEASE_TAKEN_OVER, LEASE_RELEASED):
        run.leases.append({"type": t, "at": ev.at, **p})
        if t == LEASE_TAKEN_OVER:
            run.takeovers += 1
    elif t == MIGRATION_LOCK_RELEASED:
        run.lock_releases.append({"at": ev.at, **p})
    elif t == RUN_RESUMED:
        why = {k: _field(p, k, str, ev, optional=True) for k in ("reason", "ticket")}
        user, host = who(ev.actor)
        run.resumptions.append({"at": ev.at, "mode": p.get("mode"), "state": p.get("state"),
                                "user": user, "host": host,
                                **{k: v for k, v in why.items() if v is not None}})
        run.resumes += 1
    elif t == RUN_INTERRUPTED:
        sig = _field(p, "signal", str, ev)
        if run.open_step is not None:
            raise HistoryError(
                ev.position, f"interrupted while step {run.open_step.name} is open", ev.seq
            )
        if run.machine.terminal:
            raise HistoryError(ev.position, f"interrupted in terminal state {run.state}", ev.seq)
        run.interruptions.append({"at": ev.at, "signal": sig, "state": run.state,
                                  "host": p.get("host"), "pid": p.get("pid")})
    elif t == RUN_CREATED:
        raise HistoryError(ev.position, "a run is created only once", ev.seq)
    else:
        raise HistoryError(ev.position, f"unknown event type {t!r}", ev.seq)
    run.position = ev.position
    run.last_at = ev.at
    return run


def replay(events: Iterable[RunEvent]) -> Run:
    run: Run | None = None
    for ev in events:
        run = apply(run, ev)
    if run is None:
        raise HistoryError(0, "no events")
    return run
