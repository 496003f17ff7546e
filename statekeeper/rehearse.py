"""Rehearse an upgrade on a throwaway clone of the target before production sees it.

``rehearse`` clones the target (PostgreSQL: ``CREATE DATABASE ... TEMPLATE`` when nothing else
is connected to it, else a new ``pg_dump`` restored into a fresh database on the same server;
SQLite: the online backup API), then on the clone, with a scratch ledger of its own: the
forward upgrade with its SQL health checks, its rollback (the down parts, or the restore of
the clone's backup), the clone's fingerprint compared with the one cloned, and the forward
upgrade again. The clone is dropped unless ``keep``.

Production is only read: its plan, its fingerprint, its changelog (by the clone's creation).
No lease or lock is taken on it and nothing is written to it; the production ledger gets one
operation, ``ops/<id>`` of kind ``rehearse``, whose steps are the passes with their timings
and whose arguments are what ``start --require-rehearsal`` compares: the plan's digest (the
migration files' checksums, the release, ``from -> to``) and the production fingerprint the
clone was made from. The operation ends ``succeeded`` only when the rehearsal passed.

The clone's name says where it came from (``<db>__rehearse_<id>``; the SQLite copy lives in
``.statekeeper/rehearsals/<id>/``). Rehearsals of one project are serialized by a lock file,
under which leftovers of a crashed rehearsal are removed (``rehearse --clean`` does only that).

The release side runs against a scratch releases directory in the rehearsal's directory
(entries linked to the live version directories, a ``current`` link of its own, copies of the
configuration files): the live link and files are never written. What acts on the live
application runs only as its rehearsal variant (``rehearsal_http``, ``rehearsal_command``,
``rehearsal_stop``/``rehearsal_start``, ``rehearsal_run``/``rehearsal_undo``), against the
clone; without one it is listed as not rehearsed, never run.

A first SIGINT/SIGTERM stops the rehearsal at the next safe point (between passes, or between
the steps of a run on the clone): recorded as failed, the clone dropped (kept with ``keep``),
:class:`RehearsalInterrupted` raised (exit 130/143).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import shutil
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import clock, files, interrupts
from .errors import ConfigError, RehearsalFailed, StatekeeperError, TargetError
from .interrupts import Interrupted

if TYPE_CHECKING:
    from .fingerprint import Fingerprint
    from .plan import Plan
    from .release import ReleaseConfig
    from .replay import Run
    from .settings import Settings
    from .targets import Target
    from .why import Why

Observer = Callable[[str, dict[str, Any]], None]
OP = "rehearse"
CLONE_METHODS = ("auto", "template", "restore")
CLONE_MARK = "__rehearse_"
PG_NAME_MAX = 63  # NAMEDATALEN - 1


class RehearsalInterrupted(Interrupted):
    """A rehearsal stopped at a safe point on SIGINT/SIGTERM: the step under way ended, the
    operation is recorded as failed (interrupted), the clone dropped (kept with ``keep``, for
    ``rehearse --clean``). Nothing to resume: production was never touched."""

    def __init__(self, rehearsal_id: str, signum: int, after: str | None, kept: bool) -> None:
        # after: where it stopped, as a message says it ("after the rollback")
        self.kept = kept
        super().__init__(rehearsal_id, signum, "rehearsing", after)

    @property
    def commands(self) -> dict[str, str]:
        return {}

    def message(self) -> str:
        where = f" {self.after}" if self.after else ""
        left = ("its clone is kept (--keep): 'statekeeper rehearse --clean' removes it"
                if self.kept else "its clone is dropped")
        return (f"interrupted ({self.signal_name}): rehearsal {self.run_id} stopped at a safe "
                f"point{where}; {left}; production was not touched")


def rehearsals_dir(settings: Settings) -> Path:
    return settings.config.base_dir / ".statekeeper" / "rehearsals"


@contextlib.contextmanager
def _exclusive(settings: Settings) -> Iterator[None]:
    """One rehearsal of a project at a time: the lock under which leftovers are removed."""
    d = files.private_dir(rehearsals_dir(settings))
    fd = os.open(d / ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, files.PRIVATE_FILE)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConfigError(f"another rehearsal of this project is running (lock {d / '.lock'})"
                              ) from None
        yield
    finally:
        os.close(fd)


# -- clones -------------------------------------------------------------------------------

def _clone_name(database: str, rehearsal_id: str) -> str:
    """``<db>__rehearse_<id>``, the database's name cut (on a character boundary) so the whole
    fits PostgreSQL's 63 bytes: the id is never cut, so the name is the same every time."""
    suffix = CLONE_MARK + rehearsal_id
    room = PG_NAME_MAX - len(suffix.encode("utf-8"))
    return database.encode("utf-8")[:room].decode("utf-8", "ignore") + suffix


