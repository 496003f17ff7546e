"""Operations: the changes made through statekeeper outside an upgrade, each recorded in its
own stream ``ops/<op_id>`` (the fold of which is :mod:`statekeeper.opreplay`).

An operation, like a run, verifies the ledger before acting (the chain since the last head
this tool verified), takes the target lock, and refuses (exit 5, naming it) while a run holds
the lease on its target. Bad input is refused before anything is recorded: ``op.created`` is
appended only once the operation is about to change something, then each side effect is a
step (``step.started`` committed before it runs, ``step.succeeded``/``step.failed`` after,
with the payload shapes of a run's steps), and ``op.ended`` says how it ended. An operation
that would change nothing (nothing pending, already at the tag, no backup to prune) records
nothing. The destructive ones (``backup restore``, ``backup prune``, ``migrate down``) are
confirmed first, on a terminal (``confirm``) or with ``--yes``; how is recorded.

The public verbs are in :mod:`statekeeper.command`; this module never prints or exits.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ledger import NewEvent

from . import clock, failpoints, logs, progress
from ._version import __version__
from .errors import (
    BackupCorrupt,
    BackupError,
    ConfigError,
    HistoryError,
    LockHeld,
    StatekeeperError,
)
from .files import describe_os_error
from .interrupts import Interrupted
from .opreplay import (
    DESTRUCTIVE,
    OP_CREATED,
    OP_ENDED,
    STEP_FAILED,
    STEP_STARTED,
    STEP_SUCCEEDED,
    STREAM_PREFIX,
    Operation,
    apply,
    replay,
    stream_of,
)

if TYPE_CHECKING:
    from ledger import Ledger, StoredEvent

    from .backups import BackupManager, Manifest, RestoreResult
    from .migrations import AppliedMigration, BaselinePlan, Migration, Tag
    from .migrations.driver import MigrationDriver as Migrator
    from .retention import Verdict
    from .settings import Settings
    from .targets import Target
    from .why import Why

Observer = Callable[[str, dict[str, Any]], None]
log = logging.getLogger(__name__)
#: asks the operator (on a terminal) whether to go on; the question is one line
Confirm = Callable[[str], bool]


def new_op_id() -> str:
    from .upgrade import new_run_id

    return new_run_id()


def confirmation(op: str, yes: bool, confirm: Confirm | None) -> str:
    """How a destructive operation will be confirmed, decided before anything is opened:
    ``--yes``, or ``prompt`` (asked by :func:`ask` once the operation knows what it would
    discard). Neither (not a terminal, no ``--yes``): ConfigError naming ``--yes``."""
    if yes:
        return "--yes"
    if confirm is None:
        words = op.replace(".", " ")
        raise ConfigError(f"{words} discards data and needs confirmation: not on a terminal, "
                          "so pass --yes (nothing was done)")
    return "prompt"


def ask(op: str, how: str, confirm: Confirm | None, question: str) -> None:
    """Ask the operator (``prompt``); a no is ConfigError, with nothing done or recorded."""
    if how == "prompt":
        assert confirm is not None
        if not confirm(question):
            raise ConfigError(f"{op.replace('.', ' ')} not confirmed: nothing was done")


def _error_text(e: BaseException) -> str:
    if isinstance(e, Interrupted):  # a stop at a safe point says itself where it stopped
        return str(e)
    if isinstance(e, KeyboardInterrupt):
        return "interrupted (SIGINT)"
    if isinstance(e, OSError):
        return describe_os_error(e)
    if isinstance(e, StatekeeperError) or type(e).__module__.startswith("ledger"):
        return str(e)
    return f"{type(e).__name__}: {e}"


def _failpoint(kind: str, phase: str) -> None:
    name = f"{kind}.{phase}"
    if name in failpoints.FAILPOINTS:  # declared ones only (init, keys.rotate have none)
        failpoints.hit(name)


class Recorder:
    """Appends one operation's events, folding each through :func:`opreplay.apply` (the
    function a replay uses), so what is recorded is what replays."""

    def __init__(self, lg: Ledger, op_id: str, observer: Observer | None = None) -> None:
        self.ledger = lg
        self.op_id = op_id
        self.observe = observer or (lambda kind, data: None)
        self.op: Operation | None = None

    def emit(self, type_: str, payload: dict[str, Any]) -> Operation:
        from .runner import to_run_event

        pos = self.op.position if self.op is not None else 0
        ev = self.ledger.append(stream_of(self.op_id), NewEvent(type_, payload),
                                expected_position=pos)[-1]
        self.op = apply(self.op, to_run_event(ev))
        self.observe(type_, {"op_id": self.op_id, **payload})
        return self.op

    def create(self, op: str, target: str | None, args: dict[str, Any], why: Why | None,
               confirmed: str | None) -> None:
        payload: dict[str, Any] = {
            "op_id": self.op_id, "op": op, "target": target, "args": args,
            **(why.payload() if why is not None else {}), "version": __version__,
        }
        if op in DESTRUCTIVE:
            payload["confirmed"] = confirmed
        self.emit(OP_CREATED, payload)

    def step(self, name: str, kind: str, args: dict[str, Any],
             effect: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """Announce, perform and close one step; a failure is recorded and re-raised. A
        step of a step kind's name reaches that kind's ``before``/``started``/``done``
        failpoints, as the run's step does (``STATEKEEPER_FAILPOINT=backup.done`` kills a
        ``backup create`` after the backup is taken, before it is recorded)."""
        _failpoint(kind, "before")
        self.emit(STEP_STARTED, {"step": name, "kind": kind, **args})
        log.info("operation %s: step %s started", self.op_id, name)
        _failpoint(kind, "started")
        t0 = clock.monotonic_ms()
        try:
            # an observer that is a statekeeper.progress.Reporter sees the tools' progress
            with logs.context(step=name), progress.reporting(self.observe):
                result = effect()
        except (Exception, Interrupted) as e:  # a stop at a safe point ends the step too
            took = int(clock.monotonic_ms() - t0)
            self.emit(STEP_FAILED, {"step": name, "kind": kind, "error": _error_text(e),
                                    "duration_ms": took})
            log.info("operation %s: step %s failed after %s: %s", self.op_id, name,
                     logs.elapsed(took), _error_text(e))
            raise
        _failpoint(kind, "done")
        took = int(clock.monotonic_ms() - t0)
        self.emit(STEP_SUCCEEDED, {"step": name, "kind": kind, "result": result,
                                   "duration_ms": took})
        log.info("operation %s: step %s succeeded in %s", self.op_id, name, logs.elapsed(took))
        return result


@contextlib.contextmanager
def recording(lg: Ledger, op_id: str, op: str, target: str | None, args: dict[str, Any],
              why: Why | None, confirmed: str | None = None,
              observer: Observer | None = None) -> Iterator[Recorder]:
    """``op.created`` now, ``op.ended`` when the block ends: ``failed`` with the error if it
    raised (best effort: the ledger may be what failed), ``succeeded`` otherwise. A process
    killed inside the block leaves the operation without ``op.ended`` (interrupted)."""
    rec = Recorder(lg, op_id, observer)
    rec.create(op, target, args, why, confirmed)
    t0 = clock.monotonic_ms()
    try:
        yield rec
    except BaseException as e:
        if not isinstance(e, SystemExit):
            with contextlib.suppress(Exception):
                rec.emit(OP_ENDED, {"outcome": "failed", "error": _error_text(e),
                                    "duration_ms": int(clock.monotonic_ms() - t0)})
        raise
    rec.emit(OP_ENDED, {"outcome": "succeeded", "duration_ms": int(clock.monotonic_ms() - t0)})


def open_verified(settings: Settings) -> Ledger:
    """The ledger, opened to append and verified before acting (chain since the local
    checkpoint); it must exist already: ``statekeeper init`` creates it."""
    from .trust import verify_before_act

    lg = settings.open_ledger(signing=True, create=False)
    try:
        verify_before_act(lg, settings.config.base_dir)
    except BaseException:
        lg.close()
        raise
    return lg


def refuse_if_leased(settings: Settings, target: Target) -> None:
    """A run holding the lease on the target (alive) owns it: LockHeld naming the run. (Its
    target lock refuses too; the lease also covers a run whose lock is deferred while a
    restore has the server down.)"""
    store = settings.open_lease_store()
    try:
        h = store.holder(target.display)
        if h is not None and store.is_alive(h):
            raise LockHeld(f"target is locked by {h.describe()}: an operation waits for the "
                           f"run to end ('statekeeper status {h.run_id}')")
    finally:
        store.dispose()


@contextlib.contextmanager
def acting(settings: Settings, target: Target,
           lock: contextlib.AbstractContextManager[Any]) -> Iterator[Ledger]:
    """What every operation on a target does before it looks at it: the ledger verified,
    the target lock (``lock``) held, no run holding the lease. Yields the ledger."""
    with contextlib.closing(open_verified(settings)) as lg, lock:
        refuse_if_leased(settings, target)
        yield lg


# -- migrate -------------------------------------------------------------------------------
def _migrate_args(m: Migration) -> dict[str, Any]:
    from .steps.revert import file_digests

    return {"migration": m.id, **file_digests(m)}


def migrate_up(settings: Settings, migrator: Migrator, target_id: str | None, why: Why,
               on_applied: Callable[[AppliedMigration], None] | None = None,
               observer: Observer | None = None) -> list[AppliedMigration]:
    op_id = new_op_id()
    with acting(settings, migrator.target, migrator.lock()) as lg:
        todo = migrator.plan_up(target_id)
        if not todo:
            return []
        done: list[AppliedMigration] = []
        args = {"to": target_id, "migrations": [m.id for m in todo]}
        with recording(lg, op_id, "migrate.up", migrator.target.display, args, why,
                       observer=observer) as rec:
            for m in todo:
                def effect(m: Migration = m) -> dict[str, Any]:
                    a = migrator.apply(m, run_id=op_id)
                    done.append(a)
                    return {**_migrate_args(m), "execution_ms": a.execution_ms}

                rec.step(f"migrate:{m.id}", "migrate",
                         {**_migrate_args(m), "no_transaction": m.no_transaction}, effect)
                if on_applied is not None:
                    on_applied(done[-1])
        return done


def migrate_down(settings: Settings, migrator: Migrator, to_tag: str, why: Why, yes: bool,
                 confirm: Confirm | None,
                 on_reverted: Callable[[Migration], None] | None = None,
                 observer: Observer | None = None) -> list[str]:
    from .steps.revert import revert_one

    how = confirmation("migrate.down", yes, confirm)
    op_id = new_op_id()
    with acting(settings, migrator.target, migrator.lock()) as lg:
        plan = migrator.plan_down_to_tag(to_tag)
        if not plan:
            return []
        ids = [m.id for m in plan]
        ask("migrate.down", how, confirm,
            f"revert {len(ids)} migration{'s' if len(ids) != 1 else ''} on "
            f"{migrator.target.shown} down to tag {to_tag} ({', '.join(ids)}), running "
            "their down parts?")
        out: list[str] = []
        with recording(lg, op_id, "migrate.down", migrator.target.display,
                       {"to_tag": to_tag, "migrations": ids}, why, how, observer) as rec:
            for m in plan:
                rec.step(f"revert:{m.id}", "revert", _migrate_args(m),
                         lambda m=m: revert_one(migrator, m.id, op_id))  # type: ignore[misc]
                out.append(m.id)
                if on_reverted is not None:
                    on_reverted(m)
        return out


def migrate_tag(settings: Settings, migrator: Migrator, name: str, why: Why,
                observer: Observer | None = None) -> Tag:
    from .migrations import check_tag_name

    check_tag_name(name)
    op_id = new_op_id()
    with acting(settings, migrator.target, migrator.lock()) as lg:
        at = migrator.check_new_tag(name)
        made: list[Tag] = []
        with recording(lg, op_id, "migrate.tag", migrator.target.display,
                       {"tag": name, "migration": at}, why, observer=observer) as rec:
            def effect() -> dict[str, Any]:
                made.append(migrator.tag(name, run_id=op_id))
                return {"tag": name, "created": True, "migration": made[0].migration_id}

            rec.step(f"tag:{name}", "tag", {"tag": name}, effect)
        return made[0]


def _row(r: AppliedMigration) -> dict[str, Any]:
    return {"migration": r.id, "checksum": r.checksum, "applied_at": r.applied_at,
            "run_id": r.run_id}


def migrate_baseline(settings: Settings, migrator: Migrator, tag: str, through: str | None,
                     force: bool, why: Why, observer: Observer | None = None
                     ) -> tuple[BaselinePlan, str | None]:
    """Record the migrations up to ``through`` as applied without running them, and tag
    the state, as a ``migrate.baseline`` operation: its one step announces every file's
    checksums (and, forced, the rows and tags it replaces) before anything is written, and
    its result carries the database's fingerprint, read under the lock just before the rows
    are written. Returns the plan and the operation id (None: the changelog already is this
    baseline, nothing recorded)."""
    from .fingerprint import fingerprint
    from .migrations import check_tag_name

    check_tag_name(tag, "--tag")
    op_id = new_op_id()
    with acting(settings, migrator.target, migrator.lock()) as lg:
        plan = migrator.plan_baseline(tag, through, force=force)
        if not plan.changes:
            return plan, None
        ids = [m.id for m in plan.migrations]
        args = {"tag": tag, "through": plan.through, "force": force, "migrations": ids}
        step_args: dict[str, Any] = {
            "tag": tag, "through": plan.through, "force": force,
            "migrations": [_migrate_args(m) for m in plan.migrations],
            "written": list(plan.write),
        }
        if plan.replaced or plan.replaced_tags:
            step_args["replaced"] = {
                "migrations": [_row(r) for r in plan.replaced],
                "tags": [{"tag": t.name, "migration": t.migration_id, "run_id": t.run_id}
                         for t in plan.replaced_tags]}
        with recording(lg, op_id, "migrate.baseline", migrator.target.display, args, why,
                       observer=observer) as rec:
            def effect() -> dict[str, Any]:
                fp = fingerprint(migrator.target)
                migrator.baseline(plan, run_id=op_id)
                return {"tag": tag, "through": plan.through, "recorded": len(plan.write),
                        "fingerprint": fp.to_dict(), "fingerprint_digest": fp.digest}

            rec.step(f"baseline:{tag}", "baseline", step_args, effect)
        return plan, op_id


# -- backup --------------------------------------------------------------------------------
def _require_target(manager: BackupManager) -> Target:
    if manager.target is None:
        raise ConfigError("no target database: set [target] url or pass --target")
    return manager.target


def backup_create(settings: Settings, manager: BackupManager, backup_id: str | None,
                  why: Why, observer: Observer | None = None) -> Manifest:
    from .backups.model import check_backup_id, new_backup_id
    from .migrations.lock import TargetLock
    from .steps import manifest_result

    target = _require_target(manager)
    bid = check_backup_id(backup_id) if backup_id else new_backup_id(clock.now())
    op_id = new_op_id()
    with acting(settings, target, TargetLock(target, clock.now).hold()) as lg:
        if manager.probe(bid) is not None:
            raise BackupError(f"backup {bid} already exists in {manager.backup_dir}")
        made: list[Manifest] = []
        with recording(lg, op_id, "backup.create", target.display,
                       {"backup_id": bid, "method": manager.method}, why,
                       observer=observer) as rec:
            def effect() -> dict[str, Any]:
                made.append(manager.create(bid))
                return manifest_result(made[0])

            rec.step("backup", "backup", {"backup_id": bid, "method": manager.method}, effect)
        return made[0]


def restore_result(r: RestoreResult) -> dict[str, Any]:
    """What a ``restore`` step of an operation records: the backup (id, method, size,
    sha256), the target's fingerprint digests before and after, and what the restore undid."""
    m = r.manifest
    return {"backup_id": m.id, "method": m.method, "size": m.size, "sha256": m.sha256,
            "fingerprint_before": r.before.digest if r.before is not None else None,
            "fingerprint_after": r.fingerprint.digest if r.fingerprint is not None else None,
            "undone": list(r.damage)}


