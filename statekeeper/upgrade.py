"""Orchestration of upgrade runs: plan, start, resume, rollback, status, history.

Builds the runner's environment from the configuration, takes the lease and the target lock,
and hands over to :class:`statekeeper.runner.Runner`. :mod:`statekeeper.command` exposes
these as the public verbs.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ledger import Ledger, VerifyResult, normalize_url

from . import __version__, clock
from .errors import ConfigError, IntegrityError, LockHeld, NeedsAttention
from .lease import Holder, LeaseStore
from .machine import IN_FLIGHT, TERMINAL
from .replay import OPERATOR_ROLLBACK, STEP_FAILED, STEP_SUCCEEDED, HistoryError, Run
from .runner import (
    STREAM_PREFIX,
    Environment,
    Observer,
    Runner,
    manifest_result,
    stream_of,
    tag_names,
    to_run_event,
)

# A run in any other state blocks a new one on its target: in flight, or failed (a human).
SETTLED = ("completed", "rolled_back")

if TYPE_CHECKING:
    from .command import Settings


def new_run_id() -> str:
    return f"{clock.now():%Y%m%d-%H%M%S}-{uuid.uuid4().hex[:6]}"


def build_env(settings: Settings) -> Environment:
    from .backups import BackupManager
    from .health import validate_health
    from .migrations import Migrator
    from .targets import Target

    cfg = settings.config
    target = Target.from_url(cfg.require_target(), cfg.base_dir)
    migrator = Migrator(target, cfg.require_migrations_dir(), clock=clock.now)
    backups = None
    if cfg.backup.enabled:
        b = cfg.backup
        backups = BackupManager(
            target,
            cfg.backup_method(),
            cfg.backup_dir(),
            stanza=b.stanza,
            stop_command=b.stop_command,
            start_command=b.start_command,
            pgbackrest_config=b.pgbackrest_config,
            clock=clock.now,
        )
    checks = validate_health(cfg.raw.get("health", {}), cfg.source)
    return Environment(target, migrator, backups, checks)


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


def upgrade_from(env: Environment, from_version: str | None) -> str:
    """The version the schema is at now, which the run upgrades from. ``--from`` must name
    the current schema: a tag of the changelog that names another state is refused, and so
    is a new name for a schema that already has one (exit 2). Without it: the newest tag of
    the current schema."""
    from .migrations import natural_key

    applied = env.migrator.validate()
    current = max((r.id for r in applied), key=natural_key, default=None)
    tags = env.migrator.tags()
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


def build_plan(
    settings: Settings, env: Environment, to_version: str, from_version: str | None
) -> dict[str, Any]:
    cfg = settings.config
    check_versions(to_version, from_version)
    from_v = upgrade_from(env, from_version)
    if to_version == from_v or to_version in tag_names(env.migrator):
        raise ConfigError(f"--to {to_version}: the schema is already tagged {to_version}")
    pending = env.migrator.pending()
    migrations = [
        {
            "id": m.id,
            "checksum": m.checksum,
            "reversible": m.down is not None,
            "no_transaction": m.no_transaction,
        }
        for m in pending
    ]
    backup = {
        "enabled": env.backups is not None,
        "method": cfg.backup_method() if env.backups is not None else None,
    }
    steps = ["preflight"]
    if backup["enabled"]:
        steps.append(f"backup ({backup['method']})")
    steps.append(f"tag {from_v}")
    steps += [f"migrate {m['id']}" for m in migrations]
    steps += ["health checks", f"tag {to_version}"]
    return {
        "run_id": new_run_id(),
        "application": str(cfg.raw.get("upgrade", {}).get("application") or cfg.base_dir.name),
        "from_version": from_v,
        "to_version": to_version,
        "target": env.target.display,
        "backend": env.target.backend,
        "migrations_dir": str(env.migrator.migrations_dir),
        "migrations": migrations,
        "irreversible": [m["id"] for m in migrations if not m["reversible"]],
        "backup": backup,
        "health_checks": [c["name"] for c in env.health_checks],
        "steps": steps,
        "tool": f"statekeeper/{__version__}",
        "config": cfg.source,
    }


def lease_store(settings: Settings) -> LeaseStore:
    return LeaseStore(normalize_url(settings.ledger_url, settings.config.base_dir))


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


def replay_run(lg: Ledger, run_id: str) -> Run | Unreadable | None:
    """The run rebuilt from its stream; :class:`Unreadable` if that fails; None if the stream
    is empty."""
    from .replay import apply

    run: Run | None = None
    first: dict[str, Any] = {}
    ev = None
    try:
        for ev in lg.read_stream(stream_of(run_id)):
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


def all_runs(lg: Ledger) -> list[Run]:
    """The runs that can be replayed (see :func:`scan_runs` for the others)."""
    return [r for r in scan_runs(lg) if isinstance(r, Run)]


def unfinished_for(lg: Ledger, target_display: str) -> list[Run]:
    """Runs on this target that are not settled: in flight, or failed (awaiting a human).
    A run on this target that cannot be replayed may be unfinished too: IntegrityError."""
    out: list[Run] = []
    for r in scan_runs(lg):
        if isinstance(r, Unreadable):
            if r.target == target_display:
                raise IntegrityError(
                    f"run {r.run_id} on this target cannot be replayed ({r.reason}); whether "
                    "it finished is unknown, so nothing is done to the target"
                )
        elif r.plan.get("target") == target_display and r.state not in SETTLED:
            out.append(r)
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
    settings: Settings,
    env: Environment,
    run_id: str,
    *,
    takeover: bool,
    abandoned: Callable[[Holder], bool] | None = None,
) -> Iterator[Holder | None]:
    """Hold the lease (ledger database) and the target lock for the whole run."""
    store = lease_store(settings)
    try:
        lease, previous = store.acquire(
            env.target.display, run_id, takeover=takeover, abandoned=abandoned
        )
        try:
            with env.migrator.lock(run_id=run_id):
                yield previous
        finally:
            lease.release()
    finally:
        store.dispose()


def _live_holder(settings: Settings, env: Environment) -> Holder | None:
    store = lease_store(settings)
    try:
        h = store.holder(env.target.display)
        return h if h is not None and store.is_alive(h) else None
    finally:
        store.dispose()


@contextlib.contextmanager
def _closing(settings: Settings, lg: Ledger, runner: Runner) -> Iterator[None]:
    """End a session on a run: record why it ended, and checkpoint a terminal state, while the
    lease is still held (a crash in between leaves the lease for resume to find)."""
    try:
        yield
    except BaseException as e:
        if runner.run is not None and not isinstance(e, KeyboardInterrupt | SystemExit):
            with contextlib.suppress(Exception):  # best effort: the ledger may be what failed
                runner.release_event(error=f"{type(e).__name__}: {e}")
        raise
    runner.release_event()
    if runner.run is not None:
        _checkpoint(settings, lg, runner.run)


def start(
    settings: Settings,
    to_version: str,
    from_version: str | None = None,
    observer: Observer | None = None,
) -> Run:
    check_versions(to_version, from_version)
    env = build_env(settings)
    with settings.open_ledger(signing=True) as lg:
        verify_before_acting(settings, lg, None)
        holder = _live_holder(settings, env)
        if holder is not None:
            raise LockHeld(f"target is locked by {holder.describe()}")
        busy = unfinished_for(lg, env.target.display)
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
        plan = build_plan(settings, env, to_version, from_version)
        runner = Runner(lg, env, observer)

        def void(h: Holder) -> bool:  # died before its run was recorded: nothing to resume
            return lg.stream_position(stream_of(h.run_id)) == 0

        with holding(settings, env, plan["run_id"], takeover=False, abandoned=void) as previous:
            runner.create(plan)
            with _closing(settings, lg, runner):
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
) -> Run:
    env = build_env(settings)
    with settings.open_ledger(signing=True) as lg:
        if run_id is None:
            verified = verify_before_acting(settings, lg, None)
            run_id = _run_to_resume(settings, lg, env)
            lg.verify_stream(stream_of(run_id), upto=verified.head.seq)
        else:
            verify_before_acting(settings, lg, run_id)
        run = load_run(lg, run_id)
        if run.plan.get("target") != env.target.display:
            raise ConfigError(
                f"run {run_id} upgraded {run.plan.get('target')}, not {env.target.display}"
            )
        if run.state in SETTLED and not _holds_lease(settings, env, run_id):
            _checkpoint(settings, lg, run, only_if_missing=True)
            return run
        runner = Runner(lg, env, observer)
        runner.run = run
        with holding(settings, env, run_id, takeover=True) as previous, _closing(
            settings, lg, runner
        ):
            mode = "rollback" if rollback else "forward"
            runner.lease_events(previous, resumed=True, mode=mode)
            settle(runner)
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
        return runner.run


def _run_to_resume(settings: Settings, lg: Ledger, env: Environment) -> str:
    """The unfinished run on this target, or a finished one whose dead process kept the lease
    (it died between its last state change and releasing the target)."""
    busy = unfinished_for(lg, env.target.display)
    if busy:
        return busy[-1].run_id
    store = lease_store(settings)
    try:
        holder = store.holder(env.target.display)
        if (
            holder is not None
            and not store.is_alive(holder)
            and lg.stream_position(stream_of(holder.run_id)) > 0
        ):
            return holder.run_id
    finally:
        store.dispose()
    raise ConfigError("no unfinished run on this target to resume")


def _holds_lease(settings: Settings, env: Environment, run_id: str) -> bool:
    store = lease_store(settings)
    try:
        holder = store.holder(env.target.display)
        return holder is not None and holder.run_id == run_id
    finally:
        store.dispose()


def rollback(
    settings: Settings, run_id: str, restore: bool = False, observer: Observer | None = None
) -> Run:
    env = build_env(settings)
    with settings.open_ledger(signing=True) as lg:
        verify_before_acting(settings, lg, run_id)
        run = load_run(lg, run_id)
        if run.state != "completed":
            raise ConfigError(
                f"run {run_id} is {run.state}: only a completed run can be rolled back "
                "(an unfinished one: 'statekeeper resume RUN_ID --rollback')"
            )
        later: list[Run] = []
        for r in scan_runs(lg):
            if isinstance(r, Unreadable):
                if r.target == env.target.display and r.created_at > run.created_at:
                    raise IntegrityError(
                        f"run {r.run_id} on this target, after {run_id}, cannot be replayed "
                        f"({r.reason}); whether it changed the schema is unknown"
                    )
            elif (r.plan.get("target") == env.target.display
                  and r.created_at > run.created_at and r.state == "completed"):
                later.append(r)
        if later:
            raise ConfigError(
                f"run {later[-1].run_id} completed after {run_id}: roll that back first"
            )
        by_id = {m["id"]: m for m in run.plan.get("migrations", [])}
        irreversible = [m for m in run.migrations_applied() if not by_id[m].get("reversible")]
        if irreversible and not restore:
            raise ConfigError(
                f"run {run_id} applied {irreversible[0]}, which has no down part: undoing it "
                "means restoring the backup, which discards every change made since it was "
                "taken; pass --restore to accept that"
            )
        runner = Runner(lg, env, observer)
        runner.run = run
        with holding(settings, env, run_id, takeover=True) as previous, _closing(
            settings, lg, runner
        ):
            runner.lease_events(previous, resumed=True, mode="rollback")
            runner.transition("rollback", "operator rolled back a completed upgrade",
                              restore=restore)
            runner.drive()
        return runner.run


def settle(runner: Runner) -> None:
    """Decide an in-doubt step by its own probe before anything is redone or compensated."""
    run = runner.run
    assert run is not None
    step = run.open_step
    if step is None:
        return
    env = runner.env
    base = {"step": step.name, "kind": step.kind}
    happened, result = False, None
    if step.kind == "backup" and env.backups is not None:
        m = env.backups.probe(step.args["backup_id"])
        if m is not None:
            happened, result = True, manifest_result(m)
    elif step.kind == "tag":
        name = step.args["tag"]
        t = next((t for t in env.migrator.tags() if t.name == name), None)
        mine = t is not None and t.run_id == run.run_id
        # the new version's tag counts only if this run made it (the step's own check)
        happened = t is not None and (mine or name != run.to_version)
        result = {"tag": name, "created": mine}
    elif step.kind == "untag":
        name = step.args["tag"]
        happened = not any(t.name == name and t.run_id == run.run_id
                           for t in env.migrator.tags())
        result = {"tag": name}
    elif step.kind == "migrate":
        happened = env.migrator.is_applied(step.args["migration"])
        result = {"migration": step.args["migration"], "checksum": step.args.get("checksum")}
        if not happened and step.args.get("no_transaction"):
            # Its SQL runs outside a transaction and its changelog row comes after: without
            # the row nobody can say how much of it ran. Never rerun it; roll back instead,
            # where the fingerprint decides what a restore must undo.
            runner.emit(STEP_FAILED, {**base, "error": (
                "interrupted; it runs outside a transaction, so its effect is unknown")})
            return
    elif step.kind == "revert":
        happened = not env.migrator.is_applied(step.args["migration"])
        result = {"migration": step.args["migration"]}
    if happened:
        runner.emit(STEP_SUCCEEDED, {**base, "recovered": True, "result": result or {}})
    else:
        runner.emit(STEP_FAILED, {**base, "recovered": True,
                                  "error": "interrupted before it took effect; redoing it"})


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
    from .command import write_atomic
    from .trust import verify_before_act

    # Over a head verified now: never vouch for what this session did not see verify.
    write_atomic(path, lg.checkpoint(verify_before_act(lg, settings.config.base_dir)))
    return path


def status(settings: Settings, run_id: str | None = None) -> Run:
    """One run (default: the latest); IntegrityError (exit 4) if it cannot be replayed."""
    with settings.open_ledger(signing=False) as lg:
        verified = verify_before_acting(settings, lg, run_id)
        if run_id is None:
            names = lg.streams(STREAM_PREFIX)
            if not names:
                raise ConfigError("no runs in the ledger yet")
            run_id = names[-1][0][len(STREAM_PREFIX) :]
            lg.verify_stream(stream_of(run_id), upto=verified.head.seq)
        return load_run(lg, run_id)


def history(settings: Settings) -> list[Run | Unreadable]:
    """Every run in the order created; those that cannot be replayed as :class:`Unreadable`."""
    with settings.open_ledger(signing=False) as lg:
        verify_before_acting(settings, lg, None)
        return scan_runs(lg)


def plan(settings: Settings, to_version: str, from_version: str | None = None) -> dict[str, Any]:
    check_versions(to_version, from_version)
    env = build_env(settings)
    return build_plan(settings, env, to_version, from_version)