def _maintenance(target: Target) -> Any:
    """A connection to the server's ``postgres`` database: CREATE/DROP DATABASE cannot run
    in the database they copy or drop."""
    from .targets import Target as T

    other = T.from_url(target.url.set(database="postgres").render_as_string(
        hide_password=False))
    return other.connect(autocommit=True)


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


@dataclasses.dataclass(frozen=True)
class Clone:
    url: str  # the clone's URL, password included (never recorded)
    shown: str  # what messages and the ledger say
    method: str  # template | restore | copy
    why: str


@contextlib.contextmanager
def _server_lock(target: Target) -> Iterator[None]:
    """One rehearsal of a database per server, whichever checkout or host runs it: a session
    advisory lock on the server, held while the rehearsal runs (and while leftovers are
    removed, so a running rehearsal's clone is never one of them)."""
    if target.dialect.in_a_file:
        yield
        return
    conn = _maintenance(target)
    try:
        with target.dialect.errors(f"target {target.shown}"):
            got = conn.execute("SELECT pg_try_advisory_lock(hashtextextended(%s, 0))",
                               (f"statekeeper rehearse {target.database}",)).fetchone()[0]
        if not got:
            raise ConfigError(f"another rehearsal of {target.database} is running on its "
                              "server (from another checkout or host): wait for it")
        yield
    finally:
        conn.close()


def _clone_postgres(settings: Settings, target: Target, rid: str, scratch: Path,
                    method: str) -> Clone:
    name = _clone_name(target.database, rid)
    url = target.url.set(database=name).render_as_string(hide_password=False)
    conn = _maintenance(target)
    try:
        with _no_createdb(target), target.dialect.errors(f"target {target.shown}"):
            others = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = %s", (target.database,)
            ).fetchone()[0]
            if method == "template" and others:
                raise ConfigError(f"--clone template: {others} session(s) are connected to "
                                  f"{target.database} (CREATE DATABASE ... TEMPLATE needs none)")
            if method != "restore" and others == 0:
                try:
                    conn.execute(f"CREATE DATABASE {_ident(name)} TEMPLATE "
                                 f"{_ident(target.database)}")
                    return Clone(url, _shown(url), "template",
                                 "nothing was connected to the database: a file-level copy")
                except Exception as e:  # someone connected in between: restore instead
                    if method == "template" or "is being accessed by other users" not in str(e):
                        raise
            conn.execute(f"CREATE DATABASE {_ident(name)}")
    finally:
        conn.close()
    why = ("--clone restore: a new pg_dump restored into the clone" if method == "restore" else
           f"{others or 'a'} session(s) connected to {target.database}: TEMPLATE needs none, "
           "so a new pg_dump restored into the clone")
    clone = Clone(url, _shown(url), "restore", why)
    try:
        _restore_into(settings, target, url, scratch)
    except BaseException:
        with contextlib.suppress(Exception):  # a crash here is what rehearse --clean is for
            _drop(target, clone)
        raise
    return clone