def backup_restore(settings: Settings, manager: BackupManager, backup_id: str,
                   allow_other_database: bool, why: Why, yes: bool, confirm: Confirm | None,
                   observer: Observer | None = None, without_ledger: bool = False
                   ) -> RestoreResult:
    """Restore a backup outside a run, under the target lock (LockHeld while a run or a
    migrate holds it). With the server down (a pgBackRest restore interrupted, the ledger
    lost) it goes on and takes the lock as soon as the restarted server accepts connections.
    ``without_ledger`` (the ledger is lost or unreachable): nothing is verified or recorded."""
    from .migrations.lock import TargetLock

    how = confirmation("backup.restore", yes, confirm)
    target = _require_target(manager)
    op_id = new_op_id()
    lock = TargetLock(target, clock.now)

    def retake() -> None:
        lock.ensure()

    def restore() -> RestoreResult:
        return manager.restore(backup_id, allow_other_database=allow_other_database,
                               reconnected=retake)

    def question(m: Manifest) -> str:
        return (f"restore backup {m.id} ({m.method}, taken {m.created_at}) into "
                f"{target.shown}, discarding every change made since it was taken?")

    if without_ledger:
        with lock.hold(defer_unreachable=manager.restarts_server):
            m = manager.verify(backup_id)
            ask("backup.restore", how, confirm, question(m))
            return restore()
    with acting(settings, target, lock.hold(defer_unreachable=manager.restarts_server)) as lg:
        m = manager.verify(backup_id)  # unknown or corrupt: refused before anything
        recorded = recorded_backup(lg, backup_id)
        _matches_the_record(m, recorded)
        if not allow_other_database:
            manager.check_identity(m)
        ask("backup.restore", how, confirm, question(m))
        done: list[RestoreResult] = []
        with recording(lg, op_id, "backup.restore", target.display,
                       {"backup_id": backup_id, "allow_other_database": allow_other_database},
                       why, how, observer) as rec:
            def effect() -> dict[str, Any]:
                done.append(restore())
                return restore_result(done[0])

            rec.step("restore", "restore", {"backup_id": backup_id, "method": m.method,
                                            "recorded": recorded is not None}, effect)
        return done[0]


