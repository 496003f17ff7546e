"""The public verbs of statekeeper. The CLI parses arguments and calls these; they return values
or raise :mod:`statekeeper.errors` / :mod:`ledger.errors`, and never print or exit."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import files
from .errors import ConfigError, boundary
from .settings import Settings

# Start-up cost: ``ledger`` (SQLAlchemy, cryptography) and ``.migrations`` (psycopg) are
# imported by the verbs that use them, not here, so that the CLI's ``--help`` and usage
# errors stay fast (cli/main.py). The migration types stay attributes of this module, loaded
# on first access (PEP 562 ``__getattr__`` below).
if TYPE_CHECKING:
    import ledger
    from ledger import Checkpoint, PublicKey

    from .backups import BackupManager, Manifest, RestoreResult
    from .health import HealthReport
    from .migrations import AppliedMigration, BaselinePlan, Migration, MigrationStatus, Tag
    from .migrations.driver import MigrationDriver
    from .ops import Confirm
    from .ops import Observer as OpObserver
    from .plan import Plan
    from .replay import Run
    from .retention import Verdict
    from .runner import Observer
    from .showconfig import Entry
    from .upgrade import ServerState, Unreadable

_FROM_MIGRATIONS = ("AppliedMigration", "Migration", "MigrationStatus", "Migrator", "Tag")


def __getattr__(name: str) -> Any:
    if name in _FROM_MIGRATIONS:
        from . import migrations

        return getattr(migrations, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


#: Streams statekeeper replays (runs, operations): `ledger append` may not write into them.
RESERVED_STREAM_PREFIXES = ("upgrade/", "ops/")


def _write_out(path: Path, text: str) -> None:
    """Write a file the user named (``--out``, ``--config``): wholly or not at all, and a
    directory that is not there is the user's mistake (exit 2), not an outage."""
    if not path.parent.is_dir():
        raise ConfigError(f"{path}: directory {path.parent} does not exist")
    try:
        files.write_atomic(path, text)
    except OSError as e:
        raise ConfigError(f"{path}: cannot write: {e.strerror}") from e


# -- keys ------------------------------------------------------------------------------------
@boundary
def keys_generate(out: Path) -> ledger.Signer:
    import ledger

    return ledger.generate_key_file(out)


@boundary
def keys_rotate(settings: Settings, new_key: Path, *, reason: str | None = None,
                ticket: str | None = None, observer: OpObserver | None = None
                ) -> ledger.StoredEvent:
    """Rotate the signing key, recorded as a ``keys.rotate`` operation (old and new key ids)."""
    from . import ops
    from .why import why

    w = why(settings.config, reason, ticket, "the key rotation")
    return ops.keys_rotate(settings, new_key, w, observer)


@boundary
def keys_list(settings: Settings) -> list[ledger.KeyRecord]:
    with settings.open_ledger(signing=False) as lg:
        return lg.keys()


# -- ledger ----------------------------------------------------------------------------------
@boundary
def ledger_append(
    settings: Settings,
    stream: str,
    type_: str,
    payload: dict[str, Any],
    expected_position: int | None = None,
) -> ledger.StoredEvent:
    from ledger import NewEvent

    if stream.lower().startswith(RESERVED_STREAM_PREFIXES):
        raise ConfigError(
            f"--stream {stream}: streams under {', '.join(RESERVED_STREAM_PREFIXES)} are "
            "reserved for statekeeper's own runs and operations, which it replays"
        )
    with settings.open_ledger(signing=True) as lg:
        return lg.append(stream, NewEvent(type_, payload), expected_position=expected_position)[-1]


@boundary
def read_checkpoint(path: Path) -> Checkpoint:
    import ledger

    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as e:
        raise ConfigError(f"{path}: checkpoint file not found") from e
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read checkpoint: {e}") from e
    return ledger.parse_checkpoint(text, str(path))


@boundary
def load_trusted(paths: list[Path]) -> list[PublicKey]:
    import ledger

    return [ledger.load_public_key(p) for p in paths]