@contextlib.contextmanager
def _no_createdb(target: Target) -> Iterator[None]:
    """A role that may not create databases cannot rehearse here: a configuration matter
    (exit 2), not an upgrade that would fail."""
    try:
        yield
    except Exception as e:
        if getattr(e, "sqlstate", None) == "42501":  # insufficient_privilege
            raise ConfigError(f"target {target.shown}: its role may not create databases "
                              "(CREATEDB): a rehearsal clones the database on its server; "
                              "grant it, or rehearse as another role") from e
        raise


def _restore_into(settings: Settings, target: Target, clone_url: str, scratch: Path) -> None:
    from .backups import BackupManager
    from .targets import Target as T

    backups = files.private_dir(scratch / "clone-backup")
    taken = BackupManager(target, "pg_dump", backups).create()
    # the restore proves the clone's fingerprint equals the dump's
    BackupManager(T.from_url(clone_url), "pg_dump", backups).restore(
        taken.id, allow_other_database=True, report_damage=False)


def _clone_sqlite(target: Target, scratch: Path) -> Clone:
    import sqlite3

    path = scratch / f"clone-{target.sqlite_path.name}"
    files.touch_private(path)
    from urllib.parse import quote

    src = sqlite3.connect(f"file:{quote(str(target.sqlite_path))}?mode=ro", uri=True)
    try:
        dst = sqlite3.connect(path)
        try:
            src.backup(dst)
        finally:
            dst.close()
    except sqlite3.Error as e:
        raise TargetError(f"target {target.shown}: cannot copy it for the rehearsal: {e}"
                          ) from e
    finally:
        src.close()
    url = f"sqlite:///{path}"
    return Clone(url, url, "copy", "a SQLite file: copied with the online backup API")


def _drop(target: Target, clone: Clone) -> None:
    from ledger.url import make_url

    if target.dialect.in_a_file:
        return  # the copy goes with the scratch directory
    conn = _maintenance(target)
    try:
        with target.dialect.errors(f"dropping the rehearsal clone {clone.shown}"):
            conn.execute(f"DROP DATABASE IF EXISTS {_ident(str(make_url(clone.url).database))} "
                         "WITH (FORCE)")
    finally:
        conn.close()


def _shown(url: str) -> str:
    """The clone's URL as messages show the target's: redacted, without the driver name."""
    from ledger import redact

    from .narrate import shown_url

    return shown_url(redact(url))


def clean(settings: Settings) -> list[str]:
    """Remove what this project's earlier rehearsals left (a crashed one's clone, a kept
    one); return what was removed. Under the project's and the server's rehearsal locks, so
    never a running rehearsal's clone, and only clones this ledger's rehearsals made."""
    from .ops import open_verified
    from .targets import Target as T

    target = T.from_url(settings.config.require_target(), settings.config.base_dir)
    with _exclusive(settings), _server_lock(target), \
            contextlib.closing(open_verified(settings)) as lg:
        return _clean(settings, lg, target)


def _clean(settings: Settings, lg: Any, target: Target) -> list[str]:
    from .opreplay import Operation
    from .ops import scan_ops

    removed: list[str] = []
    ours = [o for o in scan_ops(lg) if isinstance(o, Operation) and o.op == OP
            and o.target == target.display]
    if not target.dialect.in_a_file and ours:
        names = {_clone_name(target.database, o.op_id) for o in ours}
        conn = _maintenance(target)
        try:
            with target.dialect.errors(f"target {target.shown}"):
                there = {r[0] for r in conn.execute(
                    "SELECT datname FROM pg_database WHERE datname = ANY(%s)",
                    (sorted(names),)).fetchall()}
                for n in sorted(there):
                    conn.execute(f"DROP DATABASE IF EXISTS {_ident(n)} WITH (FORCE)")
                    removed.append(f"database {n}")
        finally:
            conn.close()
    for d in sorted(rehearsals_dir(settings).glob("*")):
        if d.is_dir():  # the project's own, under its lock
            shutil.rmtree(d)
            removed.append(f"directory {d}")
    return removed


# -- the clone's settings ------------------------------------------------------------------

