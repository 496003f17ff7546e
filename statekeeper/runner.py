"""The imperative shell: performs the step the policy names, appends its events, repeats.

Every side effect is announced by ``step.started`` committed before it runs and closed by
``step.succeeded`` or ``step.failed``. Events are appended with the run's expected stream
position (optimistic concurrency) and then applied to the in-memory run through the same
:func:`statekeeper.replay.apply` that replay uses.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ledger import Ledger, NewEvent, StoredEvent, canonical

from . import clock, failpoints
from .errors import (
    BackupCorrupt,
    BackupError,
    IntegrityError,
    NeedsAttention,
    StatekeeperError,
    TargetError,
)
from .policy import Done, Step, Transition, next_action
from .replay import (
    LEASE_ACQUIRED,
    LEASE_RELEASED,
    LEASE_TAKEN_OVER,
    RUN_CREATED,
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

STREAM_PREFIX = "upgrade/"
Observer = Callable[[str, dict[str, Any]], None]


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


@dataclass
class Environment:
    """What the runner acts on. Built by :mod:`statekeeper.command` from the configuration."""

    target: Any  # statekeeper.targets.Target
    migrator: Any  # statekeeper.migrations.Migrator
    backups: Any | None  # statekeeper.backups.BackupManager, None when backups are off
    health_checks: list[dict[str, Any]]


class Runner:
    def __init__(self, ledger: Ledger, env: Environment, observer: Observer | None = None) -> None:
        self.ledger = ledger
        self.env = env
        self.observe = observer or (lambda kind, data: None)
        self.run: Run | None = None

    # -- events ------------------------------------------------------------------------------
    def emit(self, type_: str, payload: dict[str, Any], run_id: str | None = None) -> Run:
        stream = stream_of(run_id or self.run.run_id)  # type: ignore[union-attr]
        pos = self.run.position if self.run is not None else 0
        ev = self.ledger.append(stream, NewEvent(type_, payload), expected_position=pos)[-1]
        self.run = apply(self.run, to_run_event(ev))
        self.observe(type_, payload)
        return self.run

    # -- lifecycle ---------------------------------------------------------------------------
    def create(self, plan: dict[str, Any]) -> Run:
        self.run = None
        return self.emit(RUN_CREATED, plan, run_id=plan["run_id"])

    def lease_events(self, previous: Any | None, resumed: bool, mode: str) -> None:
        me = {"host": socket.gethostname(), "pid": os.getpid()}
        if resumed:
            self.emit(RUN_RESUMED, {**me, "mode": mode, "state": self.run.state})  # type: ignore[union-attr]
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
            )
        else:
            self.emit(LEASE_ACQUIRED, me)

    def release_event(self, error: str | None = None) -> None:
        if self.run is not None:
            p: dict[str, Any] = {"host": socket.gethostname(), "pid": os.getpid()}
            if error:
                p["error"] = error
            self.emit(LEASE_RELEASED, p)

    def transition(self, trigger: str, reason: str | None = None, **extra: Any) -> None:
        assert self.run is not None
        failpoints.hit("transition.before")
        to = _dest(self.run, trigger)
        payload: dict[str, Any] = {"trigger": trigger, "from": self.run.state, "to": to, **extra}
        if reason:
            payload["reason"] = reason
        self.emit(STATE_CHANGED, payload)
        failpoints.hit("transition.after")

    def drive(self) -> Run:
        """Run the policy to a terminal state."""
        assert self.run is not None
        while True:
            action = next_action(self.run)
            if isinstance(action, Done):
                return self.run
            if isinstance(action, Transition):
                self.transition(action.trigger, action.reason)
                continue
            with contextlib.suppress(StepFailed):
                # The step.failed event is in the ledger; the policy reads it and decides
                # (abort, fail, fall back to restore, give up), live and after a crash alike.
                self.step(action)

    # -- steps -------------------------------------------------------------------------------
    def step(self, step: Step) -> dict[str, Any]:
        kind = step.kind
        failpoints.hit(f"{kind}.before")
        self.emit(STEP_STARTED, {"step": step.name, "kind": kind, **step.args})
        failpoints.hit(f"{kind}.started")
        t0 = clock.monotonic_ms()
        try:
            result = self.effect(step)
        except (StatekeeperError, OSError) as e:
            # An OSError is the environment failing the step (a backup directory unwritable or
            # gone, a disk full): the run records it and rolls back like any other failure,
            # instead of leaving the step open for a human to guess about.
            error = str(e) if isinstance(e, StatekeeperError) else _os_error(e)
            failed: dict[str, Any] = {
                "step": step.name,
                "kind": kind,
                "error": error,
                "duration_ms": int(clock.monotonic_ms() - t0),
            }
            if isinstance(e, BackupCorrupt | IntegrityError):
                failed["integrity"] = True
            self.emit(STEP_FAILED, failed)
            raise StepFailed(step, error) from e
        failpoints.hit(f"{kind}.done")
        self.emit(
            STEP_SUCCEEDED,
            {
                "step": step.name,
                "kind": kind,
                "result": result,
                "duration_ms": int(clock.monotonic_ms() - t0),
            },
        )
        return result

    def effect(self, step: Step) -> dict[str, Any]:
        assert self.run is not None
        env = self.env
        mid = lambda: failpoints.hit(f"{step.kind}.middle")  # noqa: E731
        if step.kind == "preflight":
            return self._preflight(mid)
        if step.kind == "backup":
            if env.backups is None:
                raise BackupError("backups are off ([backup] enabled = false)")
            m = env.backups.create(step.args["backup_id"], hook=mid)
            return manifest_result(m)
        if step.kind == "tag":
            tag = step.args["tag"]
            if tag == self.run.to_version:
                self._check_changelog(tag)
            existing = {t.name: t for t in env.migrator.tags()}
            if tag in existing:
                mine = existing[tag].run_id == self.run.run_id
                if tag == self.run.to_version and not mine:
                    raise TargetError(f"tag {tag} was created meanwhile by someone else "
                                      f"(at {existing[tag].created_at}): it must name this "
                                      "run's schema; remove it or choose another version")
                return {"tag": tag, "created": mine}
            env.migrator.tag(tag, run_id=self.run.run_id)
            return {"tag": tag, "created": True}
        if step.kind == "untag":
            removed = env.migrator.untag(step.args["tag"], run_id=self.run.run_id)
            return {"tag": step.args["tag"], "removed": removed}
        if step.kind == "migrate":
            mig = _migration(env.migrator, step.args["migration"])
            if mig.checksum != step.args["checksum"]:
                raise TargetError(
                    f"migration {mig.id} changed since the run was planned (checksum differs)"
                )
            applied = env.migrator.apply(mig, run_id=self.run.run_id, hook=mid)
            return {
                "migration": mig.id,
                "checksum": mig.checksum,
                "execution_ms": applied.execution_ms,
            }
        if step.kind == "health":
            from .health import run_checks

            return run_checks(env.target, env.health_checks, hook=mid)
        if step.kind == "revert":
            env.migrator.revert(step.args["migration"], run_id=self.run.run_id, hook=mid)
            return {"migration": step.args["migration"]}
        if step.kind == "restore":
            if env.backups is None:
                raise BackupError("no backup manager configured: cannot restore")
            self._check_backup(step.args["backup_id"])
            # A restore may replace the database file or restart the server under any open
            # connection: the migrator's shared one must not outlive it.
            env.migrator.forget_connections()
            try:
                env.backups.restore(step.args["backup_id"], hook=mid, check=False)
            finally:
                env.migrator.forget_connections()
            return {"backup_id": step.args["backup_id"]}
        if step.kind == "compare":
            return self._compare(step.args.get("scope", "full"))
        raise NeedsAttention(f"unknown step kind {step.kind!r}")

    def _preflight(self, mid: Callable[[], None]) -> dict[str, Any]:
        from .fingerprint import fingerprint

        assert self.run is not None
        env = self.env
        env.migrator.validate()
        mid()
        planned = {m["id"]: m["checksum"] for m in self.run.plan.get("migrations", [])}
        pending = {m.id: m.checksum for m in env.migrator.pending()}
        if planned != {k: v for k, v in pending.items() if k in planned} or set(planned) - set(
            pending
        ):
            raise TargetError("pending migrations differ from the plan this run recorded")
        result: dict[str, Any] = {"pending": len(pending)}
        if env.backups is not None:
            # where the backup really goes: the backup directory, or pgBackRest's repository
            need = int(env.backups.estimate_size() * 1.2)
            free = env.backups.free_space()
            if free < need:
                raise TargetError(
                    f"not enough free disk for the backup: {free} bytes free, ~{need} needed"
                )
            result.update({"backup_estimate_bytes": need, "free_bytes": free})
        fp = fingerprint(env.target)
        result["fingerprint"] = fp.to_dict()
        result["fingerprint_digest"] = fp.digest
        return result

    def _check_changelog(self, tag: str) -> None:
        """Before the new version's name goes on the schema: every planned migration is in
        the target's changelog with the checksum the run planned. Independent of the ledger:
        whatever the history says, the tag must not name a schema that lacks one of them."""
        assert self.run is not None
        recorded = {r.id: r.checksum for r in self.env.migrator.applied()}
        for m in self.run.plan.get("migrations", []):
            got = recorded.get(m["id"])
            if got is None:
                raise TargetError(
                    f"migration {m['id']} is not in the changelog of {self.env.target.display}: "
                    f"refusing to tag the schema {tag}"
                )
            if got != m["checksum"]:
                raise TargetError(
                    f"migration {m['id']} is in the changelog of {self.env.target.display} "
                    f"with sha256 {got[:12]}, the run planned {m['checksum'][:12]}: refusing "
                    f"to tag the schema {tag}"
                )

    def _check_backup(self, backup_id: str) -> None:
        """Before a restore: the artifact is the one this run's backup step recorded in the
        ledger (size and sha256), not merely the one its manifest describes: a manifest lives
        beside the file and is replaced with it."""
        from .backups import sha256_file

        assert self.run is not None and self.env.backups is not None
        rec = self.run.backup
        if rec is None or rec.get("backup_id") != backup_id:
            raise IntegrityError(
                f"backup {backup_id}: the ledger records no such backup for run "
                f"{self.run.run_id}: refusing to restore it"
            )
        m = self.env.backups.get(backup_id)
        path = m.artifact_path
        _no_one_else_can_swap(backup_id, path)
        try:
            size, digest = sha256_file(path)
        except OSError as e:
            raise BackupCorrupt(f"backup {backup_id}: cannot read artifact {path}: "
                                f"{_os_error(e)}") from e
        if digest != rec.get("sha256") or size != rec.get("size"):
            raise BackupCorrupt(
                f"backup {backup_id}: artifact {path} has sha256 {digest[:12]} ({size} bytes); "
                f"the ledger recorded {str(rec.get('sha256'))[:12]} ({rec.get('size')} bytes) "
                "for this run's backup: refusing to restore it"
            )
        if m.sha256 != rec.get("sha256"):
            raise BackupCorrupt(
                f"backup {backup_id}: manifest {m.manifest_path} records sha256 "
                f"{m.sha256[:12]}, the ledger {str(rec.get('sha256'))[:12]}: refusing to "
                "restore it"
            )

    def _compare(self, scope: str) -> dict[str, Any]:
        from .fingerprint import Fingerprint, diff, fingerprint

        assert self.run is not None
        pre = self.run.succeeded("preflight")
        if pre is None or not pre.result:
            raise NeedsAttention("no fingerprint from before the upgrade to compare with")
        before = Fingerprint.from_dict(pre.result["fingerprint"])
        now = fingerprint(self.env.target)
        if scope == "schema":
            equal = before.schema == now.schema
            lines = [] if equal else [ln for ln in diff(before, now) if ln.startswith("schema")]
            return {"equal": equal, "diff": lines or ([] if equal else ["schema differs"]),
                    "digest": now.digest, "scope": scope}
        lines = diff(before, now)
        return {"equal": not lines, "diff": lines, "digest": now.digest, "scope": scope}


def _os_error(e: OSError) -> str:
    what = e.strerror or str(e)
    return f"{what}: {e.filename}" if e.filename else what


def _dest(run: Run, trigger: str) -> str:
    """Where ``trigger`` leads from the run's state, read off the machine's table."""
    from .machine import IllegalTransition

    to = destination(run.state, trigger)
    if to is None:
        raise NeedsAttention(f"run {run.run_id}: {IllegalTransition(trigger, run.state)}")
    return to


def _no_one_else_can_swap(backup_id: str, path: Path) -> None:
    """The restore reads the artifact again after it was hashed: refuse one that another user
    could replace in between (the file, or any directory above it, owned by someone else or
    writable by group or others without the sticky bit), as ssh's StrictModes does."""
    import stat

    me = os.geteuid()
    for p in (path, *path.parents):
        try:
            st = p.lstat() if p == path else p.stat()  # ancestors may be symlinks (/var/run)
        except OSError as e:
            raise BackupCorrupt(f"backup {backup_id}: cannot inspect {p}: {_os_error(e)}") from e
        if p == path and not stat.S_ISREG(st.st_mode):
            raise BackupCorrupt(f"backup {backup_id}: artifact {p} is not a regular file")
        open_to_others = st.st_mode & 0o022 and not (
            stat.S_ISDIR(st.st_mode) and st.st_mode & stat.S_ISVTX
        )
        if st.st_uid not in (me, 0) or open_to_others:
            raise BackupCorrupt(
                f"backup {backup_id}: {p} is "
                + ("owned by another user" if st.st_uid not in (me, 0)
                   else "writable by group or others")
                + ": the artifact could be swapped after it is checked; refusing to restore "
                "(chmod go-w, or move the backups somewhere private)"
            )


def tag_names(migrator: Any) -> set[str]:
    return {t.name for t in migrator.tags()}


def _migration(migrator: Any, mid: str) -> Any:
    for m in migrator.migrations():
        if m.id == mid:
            return m
    raise TargetError(f"migration {mid} is no longer in the migrations directory")


def manifest_result(m: Any) -> dict[str, Any]:
    return {"backup_id": m.id, "method": m.method, "size": m.size, "sha256": m.sha256}