def recorded_backup(lg: Ledger, backup_id: str) -> dict[str, Any] | None:
    """The ledger's record of backup ``backup_id``: the result of the backup step (of a run
    or a ``backup.create`` operation) that took it, None when no history records it (a
    backup taken before operations were recorded). Histories that cannot be replayed are
    skipped here: they are reported by ``history`` and the report."""
    from .replay import Run
    from .upgrade import scan_runs

    found: dict[str, Any] | None = None
    for op in scan_ops(lg):
        # the latest: an id freed by ``backup prune`` may be taken again by a later backup
        if isinstance(op, Operation) and (b := op.backup) and b.get("backup_id") == backup_id:
            found = b
    if found is not None:
        return found
    for r in scan_runs(lg):
        if isinstance(r, Run) and (b := r.backup) and b.get("backup_id") == backup_id:
            return dict(b)
    return None


def _matches_the_record(m: Manifest, recorded: dict[str, Any] | None) -> None:
    """The artifact (which verify just matched with its manifest) is the one the ledger
    recorded when it was taken: a manifest lives beside the file and is replaced with it."""
    if recorded is None:
        return
    if recorded.get("sha256") != m.sha256 or recorded.get("size") != m.size:
        raise BackupCorrupt(
            f"backup {m.id}: the artifact has sha256 {m.sha256[:12]} ({m.size} bytes); the "
            f"ledger recorded {str(recorded.get('sha256'))[:12]} ({recorded.get('size')} "
            "bytes) when it was taken: refusing to restore it"
        )