def _clone_settings(settings: Settings, clone: Clone, scratch: Path, application: str
                    ) -> tuple[Settings, list[str], list[str], dict[str, Any] | None]:
    """The project's settings pointed at the clone, with a scratch ledger, backup directory
    and (with ``[deploy]``) releases directory; what runs as its rehearsal variant, what the
    clone cannot rehearse (left out and listed), and the scratch release's layout."""
    import ledger

    from .settings import Settings as S

    cfg = settings.config
    raw = {k: dict(v) for k, v in cfg.raw.items() if isinstance(v, dict)}
    health = raw.get("health", {})
    checks = health.get("checks", [])
    kept, variants, skipped = _clone_checks(checks)
    if checks:
        raw["health"] = {**health, "checks": kept}
    raw["upgrade"] = {**raw.get("upgrade", {}), "application": application,
                      "require_ticket": False}
    raw.pop("deploy", None)  # the scratch release below is what the clone's runs deploy
    release, layout = None, None
    if cfg.release is not None:
        release, layout, more, ran = _scratch_release(cfg.release, scratch / "release")
        skipped += more
        variants += ran
    method = "sqlite" if clone.method == "copy" else "pg_dump"
    if cfg.backup.method not in (None, method):
        skipped.append(f"the {cfg.backup.method} backup: the clone is backed up with {method} "
                       "(a whole-cluster restore would rewind production)")
    key = scratch / "signing-key.pem"
    ledger.generate_key_file(key)
    clone_cfg = dataclasses.replace(
        cfg, base_dir=scratch, commands_dir=cfg.command_cwd, target_url=clone.url,
        ledger=dataclasses.replace(cfg.ledger, url=f"sqlite:///{scratch / 'ledger.db'}",
                                   key=key),
        backup=dataclasses.replace(cfg.backup, method=method, dir=scratch / "backups",
                                   stanza=None, stop_command=None, start_command=None,
                                   pgbackrest_config=None, cluster_databases=(),
                                   enabled=cfg.backup.enabled),
        raw=raw, release=release, origins={}, written={})
    return S(clone_cfg, clone_cfg.ledger.url, key), variants, skipped, layout


def _clone_checks(checks: list[Any]) -> tuple[list[Any], list[str], list[str]]:
    """The health checks a clone runs: the SQL ones as they are (against the clone), an HTTP
    or command check as its rehearsal variant (``rehearsal_http``, ``rehearsal_command``);
    one without a variant would probe the live application, so it is listed, not run."""
    from .health import KINDS, REHEARSAL_KEYS

    kept: list[Any] = []
    variants: list[str] = []
    skipped: list[str] = []
    for i, c in enumerate(checks):
        if not isinstance(c, dict):
            continue
        kind = next((k for k in KINDS if k in c), "sql")
        # named as production names it: a check's default name is its position
        name = c.get("name") or f"check {i + 1}"
        variant = REHEARSAL_KEYS.get(kind)
        if variant is None:
            kept.append({**c, "name": name})
        elif variant in c:
            kept.append({**{k: v for k, v in c.items() if k != variant}, "name": name,
                         kind: c[variant]})
            variants.append(f"health check {name!r} ({kind}): its {variant}")
        else:
            skipped.append(f"health check {name!r} ({kind}): it would probe the live "
                           f"application (no {variant} set)")
    return kept, variants, skipped