@boundary
def ledger_verify(
    settings: Settings, against: Path | None = None, trusted: list[Path] | None = None
) -> ledger.VerifyResult:
    cp = read_checkpoint(against) if against else None
    keys = load_trusted(trusted or [])
    with settings.open_ledger(signing=False) as lg:
        return lg.verify(against=cp, trusted=keys)


@boundary
def ledger_checkpoint(settings: Settings, out: Path) -> str:
    with settings.open_ledger(signing=True, create=False) as lg:
        verified = lg.verify()  # never sign a head that does not verify
        text = lg.checkpoint(verified)
    _write_out(out, text)
    return text


@boundary
def ledger_export(settings: Settings, out: Path, stream: str | None = None) -> ledger.ExportResult:
    import ledger

    if not out.parent.is_dir():
        raise ConfigError(f"{out}: directory {out.parent} does not exist")
    try:
        with (
            settings.open_ledger(signing=True, create=False) as lg,
            files.atomic_file(out) as f,
        ):
            result = ledger.export(lg, f, stream=stream)
    except OSError as e:
        raise ConfigError(f"{out}: cannot write: {e.strerror}") from e
    return result


@boundary
def ledger_verify_export(
    path: Path, against: Path | None = None, trusted: list[Path] | None = None
) -> ledger.ExportVerifyResult:
    import ledger

    cp = read_checkpoint(against) if against else None
    return ledger.verify_export(path, against=cp, trusted=load_trusted(trusted or []))


# --- migrate verbs (statekeeper.migrations) ---
def _flag_target(url: str) -> str:
    """``--target URL`` of migrate and backup: refused as one line naming the flag when
    empty or not a database URL (the upgrade verbs' goes through Settings.load)."""
    from .config import check_given, check_url

    check_given(url, "--target URL", "leave it out to use [target] url")
    return check_url(url, "--target URL", Path.cwd())



@boundary
def open_migrator(
    settings: Settings, target_url: str | None = None, migrations_dir: Path | None = None
) -> MigrationDriver:
    """A Migrator from ``[target] url`` and ``[migrations] dir``; the ``--target``/``--dir``
    flags override them (relative paths then resolve against the working directory). With
    ``[migrations] tool = "liquibase"``: the Liquibase driver on the configured changelog."""
    from . import clock
    from .migrations import Migrator
    from .migrations.driver import open_driver
    from .targets import Target

    cfg = settings.config
    if target_url is not None:
        target = Target.from_url(_flag_target(target_url), Path.cwd())
    elif cfg.target_url:
        target = Target.from_url(cfg.target_url, cfg.base_dir)
    else:
        where = cfg.path or "statekeeper.toml"
        raise ConfigError(f"no target database: set [target] url in {where} or pass --target URL")
    if cfg.migrations_tool == "liquibase":
        if migrations_dir is not None:
            raise ConfigError("--dir: [migrations] tool is liquibase, which reads "
                              "[migrations] changelog, not a directory")
        return open_driver(cfg, target, clock=clock.now, artifacts=settings.artifacts_dir)
    if migrations_dir is not None:
        d = migrations_dir.expanduser().absolute()
        if not d.is_dir():
            what = "does not exist" if not d.exists() else "is not a directory"
            raise ConfigError(f"--dir {migrations_dir}: migrations directory {d} {what}")
    elif cfg.migrations_dir is not None:
        d = cfg.require_migrations_dir()
    else:
        where = cfg.path or "statekeeper.toml"
        raise ConfigError(
            f"no migrations directory: set [migrations] dir in {where} or pass --dir DIR"
        )
    return Migrator(target, d)


@boundary
def migrate_status(
    settings: Settings, target_url: str | None = None, migrations_dir: Path | None = None
) -> tuple[list[MigrationStatus], list[Tag]]:
    m = open_migrator(settings, target_url, migrations_dir)
    return m.status(), m.tags()