def backup_prune(settings: Settings, manager: BackupManager, why: Why, yes: bool,
                 confirm: Confirm | None, dry_run: bool = False,
                 observer: Observer | None = None) -> list[Verdict]:
    """Apply ``[backup] keep`` / ``keep_days`` (:mod:`statekeeper.retention`) under the target
    lock, as a ``backup.prune`` operation with one ``prune`` step per backup deleted (its id,
    method, size, sha256 and why). ``dry_run``: decide only; nothing is confirmed, deleted or
    recorded. Nothing to delete records nothing. Returns every backup's verdict."""
    from . import retention
    from .migrations.lock import TargetLock

    cfg = settings.config
    keep, keep_days = retention.rules(cfg.backup.keep, cfg.backup.keep_days, cfg.source)
    how = confirmation("backup.prune", yes, confirm) if not dry_run else "--yes"
    target = _require_target(manager)
    op_id = new_op_id()
    with acting(settings, target, TargetLock(target, clock.now).hold()) as lg:
        from .upgrade import scan_runs

        operations = scan_ops(lg)
        known = retention.read_ledger(scan_runs(lg), operations)
        verdicts = retention.decide(manager.list(), known, keep, keep_days, clock.now())
        gone = [v for v in verdicts if v.delete]
        # the directories an earlier prune was deleting when it stopped (manifest gone)
        left = [b for b in retention.unfinished_deletions(operations)
                if manager.has_leftovers(b)]
        if dry_run or not (gone or left):
            return verdicts
        count, size = retention.summary(verdicts)
        from .sizes import size_text

        ask("backup.prune", how, confirm,
            f"delete {count} backup{'s' if count != 1 else ''} ({size_text(size)}) from "
            f"{manager.backup_dir}: {', '.join(v.manifest.id for v in gone)}"
            + (f" (and the leftovers of {', '.join(left)})" if left else "") + "?")
        with recording(lg, op_id, "backup.prune", target.display,
                       {"keep": keep, "keep_days": keep_days,
                        "backups": [v.manifest.id for v in gone],
                        **({"leftovers": left} if left else {})},
                       why, how, observer) as rec:
            for v in gone:
                m = v.manifest
                rec.step(f"prune:{m.id}", "prune",
                         {"backup_id": m.id, "method": m.method, "size": m.size,
                          "sha256": m.sha256, "created_at": v.at, "why": v.why},
                         lambda m=m: manager.delete(m.id))  # type: ignore[misc]
            for bid in left:
                rec.step(f"prune:{bid}", "prune",
                         {"backup_id": bid, "why": "the leftovers of an interrupted prune"},
                         lambda bid=bid: manager.remove_leftovers(bid) or {})  # type: ignore[misc]
        return verdicts


