"""Replay: the state of a run is the fold of its events. Pure: no I/O, no side effects.

A live run and a replay apply events through the same :func:`apply`, driving the same
:class:`~statekeeper.machine.UpgradeMachine`, which is why they cannot disagree. A history the
machine would not allow raises :class:`HistoryError`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .machine import IllegalTransition, UpgradeMachine

RUN_CREATED = "run.created"
STATE_CHANGED = "state.changed"
STEP_STARTED = "step.started"
STEP_SUCCEEDED = "step.succeeded"
STEP_FAILED = "step.failed"
LEASE_ACQUIRED = "lease.acquired"
LEASE_TAKEN_OVER = "lease.taken_over"
LEASE_RELEASED = "lease.released"
RUN_RESUMED = "run.resumed"

class HistoryError(Exception):
    """The run's events describe something the machine does not allow."""

    def __init__(self, position: int, message: str) -> None:
        super().__init__(f"event #{position}: {message}")
        self.position = position


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
    duration_ms: int | None = None


@dataclass
class Run:
    run_id: str
    plan: dict[str, Any]
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

    @property
    def state(self) -> str:
        return self.machine.state

    @property
    def from_version(self) -> str:
        return str(self.plan.get("from_version") or "")

    @property
    def to_version(self) -> str:
        return str(self.plan.get("to_version") or "")

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

    @property
    def ended_at(self) -> str | None:
        return self.last_at if self.machine.terminal else None


def apply(run: Run | None, ev: RunEvent) -> Run:
    """Apply one event; return the run (created by the first event)."""
    p = ev.payload
    if run is None:
        if ev.type != RUN_CREATED or ev.position != 1:
            raise HistoryError(ev.position, f"a run must begin with {RUN_CREATED}, not {ev.type}")
        return Run(
            str(p["run_id"]), dict(p), UpgradeMachine(), created_at=ev.at, position=1, last_at=ev.at
        )
    if ev.position != run.position + 1:
        raise HistoryError(ev.position, f"expected event #{run.position + 1}")
    run.position = ev.position
    run.last_at = ev.at
    t = ev.type
    if t == STATE_CHANGED:
        if p.get("from") != run.state:
            raise HistoryError(
                ev.position, f"transition from {p.get('from')!r} but run is {run.state!r}"
            )
        if run.open_step is not None:
            raise HistoryError(
                ev.position, f"state changed while step {run.open_step.name} is open"
            )
        try:
            run.machine.fire(str(p["trigger"]))
        except IllegalTransition as e:
            raise HistoryError(ev.position, str(e)) from e
        if run.state != p.get("to"):
            raise HistoryError(
                ev.position, f"transition lands in {run.state!r}, event says {p.get('to')!r}"
            )
        if run.state == "rolling_back":
            run.phase_start = len(run.steps)
            if p["trigger"] == "rollback":
                run.rollback_mode = "operator"
                run.allow_restore = bool(p.get("restore"))
        run.transitions.append(
            {
                "trigger": p["trigger"],
                "from": p["from"],
                "to": p["to"],
                "at": ev.at,
                "reason": p.get("reason"),
            }
        )
        if p["trigger"] in ("fail", "abort", "rollback_failed") and p.get("reason"):
            run.failure = str(p["reason"])
    elif t == STEP_STARTED:
        if run.open_step is not None:
            raise HistoryError(
                ev.position, f"step {p.get('step')} started while {run.open_step.name} is open"
            )
        if run.machine.terminal:
            raise HistoryError(ev.position, f"step started in terminal state {run.state}")
        run.steps.append(
            StepRecord(
                name=str(p["step"]),
                kind=str(p["kind"]),
                status="open",
                attempt=run.attempts(str(p["step"])) + 1,
                started_at=ev.at,
                args={k: v for k, v in p.items() if k not in ("step", "kind")},
            )
        )
    elif t in (STEP_SUCCEEDED, STEP_FAILED):
        step = run.open_step
        if step is None or step.name != p.get("step"):
            raise HistoryError(ev.position, f"{t} for {p.get('step')!r}, which is not open")
        step.status = "succeeded" if t == STEP_SUCCEEDED else "failed"
        step.ended_at = ev.at
        step.result = dict(p.get("result") or {}) if t == STEP_SUCCEEDED else None
        step.error = str(p["error"]) if t == STEP_FAILED else None
        step.recovered = bool(p.get("recovered"))
        step.duration_ms = p.get("duration_ms")
    elif t in (LEASE_ACQUIRED, LEASE_TAKEN_OVER, LEASE_RELEASED):
        run.leases.append({"type": t, "at": ev.at, **p})
        if t == LEASE_TAKEN_OVER:
            run.takeovers += 1
    elif t == RUN_RESUMED:
        run.resumes += 1
    elif t == RUN_CREATED:
        raise HistoryError(ev.position, "a run is created only once")
    else:
        raise HistoryError(ev.position, f"unknown event type {t!r}")
    return run


def replay(events: Iterable[RunEvent]) -> Run:
    run: Run | None = None
    for ev in events:
        run = apply(run, ev)
    if run is None:
        raise HistoryError(0, "no events")
    return run