@boundary
def migrate_validate(
    settings: Settings, target_url: str | None = None, migrations_dir: Path | None = None
) -> tuple[list[AppliedMigration], list[Migration]]:
    """(applied, pending) after validation; ValidationError names the offending file."""
    m = open_migrator(settings, target_url, migrations_dir)
    applied = m.validate()
    return applied, list(m.pending())


@boundary
def migrate_up(
    settings: Settings,
    target_url: str | None = None,
    migrations_dir: Path | None = None,
    *,
    target_id: str | None = None,
    on_applied: Any = None,
    reason: str | None = None,
    ticket: str | None = None,
    observer: OpObserver | None = None,
) -> list[AppliedMigration]:
    """Apply the pending migrations (up to ``target_id``) as a ``migrate.up`` operation."""
    from . import ops
    from .why import why

    w = why(settings.config, reason, ticket, "the migration")
    m = open_migrator(settings, target_url, migrations_dir)
    return ops.migrate_up(settings, m, target_id, w, on_applied, observer)


@boundary
def migrate_down(
    settings: Settings,
    target_url: str | None,
    migrations_dir: Path | None,
    to_tag: str,
    *,
    on_reverted: Any = None,
    reason: str | None = None,
    ticket: str | None = None,
    yes: bool = False,
    confirm: Confirm | None = None,
    observer: OpObserver | None = None,
) -> list[str]:
    """Revert to ``to_tag`` as a ``migrate.down`` operation: confirmed by ``yes`` (--yes) or
    by ``confirm`` (the operator on a terminal); neither is ConfigError naming --yes."""
    from . import ops
    from .why import why

    ops.confirmation("migrate.down", yes, confirm)
    w = why(settings.config, reason, ticket, "the rollback")
    m = open_migrator(settings, target_url, migrations_dir)
    return ops.migrate_down(settings, m, to_tag, w, yes, confirm, on_reverted, observer)


@boundary
def migrate_tag(
    settings: Settings,
    name: str,
    target_url: str | None = None,
    migrations_dir: Path | None = None,
    *,
    reason: str | None = None,
    ticket: str | None = None,
    observer: OpObserver | None = None,
) -> Tag:
    """Tag the current schema as a ``migrate.tag`` operation."""
    from . import ops
    from .migrations import check_tag_name
    from .why import why

    check_tag_name(name)
    w = why(settings.config, reason, ticket, "the tag")
    m = open_migrator(settings, target_url, migrations_dir)
    return ops.migrate_tag(settings, m, name, w, observer)


@boundary
def migrate_baseline(
    settings: Settings,
    tag: str,
    through: str | None = None,
    target_url: str | None = None,
    migrations_dir: Path | None = None,
    *,
    force: bool = False,
    reason: str | None = None,
    ticket: str | None = None,
    observer: OpObserver | None = None,
) -> tuple[BaselinePlan, str | None]:
    """Record the migrations up to ``through`` (default: all) as already applied, without
    running them, and tag that state, as a ``migrate.baseline`` operation carrying the
    database fingerprint. Returns the plan and the operation id (None: already so)."""
    from . import ops
    from .migrations import check_tag_name
    from .why import why

    check_tag_name(tag, "--tag")
    w = why(settings.config, reason, ticket, "the baseline")
    m = open_migrator(settings, target_url, migrations_dir)
    return ops.migrate_baseline(settings, m, tag, through, force, w, observer)


@boundary
def migrate_sql(
    settings: Settings,
    target_url: str | None = None,
    migrations_dir: Path | None = None,
    *,
    to_tag: str | None = None,
    target_id: str | None = None,
) -> str:
    """The SQL that ``up`` (or ``down --to-tag``) would run; nothing is changed."""
    return open_migrator(settings, target_url, migrations_dir).sql(to_tag, target_id=target_id)