# -- keys ------------------------------------------------------------------------------------
def keys_rotate(settings: Settings, new_key: Path, why: Why,
                observer: Observer | None = None) -> StoredEvent:
    """Introduce a new signing key (``ledger.key_rotated`` in stream ``ledger``, sealed by the
    old key), as the step of a ``keys.rotate`` operation: its ids are recorded, never key
    material. The operation's events after the rotation are sealed by the new key."""
    import ledger

    new = ledger.load_signer(new_key)
    with contextlib.closing(open_verified(settings)) as lg:
        assert lg.signer is not None
        old_id = lg.signer.key_id
        if new.key_id == old_id:
            raise ConfigError(f"--new-key {new_key}: the new key is already the signing key")
        known = [k.key_id for k in lg.keys()]  # noqa: SIM118 (a Ledger is no mapping)
        if new.key_id in known:
            raise ConfigError(f"--new-key {new_key}: key {new.key_id[:16]}... was used by this "
                              "ledger before; a retired key is never brought back: generate "
                              "a new one")
        ids = {"old_key_id": old_id, "new_key_id": new.key_id}
        rotated: list[StoredEvent] = []
        with recording(lg, new_op_id(), "keys.rotate", None, dict(ids), why,
                       observer=observer) as rec:
            def effect() -> dict[str, Any]:
                rotated.append(lg.rotate_key(new))
                return {**ids, "seq": rotated[0].seq}

            rec.step("keys.rotate", "keys.rotate", dict(ids), effect)
        return rotated[0]