def _scratch_release(rc: ReleaseConfig, root: Path
                     ) -> tuple[ReleaseConfig, dict[str, Any], list[str], list[str]]:
    """The release side laid out for the clone's runs in ``root``: a releases directory whose
    entries link to the live version directories (statekeeper only reads those), a
    ``current`` link pointing where the live one points, and copies of the configuration
    files (content and mode). The clone's runs switch and rewrite these, never the live
    ones. Stop/start and deploy commands act on the live service: their rehearsal variants
    run instead, and without one they are left out and listed."""
    from .release import DeployCommand, read_link, version_of

    releases = files.private_dir(root / "releases")
    if rc.releases_dir.is_dir():
        for entry in sorted(rc.releases_dir.iterdir()):
            os.symlink(entry, releases / entry.name)
    link = files.private_dir(root / "link") / rc.current_link.name
    live = read_link(rc.current_link)
    scratch = dataclasses.replace(rc, releases_dir=releases, current_link=link)
    version = version_of(live)
    if live is not None:
        inside = version is not None and (releases / version).exists()
        os.symlink(scratch.link_target(version) if inside and version else
                   os.path.join(rc.current_link.parent, live), link)
    copies: list[Path] = []
    for i, f in enumerate(rc.config_files):
        copy = files.private_dir(root / "config" / f"{i:02d}") / f.name
        if f.is_symlink():  # refused by the preflight, as production's would be
            os.symlink(os.readlink(f), copy)
        elif f.is_file():
            shutil.copyfile(f, copy)
            os.chmod(copy, stat.S_IMODE(f.stat().st_mode))
        elif f.exists():
            copy.mkdir()
        copies.append(copy)
    config_dir = rc.config_dir("{version}")
    skipped: list[str] = []
    variants: list[str] = []
    stop = start = None
    if rc.rehearsal_service is not None:
        stop, start = rc.rehearsal_service
        variants.append("[deploy] stop and start: rehearsal_stop and rehearsal_start")
    elif rc.stop is not None:
        skipped.append("[deploy] stop and start: they act on the live service (no "
                       "rehearsal_stop/rehearsal_start set)")
    commands = []
    for c in rc.commands:
        if c.rehearsal is None:
            skipped.append(f"[[deploy.command]] {c.name!r}: it acts on the live release (no "
                           "rehearsal_run/rehearsal_undo set)")
            continue
        commands.append(DeployCommand(c.name, *c.rehearsal, c.timeout_ms))
        variants.append(f"[[deploy.command]] {c.name!r}: its rehearsal_run and rehearsal_undo")
    scratch = dataclasses.replace(
        scratch, config_files=tuple(copies), stop=stop, start=start, commands=tuple(commands),
        config_from=None if config_dir is None else str(config_dir), rehearsal_service=None)
    layout = {"dir": str(root), "releases_dir": str(releases), "current_link": str(link),
              "config_files": {str(f): str(c) for f, c in zip(rc.config_files, copies,
                                                               strict=True)}}
    return scratch, layout, skipped, variants


# -- the passes ----------------------------------------------------------------------------

def _steps(run: Run) -> list[dict[str, Any]]:
    return [{"name": s.name, "status": s.status, "ms": _ms(s.started_at, s.ended_at),
             **({"error": s.error} if s.error else {})} for s in run.steps]


def _ms(start: str, end: str | None) -> int | None:
    a, b = clock.parse(start), clock.parse(end)
    if a is None or b is None:
        return None
    return int((b - a).total_seconds() * 1000)


def _pass(run: Run, rollback: bool = False) -> dict[str, Any]:
    """A pass's result: its run's steps (a rollback's: those of the rollback only) with
    their durations on the clone's real data, and the time the whole run took."""
    steps = _steps(run)[run.phase_start:] if rollback else _steps(run)
    start = next((s.started_at for s in run.steps[run.phase_start:]), run.created_at
                 ) if rollback else run.created_at
    return {"run_id": run.run_id, "state": run.state, "steps": steps,
            "ms": _ms(start, run.ended_at),
            **({"failure": run.failure} if run.failure else {})}


def health_identity(settings: Settings) -> str:
    """A keyed fingerprint of the ``[health]`` section as loaded (and of ``[deploy]``'s
    rehearsal variants, when there are any): a check whose query or expected value changed,
    or a variant that runs another command, is another rehearsal's, though the plan names it
    the same."""
    from . import keyed

    raw = settings.config.raw
    what: Any = raw.get("health", {})
    deploy = raw.get("deploy") or {}
    variants = {k: v for k, v in deploy.items() if k.startswith("rehearsal_")}
    for i, c in enumerate(deploy.get("command") or []):
        mine = {k: v for k, v in c.items() if k.startswith("rehearsal_")} if isinstance(
            c, dict) else {}
        if mine:
            variants[f"command {i + 1}"] = mine
    if variants:  # without any, the identity is what it was before variants existed
        what = {"health": what, "deploy_variants": variants}
    data = json.dumps(what, sort_keys=True, default=str, separators=(",", ":"),
                      ensure_ascii=False).encode("utf-8")
    return keyed.fingerprint(keyed.load_or_create(settings.fingerprint_secret_path()), data)


