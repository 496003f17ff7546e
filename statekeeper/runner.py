"""The imperative shell: performs the step the policy names, appends its events, repeats.

Every side effect is announced by ``step.started`` committed before it runs and closed by
``step.succeeded`` or ``step.failed``. An event is applied to the in-memory run at once,
through the same :func:`statekeeper.replay.apply` that replay uses, and appended with the
events queued before it, in one commit and under one seal, at the next point that must be
durable: a ``step.started`` (before its side effect), a crashed step's verdict, a stop by a
signal, the end of the session. So one step boundary (the step's ``step.succeeded``, the state
changes the policy then makes, the next ``step.started``) is one commit. Appends carry the
run's expected stream position (optimistic concurrency). A crash loses only what had no side
effect after it: the step whose ``step.succeeded`` was still queued is in doubt, and its probe
settles it, as after a crash between its effect and that event.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ledger import NewEvent, StoredEvent, canonical, format_time

from . import clock, failpoints, interrupts, logs, progress, steps
from .errors import (
    BackupCorrupt,
    IntegrityError,
    NeedsAttention,
    StatekeeperError,
    TargetUnreachable,
    failure_fields,
)
from .files import describe_os_error
from .policy import Done, Transition, next_action
from .replay import (
    LEASE_ACQUIRED,
    LEASE_RELEASED,
    LEASE_TAKEN_OVER,
    MIGRATION_LOCK_RELEASED,
    RUN_CREATED,
    RUN_INTERRUPTED,
    RUN_RESUMED,
    STATE_CHANGED,
    STEP_FAILED,
    STEP_STARTED,
    STEP_SUCCEEDED,
    Run,
    RunEvent,
    apply,
    destination,
)
from .steps import Context, Step

if TYPE_CHECKING:
    from .lease import Holder
    from .plan import Plan
    from .session import Session
    from .why import Why

STREAM_PREFIX = "upgrade/"
# An observer that is also a statekeeper.progress.Reporter receives the steps' progress too.
Observer = Callable[[str, dict[str, Any]], None]
log = logging.getLogger(__name__)


def stream_of(run_id: str) -> str:
    return STREAM_PREFIX + run_id


def to_run_event(ev: StoredEvent) -> RunEvent:
    return RunEvent(
        ev.stream_seq,
        ev.type,
        canonical.loads(ev.payload),
        ev.recorded_at,
        ev.seq,
        canonical.loads(ev.actor),
    )


class StepFailed(Exception):
    def __init__(self, step: Step, error: str) -> None:
        super().__init__(f"{step.name}: {error}")
        self.step = step
        self.error = error


class Runner:
    """Drives one run over one :class:`~statekeeper.session.Session`."""

    def __init__(self, session: Session, observer: Observer | None = None,
                 run: Run | None = None) -> None:
        self.session = session
        self.ledger = session.ledger
        self.observe = observer or (lambda kind, data: None)
        self.run: Run | None = run
        # the run's events applied in memory but not yet appended, and the stream position
        # the ledger has
        self._queued: list[tuple[str, dict[str, Any]]] = []
        self._durable = run.position if run is not None else 0

    # -- events ------------------------------------------------------------------------------
    def emit(self, type_: str, payload: dict[str, Any], *, durable: bool = False) -> Run:
        """Apply an event to the run and queue it; with ``durable``, append it and everything
        queued before it now (one commit, one seal), before the caller goes on."""
        if self.run is None:
            self._durable = 0
        at = format_time(clock.now())  # the ledger's own stamp replaces it at the end
        ev = RunEvent((self.run.position if self.run is not None else 0) + 1, type_,
                      payload, at)
        self.run = apply(self.run, ev)  # an illegal event is refused before anything is written
        self._queued.append((type_, payload))
        logs.set_context(run_id=self.run.run_id)
        if durable:
            self.flush()
        return self.run

    def flush(self) -> None:
        """Append the queued events in one commit; the observer hears of them once they are
        in the ledger."""
        if not self._queued:
            return
        assert self.run is not None
        queued, self._queued = self._queued, []
        self.ledger.append(stream_of(self.run.run_id), [NewEvent(t, p) for t, p in queued],
                           expected_position=self._durable)
        self._durable += len(queued)
        for type_, payload in queued:
            self.observe(type_, payload)

    def resync(self) -> None:
        """The run as the ledger holds it (its stamps, seqs and actors, not the in-memory
        ones), once everything is appended."""
        assert self.run is not None and not self._queued
        run: Run | None = None
        for ev in self.ledger.read_stream(stream_of(self.run.run_id)):
            run = apply(run, to_run_event(ev))
        if run is not None:
            self.run = run

    # -- lifecycle ---------------------------------------------------------------------------
    def create(self, run_id: str, plan: Plan, why: Why | None = None) -> Run:
        self.run = None
        why_p = why.payload() if why is not None else {}
        return self.emit(RUN_CREATED, {"run_id": run_id, **plan.to_payload(), **why_p})

    def lease_events(self, previous: Holder | None, resumed: bool, mode: str,
                     why: Why | None = None) -> None:
        me = {"host": socket.gethostname(), "pid": os.getpid()}
        # a new run is recorded before anything else happens (a crash then leaves a run for
        # resume to finish); a resume's own events go with its first decision
        durable = not resumed
        if resumed:
            self.emit(RUN_RESUMED, {**me, "mode": mode, "state": self.run.state,  # type: ignore[union-attr]
                                    **(why.payload() if why is not None else {})})
        if previous is not None:
            self.emit(
                LEASE_TAKEN_OVER,
                {
                    **me,
                    "from_host": previous.host,
                    "from_pid": previous.pid,
                    # The lease store's own judgement (a reused pid, a reboot, a stale
                    # heartbeat); the host test is for holders judged before it said why.
                    "reason": previous.dead_because
                    or ("holder process is gone" if previous.host == me["host"]
                        else "holder heartbeat expired"),
                },
                durable=durable,
            )
        else:
            self.emit(LEASE_ACQUIRED, me, durable=durable)

    def release_event(self, error: str | None = None) -> None:
        if self.run is not None:
            p: dict[str, Any] = {"host": socket.gethostname(), "pid": os.getpid()}
            if error:
                p["error"] = error
            self.emit(LEASE_RELEASED, p, durable=True)
            self.resync()

    def transition(self, trigger: str, reason: str | None = None, **extra: Any) -> None:
        assert self.run is not None
        failpoints.hit("transition.before")
        to = _dest(self.run, trigger)
        payload: dict[str, Any] = {"trigger": trigger, "from": self.run.state, "to": to, **extra}
        if reason:
            payload["reason"] = reason
        self.emit(STATE_CHANGED, payload)
        log.info("state %s -> %s (%s)%s", payload["from"], to, trigger,
                 f": {reason}" if reason else "")
        failpoints.hit("transition.after")

    def drive(self) -> Run:
        """Run the policy to a terminal state. A first SIGINT/SIGTERM stops it at the next
        safe point, between steps: ``run.interrupted`` is recorded and :class:`Interrupted`
        raised (:mod:`statekeeper.interrupts`)."""
        with interrupts.guard(), progress.reporting(self.observe):
            try:
                return self._drive()
            except KeyboardInterrupt as e:
                # stopped at once: what is queued (a step that succeeded) is still true
                with contextlib.suppress(Exception):
                    self.flush()
                if isinstance(e, interrupts.StoppedAtOnce) or self.run is None:
                    raise
                open_step = self.run.open_step
                raise interrupts.StoppedAtOnce(
                    self.run.run_id, open_step.name if open_step else None) from e

    def _drive(self) -> Run:
        assert self.run is not None
        while True:
            action = next_action(self.run)
            if isinstance(action, Done):
                return self.run
            if isinstance(action, Transition):
                self.transition(action.trigger, action.reason)
                continue
            # The safe point: before the next side effect. State changes still go through, so
            # the recorded state says what the policy decided (a failure turned to rollback).
            if (signum := interrupts.requested()) is not None:
                self.interrupted(signum)
            with contextlib.suppress(StepFailed):
                # The step.failed event is in the ledger; the policy reads it and decides
                # (abort, fail, fall back to restore, give up), live and after a crash alike.
                self.step(action)

    def interrupted(self, signum: int) -> None:
        """Record the stop a signal asked for, at a safe point (no step open), and raise
        :class:`~statekeeper.interrupts.Interrupted`."""
        assert self.run is not None
        import signal

        name = signal.Signals(signum).name
        state = self.run.state
        after = self.run.steps[-1].name if self.run.steps else None
        self.emit(RUN_INTERRUPTED, {"signal": name, "state": state,
                                    "host": socket.gethostname(), "pid": os.getpid()},
                  durable=True)
        log.info("stopped by %s in state %s%s", name, state,
                    f" after step {after}" if after else "")
        raise interrupts.Interrupted(self.run.run_id, signum, state, after)

    # -- steps -------------------------------------------------------------------------------
    def step(self, step: Step) -> dict[str, Any]:
        with logs.context(step=step.name):
            return self._step(step)

    def _step(self, step: Step) -> dict[str, Any]:
        kind = step.kind
        self.ready(step)
        failpoints.hit(f"{kind}.before")
        # durable, with the previous step's end and the state changes since, before the effect
        self.emit(STEP_STARTED, {"step": step.name, "kind": kind, **step.args}, durable=True)
        log.info("step %s started", step.name)
        failpoints.hit(f"{kind}.started")
        t0 = clock.monotonic_ms()
        try:
            result = self.effect(step)
        except (StatekeeperError, OSError) as e:
            # An OSError is the environment failing the step (a backup directory unwritable or
            # gone, a disk full): the run records it and rolls back like any other failure,
            # instead of leaving the step open for a human to guess about.
            error = str(e) if isinstance(e, StatekeeperError) else describe_os_error(e)
            failed: dict[str, Any] = {
                "step": step.name,
                "kind": kind,
                "error": error,
                "duration_ms": int(clock.monotonic_ms() - t0),
                "failure": failure_fields(e),
            }
            if isinstance(e, BackupCorrupt | IntegrityError):
                failed["integrity"] = True
            # durable at once: a recorded failure decides the rest (the rollback), it is
            # never retried as if it had not happened
            self.emit(STEP_FAILED, failed, durable=True)
            log.info("step %s failed after %s: %s", step.name,
                        logs.elapsed(failed["duration_ms"]), error)
            raise StepFailed(step, error) from e
        failpoints.hit(f"{kind}.done")
        took = int(clock.monotonic_ms() - t0)
        self.emit(
            STEP_SUCCEEDED,
            {
                "step": step.name,
                "kind": kind,
                "result": result,
                "duration_ms": took,
            },
        )
        log.info("step %s succeeded in %s", step.name, logs.elapsed(took))
        return result

    def ready(self, step: Step) -> None:
        """Before a step that needs the target starts (or its probe runs): the target lock
        is really held, taken now if the run was resumed with the server down or the server
        restarted since. A server still down ends the session here, with nothing recorded:
        the run stays where it is for ``resume``."""
        assert self.run is not None
        kind = steps.kind(step.kind)
        if kind is None or not kind.needs_target(Context(self.run, self.session), step):
            return
        try:
            self.session.migrator.ensure_lock()
        except TargetUnreachable as e:
            raise TargetUnreachable(
                f"{e}: step {step.name} of run {self.run.run_id} needs the target's "
                f"server; start it, then 'statekeeper resume {self.run.run_id}'"
            ) from e
        released = self.session.migrator.release_stale_lock(self.run.run_id)
        if released is not None:
            # before the step (or its probe): the tool would otherwise wait on a lock whose
            # holder, a child of this run, is provably gone
            self.emit(MIGRATION_LOCK_RELEASED, {"step": step.name, **released})

    def effect(self, step: Step) -> dict[str, Any]:
        assert self.run is not None
        kind = steps.kind(step.kind)
        if kind is None:
            raise NeedsAttention(f"unknown step kind {step.kind!r}")
        ctx = Context(self.run, self.session, lambda: failpoints.hit(f"{step.kind}.middle"))
        return kind.effect(ctx, step)

    def settle(self) -> None:
        """Decide an in-doubt step by its kind's probe before anything is redone or
        compensated, and record the verdict."""
        run = self.run
        assert run is not None
        step = run.open_step
        if step is None:
            return
        kind = steps.kind(step.kind)
        s = Step(step.name, step.kind, step.args)
        self.ready(s)
        log.info("step %s was in doubt: asking its probe", step.name)
        with logs.context(step=step.name), progress.reporting(self.observe):
            verdict = (kind.probe(Context(run, self.session), s) if kind
                       else steps.Settled(False))
        base = {"step": step.name, "kind": step.kind}
        # the verdict is recorded at once (with the resume's own events): it is a decision
        if verdict.happened:
            self.emit(STEP_SUCCEEDED, {**base, "recovered": True, "result": verdict.result or {}},
                      durable=True)
        elif verdict.recovered:
            self.emit(STEP_FAILED, {**base, "recovered": True, "error": verdict.error},
                      durable=True)
        else:
            self.emit(STEP_FAILED, {**base, "error": verdict.error}, durable=True)


def _dest(run: Run, trigger: str) -> str:
    """Where ``trigger`` leads from the run's state, read off the machine's table."""
    from .errors import IllegalTransition

    to = destination(run.state, trigger)
    if to is None:
        raise NeedsAttention(f"run {run.run_id}: {IllegalTransition(trigger, run.state)}")
    return to