# -- init --------------------------------------------------------------------------------------
def record_init(settings: Settings, lg: Ledger, created: dict[str, Any], kept: list[str],
                target: str | None, why: Why, observer: Observer | None = None) -> str | None:
    """The ``init`` operation, after the files exist (the ledger needs the key before it can
    record anything): on a new ledger its ``op.created`` is the first event after the
    genesis (appended with it); on an existing one it is recorded only if init created
    something (a re-run that keeps everything changes nothing and records nothing). Returns
    the operation id, or None."""
    from .trust import verify_before_act

    new = lg.ledger_id() is None
    if not new and not created:
        return None
    if not new:
        verify_before_act(lg, settings.config.base_dir)
    op_id = new_op_id()
    assert lg.signer is not None
    key_id = lg.signer.key_id
    args = {"config": str(settings.config.path) if settings.config.path else None,
            "ledger": lg.display_url}
    with recording(lg, op_id, "init", target, args, why, observer=observer) as rec:
        created_now = {**created, **({"ledger": lg.display_url} if new else {})}
        rec.step("init", "init", {}, lambda: {"created": created_now, "kept": kept,
                                              "key_id": key_id,
                                              "ledger_id": lg.ledger_id()})
    if new:
        verify_before_act(lg, settings.config.base_dir)  # the first local checkpoint
    return op_id


# -- reading -----------------------------------------------------------------------------------
def read_op(lg: Ledger, op_id: str) -> Operation | None:
    """The operation rebuilt from its stream (None if it has no events); HistoryError if
    its events cannot be applied."""
    from .runner import to_run_event

    events = [to_run_event(ev) for ev in lg.read_stream(stream_of(op_id))]
    return replay(events, op_id) if events else None


def scan_ops(lg: Ledger) -> list[Operation | HistoryError]:
    """Every operation in the order created; one that cannot be replayed is its
    HistoryError (``op_id`` set on it), so it never hides the others."""
    out: list[Operation | HistoryError] = []
    for name, *_ in lg.streams(STREAM_PREFIX):
        op_id = name[len(STREAM_PREFIX):]
        try:
            op = read_op(lg, op_id)
        except (HistoryError, ValueError) as e:
            err = e if isinstance(e, HistoryError) else HistoryError(0, f"unreadable: {e}")
            err.op_id = op_id  # type: ignore[attr-defined]
            out.append(err)
            continue
        if op is not None:
            out.append(op)
    return out