def release_identity(settings: Settings, plan: Plan) -> str | None:
    """A keyed fingerprint of the configuration files the release installs (``config_from``
    for the version upgraded to, by name and content): the plan names them by path only, so
    one edited after the rehearsal is another rehearsal's. None without ``config_from``."""
    from . import keyed

    rc = settings.config.release
    if rc is None or rc.config_from is None:
        return None
    what = {}
    for f in rc.config_files:
        src = rc.config_source(plan.to_version, f)
        try:
            what[str(f)] = None if src is None else src.read_bytes().hex()
        except OSError:  # missing: the preflight names it; the identity says "absent"
            what[str(f)] = None
    data = json.dumps(what, sort_keys=True, separators=(",", ":")).encode("utf-8")
    return keyed.fingerprint(keyed.load_or_create(settings.fingerprint_secret_path()), data)


def rehearse(settings: Settings, to_version: str, from_version: str | None, *, keep: bool,
             clone_method: str = "auto", why: Why | None = None,
             observer: Observer | None = None) -> dict[str, Any]:
    """Rehearse ``from -> to`` on a clone; the result (what ``--json`` prints). Raises
    :class:`RehearsalFailed` (exit 1, after recording it) when the upgrade would fail, its
    rollback would lose data, or the second forward pass fails; :class:`RehearsalInterrupted`
    (after recording it, the clone dropped unless ``keep``) when SIGINT/SIGTERM asked for a
    stop. ``clone_method``: ``auto``
    (TEMPLATE when nothing is connected), ``template`` or ``restore`` (PostgreSQL)."""
    from . import upgrade
    from .ops import new_op_id, open_verified, recording
    from .targets import Target as T

    if clone_method not in CLONE_METHODS:
        raise ConfigError(f"--clone {clone_method!r}: one of {', '.join(CLONE_METHODS)}")
    cfg = settings.config
    target = T.from_url(cfg.require_target(), cfg.base_dir)
    plan = upgrade.plan(settings, to_version, from_version)
    rid = new_op_id()
    # a first SIGINT/SIGTERM asks for a stop at the next safe point (between passes, or
    # between the steps of a run on the clone); a second stops at once, as in a run
    with interrupts.guard(), _exclusive(settings), _server_lock(target), \
            contextlib.closing(open_verified(settings)) as lg:
        leftovers = _clean(settings, lg, target)
        args = {"from": plan.from_version, "to": plan.to_version,
                "plan_digest": plan.digest(), "health": health_identity(settings),
                **({"release_files": rf} if (rf := release_identity(settings, plan))
                   else {}),
                "migrations": {m.id: m.checksum for m in plan.migrations},
                "keep": keep, "clone_method": clone_method,
                **({"removed": leftovers} if leftovers else {})}
        with recording(lg, rid, OP, target.display, args, why, observer=observer) as rec:
            scratch = files.private_dir(rehearsals_dir(settings) / rid)
            try:
                result = _run_passes(settings, rec, target, plan, rid, scratch, keep,
                                     clone_method, observer)
            finally:
                if not keep:
                    shutil.rmtree(scratch, ignore_errors=True)
            result["rehearsal_id"] = rid
            if not result["passed"]:
                raise RehearsalFailed("; ".join(result["problems"]), result)
    return result


