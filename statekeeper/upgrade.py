"""Orchestration of upgrade runs: plan, start, resume, rollback, status, history.

Each of ``start``, ``resume`` and ``rollback`` opens one :class:`~statekeeper.session.Session`,
verifies the ledger before acting, takes the lease and the target lock, and hands the session
to :class:`statekeeper.runner.Runner`. :mod:`statekeeper.command` exposes these as the public
verbs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ledger import Ledger, VerifyResult

from . import clock, files
from ._version import __version__
from .cluster import cluster_plan
from .errors import (
    ConfigError,
    HistoryError,
    IntegrityError,
    LockHeld,
    NeedsAttention,
    TargetUnreachable,
)
from .interrupts import Interrupted
from .lease import Holder
from .machine import FORWARD, IN_FLIGHT, TERMINAL
from .plan import BackupPlan, ClusterPlan, Plan, PlannedCommand, PlannedMigration, ReleasePlan
from .replay import OPERATOR_ROLLBACK, Run
from .runner import STREAM_PREFIX, Observer, Runner, stream_of, to_run_event
from .session import Session
from .steps import KINDS

if TYPE_CHECKING:
    from .settings import Settings
    from .targets import Target
    from .why import Why

# A run in any other state blocks a new one on its target: in flight, or failed (a human).
SETTLED = ("completed", "rolled_back")


def new_run_id() -> str:
    return f"{clock.now():%Y%m%d-%H%M%S}-{uuid.uuid4().hex[:6]}"


def check_versions(to_version: str | None, from_version: str | None) -> None:
    """``--to`` and ``--from`` become tags: the same rule as ``migrate tag``, checked before
    anything is opened or read (exit 2)."""
    from .migrations import check_tag_name

    if to_version is None or not to_version.strip():
        raise ConfigError("--to VERSION is required")
    check_tag_name(to_version, "--to")
    if from_version is not None:
        check_tag_name(from_version, "--from")


def _state(migration_id: str | None) -> str:
    return f"after {migration_id}" if migration_id else "with no migration applied"


def upgrade_from(session: Session, from_version: str | None) -> str:
    """The version the schema is at now, which the run upgrades from. ``--from`` must name
    the current schema: a tag of the changelog that names another state is refused, and so
    is a new name for a schema that already has one (exit 2). Without it: the newest tag of
    the current schema."""
    applied = session.migrator.validate()
    current = session.migrator.current(applied)
    tags = session.migrator.tags()
    here = [t.name for t in tags if t.migration_id == current]
    if from_version is not None:
        named = next((t for t in tags if t.name == from_version), None)
        if named is not None and named.migration_id != current:
            now = f" (tagged {here[-1]})" if here else ""
            raise ConfigError(
                f"--from {from_version}: tag {from_version} names the schema "
                f"{_state(named.migration_id)}, but the schema is now {_state(current)}{now}; "
                "pass the version it is at, or leave --from out"
            )
        if named is None and here:
            raise ConfigError(
                f"--from {from_version}: the schema is tagged {here[-1]}, not {from_version} "
                f"(pass --from {here[-1]}, or leave --from out)"
            )
        return from_version
    if not tags:
        raise ConfigError(
            "the changelog has no tag to upgrade from: pass --from VERSION "
            "(or tag the current schema with 'statekeeper migrate tag VERSION')"
        )
    if not here:
        last = tags[-1]
        raise ConfigError(
            f"the schema changed since its last tag {last.name} (the tag names the schema "
            f"{_state(last.migration_id)}, it is now {_state(current)}): tag it with "
            "'statekeeper migrate tag VERSION' or pass --from VERSION"
        )
    return here[-1]


def build_plan(session: Session, to_version: str, from_version: str | None) -> Plan:
    cfg = session.settings.config
    check_versions(to_version, from_version)
    from_v = upgrade_from(session, from_version)
    if to_version == from_v or to_version in {t.name for t in session.migrator.tags()}:
        raise ConfigError(f"--to {to_version}: the schema is already tagged {to_version}")
    b = session.backups
    plan = Plan(
        from_version=from_v,
        to_version=to_version,
        migrations=tuple(
            PlannedMigration(m.id, m.checksum, m.reversible, m.no_transaction,
                             m.file_sha256)
            for m in session.migrator.pending()
        ),
        backup=BackupPlan(b is not None, b.method if b is not None else None),
        health_checks=tuple(c["name"] for c in session.health_checks),
        application=str(cfg.raw.get("upgrade", {}).get("application") or cfg.base_dir.name),
        target=session.target.display,
        backend=session.target.dialect.name,
        migrations_dir=str(session.migrator.migrations_dir),
        tool=f"statekeeper/{__version__}",
        config=cfg.source,
        release=release_plan(session, to_version),
        cluster=cluster_plan(session),
    )
    # the outline each step kind gives of its part, state by state: what `plan` shows
    outline = [line for state in FORWARD for k in KINDS.values() if state in k.runs_in
               for line in k.outline(plan, state)]
    return dataclasses.replace(plan, outline=tuple(outline))


def release_plan(session: Session, to_version: str) -> ReleasePlan | None:
    """The release side of the plan: the link as it is now and where it will point, the
    configuration files, the commands as written (no secret value)."""
    rc = session.release
    if rc is None:
        return None
    from .release import read_link

    src = rc.config_dir(to_version)
    return ReleasePlan(
        link=str(rc.current_link),
        from_target=read_link(rc.current_link),
        to_target=rc.link_target(to_version),
        to_dir=str(rc.release_dir(to_version)),
        config_files=tuple(str(f) for f in rc.config_files),
        config_from=None if src is None else str(src),
        stop=rc.stop.text if rc.stop else None,
        start=rc.start.text if rc.start else None,
        commands=tuple(PlannedCommand(c.name, c.run.text, c.undo.text) for c in rc.commands),
    )


@dataclass(frozen=True)
class Unreadable:
    """A run whose stream cannot be replayed (an unknown event type, an illegal history, a
    payload without its fields). It is reported as such; it never stops the others."""

    run_id: str
    reason: str  # "event #5 (seq 123): unknown event type 'x'"
    seq: int  # ledger seq of the first event that could not be applied (0: unknown)
    target: str | None  # from its run.created, when that much could be read
    created_at: str
    state: str = "unreadable"

    def error(self) -> IntegrityError:
        return IntegrityError(f"run {self.run_id} cannot be replayed: {self.reason}")


def replay_run(lg: Ledger, run_id: str, upto: int | None = None) -> Run | Unreadable | None:
    """The run rebuilt from its stream (``upto``: as of that seq); :class:`Unreadable` if that
    fails; None if the stream is empty."""
    from .replay import apply

    run: Run | None = None
    first: dict[str, Any] = {}
    ev = None
    try:
        for ev in lg.read_stream(stream_of(run_id), upto):
            rev = to_run_event(ev)
            if rev.position == 1 and isinstance(rev.payload, dict):
                first = {"target": rev.payload.get("target"), "at": rev.at}
            run = apply(run, rev)
            if rev.position == 1 and run.run_id != run_id:
                raise HistoryError(1, f"run.created names run {run.run_id!r}", rev.seq)
    except (HistoryError, ValueError) as e:
        seq = e.seq if isinstance(e, HistoryError) and e.seq else (ev.seq if ev else 0)
        if isinstance(e, HistoryError):
            why = f"event #{e.position} (seq {seq}): {e.reason}"
        else:
            why = f"event at seq {seq}: payload unreadable: {e}"
        target = first.get("target")
        return Unreadable(run_id, why, seq, target if isinstance(target, str) else None,
                          str(first.get("at") or (ev.recorded_at if ev else "")))
    return run


def load_run(lg: Ledger, run_id: str) -> Run:
    """One run; IntegrityError (exit 4) if its stream cannot be replayed."""
    run = replay_run(lg, run_id)
    if run is None:
        raise ConfigError(f"no run {run_id!r} in the ledger")
    if isinstance(run, Unreadable):
        raise run.error()
    return run


def scan_runs(lg: Ledger) -> list[Run | Unreadable]:
    """Every run of the ledger in the order created; one that cannot be replayed is an
    :class:`Unreadable` entry, so that it never hides or blocks the others."""
    out: list[Run | Unreadable] = []
    for name, *_ in lg.streams(STREAM_PREFIX):
        r = replay_run(lg, name[len(STREAM_PREFIX) :])
        if r is not None:
            out.append(r)
    return out


def runs_after(lg: Ledger, run_id: str, upto: int) -> list[Run | Unreadable]:
    """The runs created after ``run_id`` (up to seq ``upto``), replayed: what a rollback of
    it must look at, without replaying the runs before it."""
    first = next(iter(lg.read_stream(stream_of(run_id), upto)), None)
    if first is None:
        return []
    out: list[Run | Unreadable] = []
    for name, _ in lg.stream_starts(STREAM_PREFIX, after=first.seq, upto=upto):
        r = replay_run(lg, name[len(STREAM_PREFIX):], upto)
        if r is not None:
            out.append(r)
    return out


def recent_runs(lg: Ledger, limit: int, upto: int) -> list[Run | Unreadable]:
    """The last ``limit`` runs created (up to seq ``upto``), in the order created."""
    out: list[Run | Unreadable] = []
    for name, _ in lg.stream_starts(STREAM_PREFIX, upto=upto, last=limit):
        r = replay_run(lg, name[len(STREAM_PREFIX):], upto)
        if r is not None:
            out.append(r)
    return out


def all_runs(lg: Ledger) -> list[Run]:
    """The runs that can be replayed (see :func:`scan_runs` for the others)."""
    return [r for r in scan_runs(lg) if isinstance(r, Run)]


def unfinished_for(lg: Ledger, target_display: str, upto: int | None = None) -> list[Run]:
    """Runs on this target that are not settled: in flight, or failed (awaiting a human).
    A run on this target that cannot be replayed may be unfinished too: IntegrityError.
    ``upto``: a head the chain verified; with it (and a signing key) the run index
    (:mod:`statekeeper.runindex`) says which runs to replay, instead of all of them."""
    if upto is not None:
        found = _unfinished_indexed(lg, target_display, upto)
        if found is not None:
            return found
    out: list[Run] = []
    for r in scan_runs(lg):
        if isinstance(r, Unreadable):
            if r.target == target_display:
                raise _unknown_on_target(r)
        elif r.plan.target == target_display and r.state not in SETTLED:
            out.append(r)
    return out


def _unknown_on_target(r: Unreadable) -> IntegrityError:
    return IntegrityError(
        f"run {r.run_id} on this target cannot be replayed ({r.reason}); whether it finished "
        "is unknown, so nothing is done to the target"
    )


def _unfinished_indexed(lg: Ledger, target: str, upto: int) -> list[Run] | None:
    """:func:`unfinished_for` from the run index (None without a signing key, so no index):
    the index's summary names the runs not settled, each of this target is its stream
    verified and replayed; the others are not read."""
    from . import runindex

    if upto == 0:
        return []
    key = runindex.mac_key(lg)
    if key is None:
        return None
    out: list[Run] = []
    for r in runindex.RunIndex(lg, key).unsettled(upto, replay_run):
        if r.target != target or r.state in SETTLED or r.state == "empty":
            continue
        lg.verify_stream(stream_of(r.run_id), upto=upto)
        run = replay_run(lg, r.run_id, upto)
        if isinstance(run, Unreadable):
            raise _unknown_on_target(run)
        if run is not None and run.plan.target == target and run.state not in SETTLED:
            out.append(run)
    return out


def verify_before_acting(settings: Settings, lg: Ledger, run_id: str | None) -> VerifyResult:
    """The one place ``start``, ``resume``, ``rollback`` (and the read commands) check the
    ledger before they act: the chain since the last head this tool verified (a signed local
    checkpoint, :mod:`statekeeper.trust`) and the run's stream whole. A failure raises
    :class:`ledger.IntegrityViolation` (exit 4) naming the first bad seq, before the lease is
    taken or the target touched. Replay (illegal histories) and the runner's independent checks
    (the changelog before the final tag, a backup's sha256 against the ledger before a
    restore) do not depend on it."""
    from .trust import verify_before_act

    return verify_before_act(
        lg, settings.config.base_dir, stream_of(run_id) if run_id else None
    )


@contextlib.contextmanager
def holding(
    session: Session,
    run_id: str,
    *,
    takeover: bool,
    abandoned: Callable[[Holder], bool] | None = None,
    cluster: ClusterPlan | None = None,
    server_may_be_down: bool = False,
) -> Iterator[Holder | None]:
    """Hold the lease (ledger database) and the target lock for the whole run; with
    ``cluster`` (a whole-cluster backup method) the cluster-wide lease too, so that no other
    run on a database of that cluster acts while this one may restore it.

    ``server_may_be_down`` (``resume``: a restore may have been interrupted with the server
    stopped): the ledger lease alone guards the run until the target's server accepts
    connections; the runner takes the target lock before the first step that reads or writes
    the target (:meth:`Migrator.ensure_lock`)."""
    lease, previous = session.leases.acquire(
        session.target.display, run_id, takeover=takeover, abandoned=abandoned
    )
    try:
        whole = None
        if cluster is not None:
            whole, _ = session.leases.acquire(
                cluster.lease_key, run_id, takeover=takeover, abandoned=abandoned,
                what=f"cluster {cluster.system_identifier}",
            )
        try:
            with contextlib.ExitStack() as stack:
                try:
                    stack.enter_context(session.migrator.lock(
                        run_id=run_id, defer_unreachable=server_may_be_down))
                except TargetUnreachable as e:
                    if not takeover:
                        raise
                    raise TargetUnreachable(
                        f"{e}: run {run_id} needs the target's server; start it, then "
                        f"'statekeeper resume {run_id}'") from e
                yield previous
        finally:
            if whole is not None:
                whole.release()
    finally:
        lease.release()


def _live_holder(session: Session) -> Holder | None:
    h = session.leases.holder(session.target.display)
    return h if h is not None and session.leases.is_alive(h) else None


@contextlib.contextmanager
def _closing(session: Session, runner: Runner) -> Iterator[None]:
    """End a session on a run: record why it ended, and checkpoint a terminal state, while the
    lease is still held (a crash in between leaves the lease for resume to find)."""
    try:
        yield
    except BaseException as e:
        if runner.run is not None and not isinstance(e, KeyboardInterrupt | SystemExit):
            # a stop at a safe point (run.interrupted is recorded) is no error
            error = None if isinstance(e, Interrupted) else f"{type(e).__name__}: {e}"
            with contextlib.suppress(Exception):  # best effort: the ledger may be what failed
                runner.release_event(error=error)
        raise
    runner.release_event()
    if runner.run is not None:
        _checkpoint(session.settings, session.ledger, runner.run)


def start(
    settings: Settings,
    to_version: str,
    from_version: str | None = None,
    observer: Observer | None = None,
    why: Why | None = None,
    approved: tuple[Plan, Path] | None = None,
    gate: Callable[[Ledger, Target, Plan], object] | None = None,
) -> Run:
    """``approved``: the plan the operator reviewed (``--plan FILE``) and its file; the run
    starts only if the plan made now is exactly it. ``gate``: called with the verified
    ledger, the target and the plan before anything is recorded; it refuses by raising
    (``start --require-rehearsal`` passes :func:`statekeeper.rehearse.require_rehearsal`)."""
    check_versions(to_version, from_version)
    with Session.open(settings) as session:
        lg = session.ledger
        verified = verify_before_acting(settings, lg, None)
        holder = _live_holder(session)
        if holder is not None:
            raise LockHeld(f"target is locked by {holder.describe()}")
        busy = unfinished_for(lg, session.target.display, upto=verified.head.seq)
        if busy:
            r = busy[-1]
            if r.state == "failed":
                raise NeedsAttention(
                    f"run {r.run_id} on this target failed and needs a human: {r.failure}; "
                    f"fix what it names, then 'statekeeper resume {r.run_id}'"
                )
            raise LockHeld(
                f"run {r.run_id} on this target is unfinished ({r.state}): finish it with "
                f"'statekeeper resume {r.run_id}' or undo it with "
                f"'statekeeper resume {r.run_id} --rollback'"
            )
        plan = build_plan(session, to_version, from_version)
        if approved is not None:
            check_approved(approved[0], plan, approved[1])
        if gate is not None:
            accepted = gate(lg, session.target, plan)
            if isinstance(accepted, str):  # recorded in run.created: the report shows it
                from .why import Why as W

                why = dataclasses.replace(why or W(), rehearsal=accepted)
        run_id = new_run_id()
        runner = Runner(session, observer)

        def void(h: Holder) -> bool:  # died before its run was recorded: nothing to resume
            return lg.stream_position(stream_of(h.run_id)) == 0

        with holding(session, run_id, takeover=False, abandoned=void,
                     cluster=plan.cluster) as previous:
            runner.create(run_id, plan, why)
            with _closing(session, runner):
                runner.lease_events(previous, resumed=False, mode="start")
                runner.transition("begin")
                runner.drive()
        assert runner.run is not None
        return runner.run


def resume(
    settings: Settings,
    run_id: str | None = None,
    rollback: bool = False,
    observer: Observer | None = None,
    why: Why | None = None,
) -> Run:
    with Session.open(settings) as session:
        lg = session.ledger
        if run_id is None:
            verified = verify_before_acting(settings, lg, None)
            run_id = _run_to_resume(session, verified.head.seq)
            with _naming(run_id):
                return _resume(settings, session, run_id, rollback, observer, why,
                               verified.head.seq)
        verify_before_acting(settings, lg, run_id)
        return _resume(settings, session, run_id, rollback, observer, why, None)


@contextlib.contextmanager
def _naming(run_id: str) -> Iterator[None]:
    """An error after ``resume`` picked its run carries the run's id (``run_id``): the caller
    did not name it, and its ``--json`` result does. (A ledger error is translated here
    first, so the error that reaches the caller is the one named.)"""
    from .errors import StatekeeperError, error_boundary

    try:
        with error_boundary():
            yield
    except StatekeeperError as e:
        if getattr(e, "run_id", None) is None:
            e.run_id = run_id  # type: ignore[attr-defined]
        raise


def _resume(settings: Settings, session: Session, run_id: str, rollback: bool,
            observer: Observer | None, why: Why | None, picked_upto: int | None) -> Run:
    lg = session.ledger
    display = session.target.display
    if picked_upto is not None:
        lg.verify_stream(stream_of(run_id), upto=picked_upto)
    run = load_run(lg, run_id)
    if run.plan.target != display:
        raise ConfigError(f"run {run_id} upgraded {run.plan.target}, not {display}")
    if run.state in SETTLED and not _holds_lease(session, run_id):
        _checkpoint(settings, lg, run, only_if_missing=True)
        return run
    runner = Runner(session, observer, run)
    restarts = session.backups is not None and session.backups.restarts_server
    with (holding(session, run_id, takeover=True, cluster=run.plan.cluster,
                  server_may_be_down=restore_comes_first(run, restarts)) as previous,
          _closing(session, runner)):
        mode = "rollback" if rollback else "forward"
        runner.lease_events(previous, resumed=True, mode=mode, why=why)
        runner.settle()
        assert runner.run is not None
        state = runner.run.state
        if state == "failed":
            runner.transition("retry_rollback", "resumed by an operator")
        elif rollback and state in ("planned", "preflight"):
            runner.transition("abort", OPERATOR_ROLLBACK, requested=True)
        elif rollback and state in IN_FLIGHT:
            runner.transition("fail", OPERATOR_ROLLBACK, requested=True)
        elif state == "planned":
            runner.transition("begin")
        runner.drive()
    assert runner.run is not None
    return runner.run  # as the ledger holds it (Runner.resync at the session's end)


def restore_comes_first(run: Run, restarts_server: bool) -> bool:
    """Is the first thing ``resume`` does to the target a restore by a method that stops and
    starts the server (so that it may, and must be able to, go on with the server down)? The
    step in doubt, the next step, or for a ``failed`` run the restore it retries."""
    from .policy import next_action
    from .steps import Step

    if not restarts_server:
        return False
    if run.open_step is not None:
        return run.open_step.kind == "restore"
    if run.state == "failed":
        return bool(run.steps) and run.steps[-1].kind == "restore"
    try:
        action = next_action(run)
    except Exception:  # a history the policy cannot read: resume's replay will say so
        return False
    return isinstance(action, Step) and action.kind == "restore"


def _run_to_resume(session: Session, upto: int) -> str:
    """The unfinished run on this target, or a finished one whose dead process kept the lease
    (it died between its last state change and releasing the target)."""
    busy = unfinished_for(session.ledger, session.target.display, upto=upto)
    if busy:
        return busy[-1].run_id
    holder = session.leases.holder(session.target.display)
    if (
        holder is not None
        and not session.leases.is_alive(holder)
        and session.ledger.stream_position(stream_of(holder.run_id)) > 0
    ):
        return holder.run_id
    raise ConfigError("no unfinished run on this target to resume")


def _holds_lease(session: Session, run_id: str) -> bool:
    holder = session.leases.holder(session.target.display)
    return holder is not None and holder.run_id == run_id


def rollback(
    settings: Settings, run_id: str, restore: bool = False, observer: Observer | None = None,
    why: Why | None = None,
) -> Run:
    with Session.open(settings) as session:
        lg = session.ledger
        display = session.target.display
        verified = verify_before_acting(settings, lg, run_id)
        run = load_run(lg, run_id)
        if run.plan.target != display:
            raise ConfigError(f"run {run_id} upgraded {run.plan.target}, not {display}")
        if run.state != "completed":
            raise ConfigError(
                f"run {run_id} is {run.state}: only a completed run can be rolled back "
                "(an unfinished one: 'statekeeper resume RUN_ID --rollback')"
            )
        # a whole-cluster restore rewinds the other databases of the cluster too
        cluster = run.plan.cluster if restore else None
        later: list[Run] = []
        for r in runs_after(lg, run_id, verified.head.seq):
            if isinstance(r, Unreadable):
                if r.target == display and r.created_at > run.created_at:
                    raise IntegrityError(
                        f"run {r.run_id} on this target, after {run_id}, cannot be replayed "
                        f"({r.reason}); whether it changed the schema is unknown"
                    )
            elif (r.plan.target == display
                  and r.created_at > run.created_at and r.state == "completed"):
                later.append(r)
            elif (cluster is not None and r.plan.cluster is not None
                  and r.plan.cluster.system_identifier == cluster.system_identifier
                  and r.created_at > run.created_at and r.state == "completed"):
                raise ConfigError(
                    f"run {r.run_id} on {r.plan.target}, a database of the same cluster "
                    f"{cluster.system_identifier}, completed after {run_id}: restoring the "
                    "whole cluster would rewind it while its ledger says completed; roll that "
                    "back first"
                )
        if later:
            raise ConfigError(
                f"run {later[-1].run_id} completed after {run_id}: roll that back first"
            )
        irreversible = [mid for mid in run.migrations_applied()
                        if (m := run.plan.migration(mid)) is None or not m.reversible]
        if irreversible and not restore:
            raise ConfigError(
                f"run {run_id} applied {irreversible[0]}, which has no down part: undoing it "
                "means restoring the backup, which discards every change made since it was "
                "taken; pass --restore to accept that"
            )
        if cluster is not None:
            from . import cluster as clusters

            clusters.check(session, clusters.cluster_plan(session) or cluster)
        runner = Runner(session, observer, run)
        with (holding(session, run_id, takeover=True, cluster=run.plan.cluster) as previous,
              _closing(session, runner)):
            runner.lease_events(previous, resumed=True, mode="rollback", why=why)
            runner.transition("rollback", "operator rolled back a completed upgrade",
                              restore=restore)
            runner.drive()
        assert runner.run is not None
        return runner.run


def _checkpoint(settings: Settings, lg: Ledger, run: Run, only_if_missing: bool = False
                ) -> Path | None:
    """A signed checkpoint at every terminal state, saved beside the ledger for the officer."""
    if run.state not in TERMINAL:
        return None
    path = settings.checkpoint_dir() / f"{run.run_id}.checkpoint"
    if only_if_missing and path.exists():
        return path
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"checkpoint directory {path.parent}: {e.strerror or e}") from e
    from .trust import verify_before_act

    # Over a head verified now: never vouch for what this session did not see verify.
    text = lg.checkpoint(verify_before_act(lg, settings.config.base_dir))
    try:
        files.write_atomic(path, text)
    except OSError as e:
        raise ConfigError(f"{path}: cannot write: {e.strerror}") from e
    return path


def status(settings: Settings, run_id: str | None = None) -> Run:
    """One run (default: the latest on the configured target); IntegrityError (exit 4) if it
    cannot be replayed, ConfigError when there is no such run (or none at all)."""
    run = latest(settings, run_id)
    if run is None:
        raise ConfigError("no runs in the ledger yet")
    return run


def configured_target(settings: Settings) -> str | None:
    """The key (``Target.display``) of the target this project configures, None without one:
    the runs ``status`` and ``history`` show by default (a ledger may be shared by many)."""
    from .targets import Target

    cfg = settings.config
    if cfg.target_url is None:
        return None
    return Target.from_url(cfg.require_target(), cfg.base_dir).display


def latest(settings: Settings, run_id: str | None = None, *,
           all_targets: bool = False) -> Run | None:
    """:func:`status`, but None when there is no run to show (and no ``run_id`` is named):
    the latest run on the configured target (``all_targets``, or no target configured: the
    latest in the ledger)."""
    with settings.open_ledger(signing=False) as lg:
        verified = verify_before_acting(settings, lg, run_id)
        if run_id is None:
            target = None if all_targets else configured_target(settings)
            found = next(_newest_runs(lg, verified.head.seq, target), None)
            if found is None:
                return None
            run_id = found
            lg.verify_stream(stream_of(run_id), upto=verified.head.seq)
        return load_run(lg, run_id)


def has_runs(settings: Settings) -> bool:
    """Whether the ledger holds any run (of any target)."""
    with settings.open_ledger(signing=False) as lg:
        return bool(lg.stream_starts(STREAM_PREFIX, last=1))


def _newest_runs(lg: Ledger, upto: int, target: str | None) -> Iterator[str]:
    """Run ids, newest first, created at or before seq ``upto`` (a verified head); with
    ``target``, only those whose ``run.created`` names it or names no readable target (a run
    that cannot be read might be this target's: it is shown, not hidden). Reads the stream
    starts backwards in growing batches and one event per run: a shared ledger's other
    targets cost one indexed read per run passed over."""
    from ledger import canonical

    batch = 8
    while upto > 0:
        got = lg.stream_starts(STREAM_PREFIX, upto=upto, last=batch)
        if not got:
            return
        for name, seq in reversed(got):
            if target is not None:
                named = None
                for ev in lg.read(seq, seq):
                    try:
                        p = canonical.loads(ev.payload)
                    except ValueError:
                        p = None
                    named = p.get("target") if isinstance(p, dict) else None
                if isinstance(named, str) and named != target:
                    continue
            yield name[len(STREAM_PREFIX):]
        upto = got[0][1] - 1
        batch = min(batch * 4, 4096)


@dataclass(frozen=True)
class ServerState:
    """Whether an unfinished run's target server accepts connections, and what ``resume``
    does about it when it does not (``status``)."""

    up: bool
    error: str | None = None
    resume: str | None = None  # what 'statekeeper resume' will do, when the server is down

    def to_dict(self) -> dict[str, Any]:
        return {"up": self.up, "error": self.error, "resume": self.resume}


def server_state(settings: Settings, run: Run) -> ServerState | None:
    """For an unfinished run on a server (not a database file), one connection attempt; None
    when there is nothing to say (a finished run, a file, another target configured)."""
    from .backups.manager import method_class
    from .errors import TargetError, TargetUnreachable
    from .targets import Target

    cfg = settings.config
    if run.state in SETTLED or cfg.target_url is None:
        return None
    target = Target.from_url(cfg.require_target(), cfg.base_dir)
    if target.dialect.in_a_file or target.display != run.plan.target:
        return None
    try:
        target.connect(autocommit=True).close()
    except TargetUnreachable as e:
        error = str(e)
    except TargetError:
        return ServerState(True)  # it answers (a refused login is not this question)
    else:
        return ServerState(True)
    restarts = cfg.backup.enabled and method_class(cfg.backup_method()).restarts_server
    if restore_comes_first(run, restarts):
        what = (f"'statekeeper resume {run.run_id}' redoes the interrupted restore and starts "
                "the server (the ledger lease guards the run meanwhile); do not start it "
                "by hand")
    else:
        what = f"start the server, then 'statekeeper resume {run.run_id}'"
    return ServerState(False, error, what)


def history(settings: Settings, limit: int | None = None, *,
            all_targets: bool = False) -> list[Run | Unreadable]:
    """The runs on the configured target (``all_targets``, or no target configured: every
    run) in the order created (``limit``: the last that many); those that cannot be replayed
    as :class:`Unreadable` (listed whatever their target, when it cannot be read)."""
    with settings.open_ledger(signing=False) as lg:
        verified = verify_before_acting(settings, lg, None)
        target = None if all_targets else configured_target(settings)
        if limit is not None:
            if target is None:
                return recent_runs(lg, limit, verified.head.seq)
            out: list[Run | Unreadable] = []
            for rid in _newest_runs(lg, verified.head.seq, target):
                r = replay_run(lg, rid, verified.head.seq)
                if r is not None:
                    out.append(r)
                if len(out) == limit:
                    break
            return out[::-1]
        runs = scan_runs(lg)
        if target is None:
            return runs
        return [r for r in runs if _target_of(r) in (target, None)]


def _target_of(r: Run | Unreadable) -> str | None:
    return r.target if isinstance(r, Unreadable) else r.plan.target


def plan(settings: Settings, to_version: str, from_version: str | None = None) -> Plan:
    return plan_preview(settings, to_version, from_version)[0]


def plan_preview(settings: Settings, to_version: str, from_version: str | None = None
                 ) -> tuple[Plan, str | None]:
    """The plan, and for a tool that previews its own SQL (Liquibase's ``update-sql``) that
    SQL, from the same reading of the changelog; None for the SQL-file tool (``migrate sql``
    shows its SQL)."""
    check_versions(to_version, from_version)
    with Session.open(settings, ledger=False) as session:
        p = build_plan(session, to_version, from_version)
        return p, (session.migrator.sql() if session.migrator.tool != "files" else None)


#: The saved plan's format (``plan --out``): its name and version, the plan's digest, the plan.
PLAN_FILE_FORMAT = "statekeeper-plan"
PLAN_FILE_VERSION = 1
PLAN_FILE_MAX = 16 * 1024 * 1024  # a plan of thousands of migrations is well under this


def save_plan(p: Plan, path: Path) -> None:
    """Write the plan ``start --plan`` compares with (0600, atomically: a crash leaves the
    old file or the new one, never half of one)."""
    doc = {"format": PLAN_FILE_FORMAT, "version": PLAN_FILE_VERSION, "digest": p.digest(),
           "plan": p.to_payload()}
    try:
        files.write_atomic(path, json.dumps(doc, indent=2, sort_keys=True) + "\n")
    except OSError as e:
        raise ConfigError(f"--out {path}: {files.describe_os_error(e)}") from e


def load_plan(path: Path) -> Plan:
    """The plan an operator approved (``plan --out``), refused with one line naming the file
    when it is not one. Only compared with the plan ``start`` makes: never acted on."""
    import stat

    from .plan import PlanError

    try:
        # O_NONBLOCK: opening a FIFO must not wait for a writer; a regular file ignores it
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        with os.fdopen(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                raise ConfigError(f"--plan {path}: not a regular file")
            data = f.read(PLAN_FILE_MAX + 1)
    except OSError as e:
        raise ConfigError(f"--plan {path}: {files.describe_os_error(e)}") from e
    if len(data) > PLAN_FILE_MAX:
        raise ConfigError(f"--plan {path}: larger than a saved plan can be "
                          f"({PLAN_FILE_MAX // 1024 // 1024} MiB)")
    try:
        doc = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        why = "nested too deeply" if isinstance(e, RecursionError) else f"not JSON: {e}"
        raise ConfigError(f"--plan {path}: not a saved plan ({why})") from e
    if not isinstance(doc, dict) or doc.get("format") != PLAN_FILE_FORMAT:
        raise ConfigError(f"--plan {path}: not a saved plan (write one with "
                          "'statekeeper plan --to VERSION --out FILE')")
    if doc.get("version") != PLAN_FILE_VERSION:
        raise ConfigError(f"--plan {path}: saved plan format {doc.get('version')!r} is not "
                          f"{PLAN_FILE_VERSION}")
    if not isinstance(doc.get("plan"), dict):
        raise ConfigError(f"--plan {path}: field 'plan' is not an object")
    try:
        p = Plan.from_payload(doc["plan"])
    except PlanError as e:
        raise ConfigError(f"--plan {path}: {e}") from e
    # what a reviewer reads is the file: every byte of its plan must be what the plan it
    # parses to would write (no extra key, no field that parses leniently), under its digest
    if p.digest() != doc.get("digest") or p.to_payload() != doc["plan"]:
        raise ConfigError(f"--plan {path}: its digest does not match the plan it holds "
                          "(edited after 'statekeeper plan' wrote it)")
    return p


def check_approved(approved: Plan, now: Plan, where: Path) -> None:
    """Refuse to run a plan other than the one approved, naming every difference."""
    if approved.digest() == now.digest():
        return
    changes = approved.changes_to(now)
    raise ConfigError(f"the plan changed since {where} was written ({'; '.join(changes)}): "
                      "review 'statekeeper plan' again; nothing was done")