# --- backup verbs (statekeeper.backups) ---
@boundary
def backup_manager(settings: Settings, target_url: str | None = None) -> BackupManager:
    """A :class:`statekeeper.backups.BackupManager` from ``[target]``/``[backup]``; a
    ``target_url`` (the ``--target`` flag) overrides ``[target] url`` (relative SQLite paths
    then resolve against the working directory)."""
    from .backups import manager_for
    from .targets import Target

    cfg = settings.config
    if target_url is not None:
        target: Target | None = Target.from_url(_flag_target(target_url), Path.cwd())
    elif cfg.target_url:
        target = Target.from_url(cfg.target_url, cfg.base_dir)
    else:
        target = None
    return manager_for(cfg, target)


@boundary
def backup_create(
    settings: Settings, target_url: str | None = None, backup_id: str | None = None, *,
    reason: str | None = None, ticket: str | None = None, observer: OpObserver | None = None,
) -> Manifest:
    """Take a backup under the target lock, as a ``backup.create`` operation."""
    from . import ops
    from .why import why

    w = why(settings.config, reason, ticket, "the backup")
    return ops.backup_create(settings, backup_manager(settings, target_url), backup_id, w,
                             observer)


@boundary
def backup_list(settings: Settings, target_url: str | None = None) -> list[Manifest]:
    return list(backup_manager(settings, target_url).list())


@boundary
def backup_verify(
    settings: Settings, backup_id: str, target_url: str | None = None
) -> Manifest:
    return backup_manager(settings, target_url).verify(backup_id)


@boundary
def backup_restore(
    settings: Settings,
    backup_id: str,
    target_url: str | None = None,
    allow_other_database: bool = False,
    *,
    reason: str | None = None,
    ticket: str | None = None,
    yes: bool = False,
    confirm: Confirm | None = None,
    observer: OpObserver | None = None,
    without_ledger: bool = False,
) -> RestoreResult:
    """Restore a backup outside a run, as a ``backup.restore`` operation, under the target
    lock (LockHeld while a run or a migrate holds it). Confirmed by ``yes`` (--yes) or by
    ``confirm`` (the operator on a terminal); neither is ConfigError naming --yes. With the
    server down (a pgBackRest restore interrupted) it goes on and takes the lock as soon as
    the restarted server accepts connections. ``without_ledger``: the ledger is lost; the
    restore is neither verified against it nor recorded."""
    from . import ops
    from .why import why

    ops.confirmation("backup.restore", yes, confirm)
    w = why(settings.config, reason, ticket, "the restore")
    manager = backup_manager(settings, target_url)
    manager.get(backup_id)  # an unknown id is a usage error (exit 2) before anything else
    return ops.backup_restore(settings, manager, backup_id, allow_other_database, w, yes,
                              confirm, observer, without_ledger)


@boundary
def backup_prune(
    settings: Settings, target_url: str | None = None, *, dry_run: bool = False,
    reason: str | None = None, ticket: str | None = None, yes: bool = False,
    confirm: Confirm | None = None, observer: OpObserver | None = None,
) -> list[Verdict]:
    """Apply ``[backup] keep`` / ``keep_days`` as a ``backup.prune`` operation under the target
    lock (see :mod:`statekeeper.retention` for what is never deleted). Confirmed like a
    restore (``yes`` or ``confirm``); ``dry_run`` decides only, records nothing. Returns
    every backup's verdict, oldest first."""
    from . import ops, retention
    from .why import why

    cfg = settings.config
    retention.rules(cfg.backup.keep, cfg.backup.keep_days, cfg.source)
    if not dry_run:
        ops.confirmation("backup.prune", yes, confirm)
    w = why(settings.config, reason, ticket, "the prune")
    return ops.backup_prune(settings, backup_manager(settings, target_url), w, yes, confirm,
                            dry_run, observer)