def _run_passes(settings: Settings, rec: Any, target: Target, plan: Plan, rid: str,
                scratch: Path, keep: bool, clone_method: str,
                observer: Observer | None) -> dict[str, Any]:
    from . import upgrade
    from .fingerprint import diff, fingerprint
    from .targets import Target as T

    made: list[Clone] = []
    state: dict[str, Fingerprint] = {}

    def make_clone() -> dict[str, Any]:
        c = (_clone_sqlite(target, scratch) if target.dialect.in_a_file
             else _clone_postgres(settings, target, rid, scratch, clone_method))
        made.append(c)
        # what the clone holds is the baseline, not production read a moment apart: a live
        # application writes in between
        state["before"] = fingerprint(T.from_url(c.url))
        return {"clone": c.shown, "method": c.method, "why": c.why,
                "fingerprint_digest": state["before"].digest}

    cloned = rec.step("clone", "clone", {}, make_clone)
    clone, before = made[0], state["before"]
    problems: list[str] = []
    passes: dict[str, Any] = {}
    lossy: list[str] = []

    def safe_point(after: str) -> None:
        if (signum := interrupts.requested()) is not None:
            raise RehearsalInterrupted(rid, signum, after, keep)

    try:
        safe_point("after the clone")
        clone_settings, variants, skipped, layout = _clone_settings(settings, clone, scratch,
                                                                    plan.application)
        clone_target = T.from_url(clone.url)

        def forward(name: str) -> dict[str, Any]:
            with _stopped(rid, keep, PASS_TITLES[name]):
                run = upgrade.start(clone_settings, plan.to_version, plan.from_version,
                                    observer)
            passes[name] = _pass(run)
            return passes[name]

        # recorded with the pass, so the report shows what was left out from the ledger alone
        first = rec.step("forward", "forward", {},
                         lambda: {**forward("forward"), "not_rehearsed": skipped})
        safe_point(f"after {PASS_TITLES['forward']}")
        if first["state"] == "completed":
            def back() -> dict[str, Any]:
                with _stopped(rid, keep, PASS_TITLES["rollback"]):
                    run = upgrade.rollback(clone_settings, first["run_id"],
                                           restore=bool(plan.irreversible), observer=observer)
                passes["rollback"] = _pass(run, rollback=True)
                return passes["rollback"]

            rb = rec.step("rollback", "rollback", {"restore": bool(plan.irreversible)}, back)
            if rb["state"] != "rolled_back":
                problems.append(f"the rollback ended {rb['state']}: "
                                f"{rb.get('failure') or 'see the steps'}")
        else:
            problems.append(f"the upgrade would fail: {first.get('failure') or first['state']}")
        safe_point(f"after {PASS_TITLES['rollback']}")

        def compare() -> dict[str, Any]:
            after = fingerprint(clone_target)
            if after == before:
                return {"equal": True, "differences": [], "lossy": []}
            # on a fresh clone: the rollback's clone has lost the data already
            _drop(target, clone)
            if target.dialect.in_a_file:
                T.from_url(clone.url).sqlite_path.unlink()
            made.clear()
            make_clone()
            return {"equal": False, "differences": diff(before, after),
                    "lossy": _lossy(clone_target, clone_settings, plan)}

        cmp = rec.step("compare", "compare", {}, compare)
        safe_point("after the comparison")
        if not cmp["equal"]:
            lossy = cmp["lossy"]
            where = f" (down parts of {', '.join(lossy)})" if lossy else ""
            problems.append("the rollback does not give back the database as it was"
                            f"{where}: {'; '.join(cmp['differences'][:5])}")
        if first["state"] == "completed" and not problems:
            again = rec.step("forward again", "forward", {}, lambda: forward("again"))
            if again["state"] != "completed":
                problems.append("the second forward pass (after the rollback) failed: "
                                f"{again.get('failure') or again['state']}")
    finally:
        if not keep:
            def drop() -> dict[str, Any]:
                _drop(target, clone)
                return {}

            rec.step("drop clone", "drop", {}, drop)
    return {"passed": not problems, "problems": problems, "from": plan.from_version,
            "to": plan.to_version, "plan_digest": plan.digest(),
            "fingerprint_digest": before.digest, "clone": cloned, "kept": keep,
            "passes": passes, "lossy": lossy, "not_rehearsed": skipped,
            "variants": variants, **({"release": layout} if layout is not None else {})}