@boundary
def backup_schedule(settings: Settings, kind: str, program: tuple[str, ...], at: str,
                    user: str, ticket: str | None = None) -> dict[str, str]:
    """The entries of a nightly ``backup create --reason scheduled`` (and ``backup prune`` when
    ``[backup] keep``/``keep_days`` is set): ``kind`` "cron" -> {"crontab": line}, "systemd"
    -> {unit file name: text}. Nothing is installed or recorded. Refused when there is no
    statekeeper.toml to name, no target, or ``[upgrade] require_ticket`` without ``ticket``."""
    from . import schedule
    from .why import why

    cfg = settings.config
    if cfg.path is None:
        raise ConfigError("backup schedule needs a statekeeper.toml for the job to name "
                          "(--config PATH, or run it where the file is)")
    cfg.require_target()
    why(cfg, None, ticket, "the scheduled backup")
    hour, minute = schedule.parse_at(at)
    job = schedule.Job(program=program, config=str(cfg.path), workdir=str(cfg.base_dir),
                       user=user, hour=hour, minute=minute,
                       prune=cfg.backup.keep is not None or bool(cfg.backup.keep_days),
                       ticket=ticket)
    if kind == "cron":
        return {"crontab": schedule.cron(job)}
    return schedule.systemd(job)


# --- health (statekeeper.health) ---
@boundary
def health(settings: Settings, out_dir: Path | None = None) -> HealthReport:
    """Run the configured ``[health]`` checks now, outside any upgrade: every check, each
    with its retries, within the deadline; no ledger, no lease. The target is opened only
    for sql checks. A command check writes its output to ``out_dir`` (default
    ``.statekeeper/health/`` beside statekeeper.toml, 0700; files 0600), replacing the last
    run's. A failing check is a result (``report.ok`` false), not an error; a bad
    configuration raises ConfigError."""
    from .health import HealthReport, check_all, validate_health

    cfg = settings.config
    checks = validate_health(cfg.raw.get("health", {}), cfg.source)
    target = None
    if any(c["kind"] == "sql" for c in checks):
        from .targets import Target

        target = Target.from_url(cfg.require_target(), cfg.base_dir)
    if out_dir is None and any(c["kind"] == "command" for c in checks):
        out_dir = files.private_dir(cfg.base_dir / ".statekeeper" / "health")
    return HealthReport(check_all(target, checks, out_dir=out_dir, base_dir=cfg.base_dir))


# --- configuration ---
@boundary
def config_show(settings: Settings) -> list[Entry]:
    """The effective configuration: every key set or defaulted, with its origin (flag >
    environment > statekeeper.toml > default), secrets masked. Nothing is opened."""
    from .showconfig import effective

    return effective(settings.config)


# --- upgrade verbs (statekeeper.upgrade) ---
@boundary
def init(
    config: str | None,
    key: str | None,
    ledger_url: str | None,
    target_url: str | None,
    migrations_dir: str,
    *,
    reason: str | None = None,
    ticket: str | None = None,
    observer: OpObserver | None = None,
) -> list[str]:
    """Create statekeeper.toml, the signing key and the ledger; skip what already exists.
    What it created is recorded as an ``init`` operation (on a new ledger, the first event
    after the genesis); a re-run that creates nothing records nothing."""
    from . import ops
    from .config import CONFIG_NAME, DEFAULT_KEY
    from .why import check_reason, check_ticket, why

    check_reason(reason)
    check_ticket(ticket)
    created: dict[str, Any] = {}
    kept: list[str] = []
    done: list[str] = []
    path = Path(config).absolute() if config else Path.cwd() / CONFIG_NAME
    wrote = not path.exists()
    if wrote:
        from .config import DEFAULT_LEDGER_URL, check_given, check_url, initial_toml

        if target_url is not None:  # refused before the file is written, naming the flag
            check_given(target_url, "--target URL", "leave it out to leave [target] url unset")
            check_url(target_url, "--target URL", Path.cwd())
        check_given(migrations_dir, "--migrations", "leave it out for 'migrations'")

        _write_out(path, initial_toml(ledger_url or DEFAULT_LEDGER_URL, key or DEFAULT_KEY,
                                        target_url, migrations_dir))
        done.append(f"wrote {path}")
        created["config"] = str(path)
    else:
        done.append(f"kept {path}")
        kept.append("config")
    try:
        settings = Settings.load(str(path), ledger_url, key)
    except ConfigError:
        if wrote:  # a file init would then refuse is not left behind (a bad --target)
            path.unlink()
        raise
    w = why(settings.config, reason, ticket, "the initialisation")
    files.private_dir(settings.config.base_dir / ".statekeeper")
    if settings.config.migrations_dir and not settings.config.migrations_dir.exists():
        files.private_dir(settings.config.migrations_dir)
        done.append(f"created {settings.config.migrations_dir}")
        created["migrations_dir"] = str(settings.config.migrations_dir)
    if not settings.key_path.exists():
        signer = keys_generate(settings.key_path)
        done.append(f"generated signing key {settings.key_path} (mode 0600)")
        created["signing_key"] = {"path": str(settings.key_path), "key_id": signer.key_id}
    else:
        done.append(f"kept signing key {settings.key_path}")
        kept.append("signing_key")
    target = None
    if settings.config.target_url:
        from .targets import Target

        target = Target.from_url(settings.config.target_url, settings.config.base_dir).display
    with settings.open_ledger(signing=True) as lg:
        if lg.ledger_id() is not None:
            kept.append("ledger")
        op_id = ops.record_init(settings, lg, created, kept, target, w, observer)
        head = lg.initialize()
        done.append(f"ledger {lg.display_url} ready (head seq {head.seq})")
        if op_id is not None:
            done.append(f"recorded as operation {op_id}")
    return done


@boundary
def plan(settings: Settings, to_version: str, from_version: str | None = None,
         out: Path | None = None) -> Plan:
    """The plan of an upgrade, made without acting; ``out``: also saved there, for
    ``start --plan`` to run exactly it."""
    from . import upgrade

    p = upgrade.plan(settings, to_version, from_version)
    if out is not None:
        upgrade.save_plan(p, out)
    return p


@boundary
def plan_preview(settings: Settings, to_version: str, from_version: str | None = None,
                 out: Path | None = None) -> tuple[Plan, str | None]:
    """The plan and, with ``[migrations] tool = "liquibase"``, the SQL Liquibase would run;
    ``out``: the plan also saved there, for ``start --plan``."""
    from . import upgrade

    p, sql = upgrade.plan_preview(settings, to_version, from_version)
    if out is not None:
        upgrade.save_plan(p, out)
    return p, sql


@boundary
def start(
    settings: Settings,
    to_version: str,
    from_version: str | None = None,
    observer: Observer | None = None,
    *,
    reason: str | None = None,
    ticket: str | None = None,
    plan_file: Path | None = None,
    require_rehearsal: bool = False,
) -> Run:
    """Run an upgrade. ``plan_file``: a plan saved by ``plan --out``; the upgrade is refused
    (ConfigError, nothing done) unless the plan made now is exactly that one."""
    from . import upgrade
    from .why import why

    w = why(settings.config, reason, ticket, "the upgrade")
    approved = None if plan_file is None else (upgrade.load_plan(plan_file), plan_file)
    gate = None
    if require_rehearsal or settings.config.raw.get("upgrade", {}).get("require_rehearsal"):
        from . import rehearse

        def gate(lg: Any, target: Any, plan: Plan) -> str:
            return rehearse.require_rehearsal(settings, lg, target, plan)
    return upgrade.start(settings, to_version, from_version, observer, w, approved, gate)


@boundary
def rehearse(
    settings: Settings,
    to_version: str,
    from_version: str | None = None,
    *,
    keep: bool = False,
    clone: str = "auto",
    observer: Observer | None = None,
    reason: str | None = None,
    ticket: str | None = None,
) -> dict[str, Any]:
    """Rehearse the upgrade on a clone of the target (:mod:`statekeeper.rehearse`); the
    result. RehearsalFailed (exit 1) when it would fail; production is never changed."""
    from . import rehearse as r
    from .upgrade import check_versions
    from .why import why

    check_versions(to_version, from_version)
    w = why(settings.config, reason, ticket, "the rehearsal")
    return r.rehearse(settings, to_version, from_version, keep=keep, clone_method=clone,
                      why=w, observer=observer)