PASS_TITLES = {"forward": "the upgrade", "rollback": "the rollback",
               "again": "the second upgrade"}


@contextlib.contextmanager
def _stopped(rid: str, keep: bool, what: str) -> Iterator[None]:
    """A run on the clone that a signal stopped at its safe point is the rehearsal's stop:
    the clone's run is not to be resumed (the clone goes), so the message says so."""
    try:
        yield
    except RehearsalInterrupted:
        raise
    except Interrupted as e:
        where = f"during {what}" + (f", after its step {e.after}" if e.after else "")
        raise RehearsalInterrupted(rid, e.signum, where, keep) from e


def _lossy(clone_target: Target, clone_settings: Settings, plan: Plan) -> list[str]:
    """The migrations whose down part does not restore the database: each one applied and
    reverted alone, on the clone (which the rollback left at the schema it started from)."""
    from .fingerprint import fingerprint
    from .migrations import Migrator

    cfg = clone_settings.config
    if cfg.migrations_tool != "files":
        return []  # a tool's own changesets: their rollbacks are the tool's (not attributed)
    migrator = Migrator(clone_target, cfg.require_migrations_dir(), clock=clock.now)
    found = []
    try:
        by_id = {m.id: m for m in migrator.migrations()}
        for pm in plan.migrations:
            m = by_id.get(pm.id)
            if m is None or not pm.reversible:
                continue
            fp = fingerprint(clone_target)
            migrator.apply(m)
            migrator.revert(m.id)
            if fingerprint(clone_target) != fp:
                found.append(m.id)
            migrator.apply(m)  # the next one's up part may need it
    except StatekeeperError:
        pass  # the rollback's differences are reported either way
    finally:
        migrator.forget_connections()
    return found


# -- start --require-rehearsal -------------------------------------------------------------

def require_rehearsal(settings: Settings, lg: Any, target: Target, plan: Plan) -> str:
    """The id of the latest rehearsal of exactly this plan and these health checks on this
    target, if it passed and the target's fingerprint is still the one it cloned;
    ConfigError (exit 2) naming what is missing. A later failing rehearsal of the same plan
    outweighs an earlier passing one."""
    from .fingerprint import fingerprint
    from .opreplay import Operation
    from .ops import scan_ops

    digest, health = plan.digest(), health_identity(settings)
    files_now = release_identity(settings, plan)
    ours = [o for o in scan_ops(lg) if isinstance(o, Operation) and o.op == OP
            and o.target == target.display]
    # verify_before_act checked only what was appended since the local checkpoint: these
    # rows are the warrant, so each is checked whole (a rewritten one must not open the gate,
    # nor one rewritten so that a later failure no longer counts)
    for o in ours:
        lg.verify_stream(f"ops/{o.op_id}")
    same = [o for o in ours if o.args.get("plan_digest") == digest
            and o.args.get("health") == health
            and o.args.get("release_files") == files_now]
    if not same:
        raise ConfigError(
            "--require-rehearsal: no rehearsal of this plan (these migration files, this "
            f"release, {plan.from_version} -> {plan.to_version}, these health checks) is in "
            f"the ledger: run 'statekeeper rehearse --to {plan.to_version}' first")
    last = same[-1]
    if last.status != "succeeded":
        raise ConfigError(f"--require-rehearsal: the last rehearsal of this plan, "
                          f"{last.op_id}, did not pass: run 'statekeeper rehearse --to "
                          f"{plan.to_version}' first")
    clone = next((st for st in last.steps if st.kind == "clone" and st.result), None)
    cloned = (clone.result or {}).get("fingerprint_digest") if clone is not None else None
    now = fingerprint(target).digest
    if now != cloned:
        raise ConfigError(
            f"--require-rehearsal: the target changed since rehearsal {last.op_id} cloned it "
            f"(fingerprint {now[:16]}, rehearsed {str(cloned)[:16]}): rehearse again")
    return last.op_id