@boundary
def rehearse_clean(settings: Settings) -> list[str]:
    """Remove the clones and scratch directories crashed rehearsals left."""
    from . import rehearse as r

    return r.clean(settings)


@boundary
def resume(
    settings: Settings,
    run_id: str | None = None,
    rollback: bool = False,
    observer: Observer | None = None,
    *,
    reason: str | None = None,
    ticket: str | None = None,
) -> Run:
    from . import upgrade
    from .why import why

    w = why(settings.config, reason, ticket, "the resumed run")
    return upgrade.resume(settings, run_id, rollback, observer, w)


@boundary
def rollback(
    settings: Settings, run_id: str, restore: bool = False, observer: Observer | None = None,
    *, reason: str | None = None, ticket: str | None = None,
) -> Run:
    from . import upgrade
    from .why import why

    w = why(settings.config, reason, ticket, "the rollback")
    return upgrade.rollback(settings, run_id, restore, observer, w)


@boundary
def status(settings: Settings, run_id: str | None = None) -> Run:
    from . import upgrade

    return upgrade.status(settings, run_id)


@boundary
def latest(settings: Settings, run_id: str | None = None, *,
           all_targets: bool = False) -> Run | None:
    """The run ``status`` shows (default: the latest on the configured target; with
    ``all_targets`` or no target configured, the latest in the ledger); None when there is
    none yet ("no runs" is not an error: ``history`` lists none, ``status`` says so, both
    exit 0)."""
    from . import upgrade

    return upgrade.latest(settings, run_id, all_targets=all_targets)


@boundary
def has_runs(settings: Settings) -> bool:
    """Whether the ledger holds any run, of any target (to say why a target has none)."""
    from . import upgrade

    return upgrade.has_runs(settings)


@boundary
def server_state(settings: Settings, run: Run) -> ServerState | None:
    """For an unfinished run on a PostgreSQL target: does its server accept connections, and
    if not, what ``resume`` will do about it (redo an interrupted restore and start the
    server, or wait for an operator to start it). None for a finished run or a file."""
    from . import upgrade

    return upgrade.server_state(settings, run)


@boundary
def history(settings: Settings, limit: int | None = None, *,
            all_targets: bool = False) -> list[Run | Unreadable]:
    """The runs on the configured target (``all_targets``, or no target configured: every
    run of the ledger) in the order created (``limit``: only the last that many, read without
    replaying the others): a :class:`statekeeper.replay.Run`, or an
    :class:`statekeeper.upgrade.Unreadable` for one whose events cannot be replayed (listed
    whatever the target, when its target cannot be read)."""
    from . import upgrade

    return upgrade.history(settings, limit, all_targets=all_targets)


# -- report (issue 10) -----------------------------------------------------------------------
@boundary
def report(
    settings: Settings,
    fmt: str,
    out: Path,
    run_id: str | None = None,
    since: str | None = None,
    until: str | None = None,
    against: Path | None = None,
    tz: str | None = None,
) -> Any:
    """Write an audit report (html, pdf, csv, json) replayed from the verified ledger; returns
    a :class:`statekeeper.report.ReportResult`. A ledger that fails verification still gets
    its report (saying so at the top); the result's ``ok`` is False and the CLI exits 4."""
    from . import clock
    from ._version import __version__
    from .report import Scope, parse_range, parse_tz, write_report

    zone = parse_tz(tz)
    start, end = parse_range(since, until, zone)
    cp = read_checkpoint(against) if against else None
    with settings.open_ledger(signing=False, create=False) as lg:
        return write_report(
            lg, fmt, out, scope=Scope(run_id, start, end), tz=zone,
            generated_at=zone.iso(clock.stamp(clock.now())) or "", against=cp,
            against_file=None if against is None else str(against),
            tool=f"statekeeper {__version__}",
        )
