"""No configuration key is accepted that nothing reads.

The test walks :data:`statekeeper.config.SCHEMA`: every accepted (section, key) must have a
probe here, and each probe runs a real command twice, with the key and without it, and shows
that the outcome differs. A key added to the schema without a reader fails
``test_every_accepted_key_has_a_probe``; a key whose reader is removed fails its probe.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest

from statekeeper import command
from statekeeper.command import Settings
from statekeeper.config import SCHEMA
from statekeeper.errors import StatekeeperError
from tests.pgcluster import PgCluster
from tests.upgrade_support import GOOD, SEED_SQL

Probe = Callable[[Path, bool, pytest.FixtureRequest], Any]
PROBES: dict[tuple[str, str], Probe] = {}


def probe(section: str, key: str) -> Callable[[Probe], Probe]:
    def register(f: Probe) -> Probe:
        PROBES[(section, key)] = f
        return f

    return register


def outcome(f: Callable[[], Any]) -> Any:
    """A command's result, or its error's class and message: either is behaviour."""
    try:
        return f()
    except StatekeeperError as e:
        return (type(e).__name__, str(e))
    except Exception as e:  # ledger errors
        if type(e).__module__.startswith("ledger"):
            return (type(e).__name__, str(e))
        raise


def sqlite_target(d: Path) -> str:
    db = d / "app.db"
    conn = sqlite3.connect(db)
    with conn:
        for s in SEED_SQL:
            conn.execute(s)
    conn.close()
    return f"sqlite:///{db}"


def migrations(d: Path, name: str = "migrations", files: dict[str, str] | None = None) -> None:
    (d / name).mkdir(exist_ok=True)
    for fname, text in (files or GOOD).items():
        (d / name / fname).write_text(text)


def settings(d: Path, toml: str) -> Settings:
    (d / "statekeeper.toml").write_text(toml)
    return Settings.load(str(d / "statekeeper.toml"))


def project(d: Path, extra: str, *, target: str | None = None) -> Settings:
    """A SQLite (or given) target at v2.5 with three pending migrations, an initialised ledger,
    and ``extra`` appended to its statekeeper.toml."""
    url = target or sqlite_target(d)
    migrations(d)
    s = settings(d, f'[target]\nurl = "{url}"\n\n[migrations]\ndir = "migrations"\n\n{extra}')
    command.init(str(d / "statekeeper.toml"), None, None, None, "migrations")
    command.migrate_tag(s, "v2.5")
    return s


def section(name: str, body: str, present: bool) -> str:
    return f"[{name}]\n{body}\n" if present else ""


# -- [ledger] ---------------------------------------------------------------------------------
@probe("ledger", "url")
def _ledger_url(d: Path, present: bool, _: pytest.FixtureRequest) -> Any:
    (d / "audit").mkdir()
    settings(d, section("ledger", 'url = "sqlite:///audit/trail.db"', present))
    command.init(str(d / "statekeeper.toml"), None, None, None, "migrations")
    return sorted(str(p.relative_to(d)) for p in d.rglob("*.db"))


@probe("ledger", "key")
def _ledger_key(d: Path, present: bool, _: pytest.FixtureRequest) -> Any:
    settings(d, section("ledger", 'key = "keys/signer.pem"', present))
    (d / "keys").mkdir()
    command.init(str(d / "statekeeper.toml"), None, None, None, "migrations")
    return sorted(str(p.relative_to(d)) for p in d.rglob("*.pem"))


# -- [target], [migrations] -------------------------------------------------------------------
@probe("target", "url")
def _target_url(d: Path, present: bool, _: pytest.FixtureRequest) -> Any:
    migrations(d)
    url = sqlite_target(d)
    s = settings(d, section("target", f'url = "{url}"', present)
                 + '[migrations]\ndir = "migrations"\n')
    return outcome(lambda: [(m.id, m.applied) for m in command.migrate_status(s)[0]])


@probe("migrations", "dir")
def _migrations_dir(d: Path, present: bool, _: pytest.FixtureRequest) -> Any:
    migrations(d, "changes", {"001_only.sql": "CREATE TABLE t (x INTEGER);\n"})
    url = sqlite_target(d)
    s = settings(d, f'[target]\nurl = "{url}"\n' + section("migrations", 'dir = "changes"',
                                                            present))
    return outcome(lambda: [m.id for m in command.migrate_status(s)[0]])


# -- [upgrade], [backup] ----------------------------------------------------------------------
@probe("upgrade", "application")
def _application(d: Path, present: bool, _: pytest.FixtureRequest) -> Any:
    s = project(d, section("upgrade", 'application = "trading-platform"', present))
    return command.plan(s, "v2.6").to_payload()["application"]


@probe("upgrade", "require_ticket")
def _require_ticket(d: Path, present: bool, _: pytest.FixtureRequest) -> Any:
    project(d, "")
    toml = (d / "statekeeper.toml").read_text()
    s = settings(d, toml + section("upgrade", "require_ticket = true", present))
    return outcome(lambda: command.migrate_tag(s, "v2.5.1").name)


@probe("upgrade", "require_rehearsal")
def _require_rehearsal(d: Path, present: bool, _: pytest.FixtureRequest) -> Any:
    project(d, "")
    toml = (d / "statekeeper.toml").read_text()
    s = settings(d, toml + section("upgrade", "require_rehearsal = true", present))
    return outcome(lambda: command.start(s, "v2.6").state)


@probe("backup", "method")
def _backup_method(d: Path, present: bool, _: pytest.FixtureRequest) -> Any:
    s = project(d, section("backup", 'method = "pg_dump"', present))
    return outcome(lambda: command.plan(s, "v2.6").to_payload()["backup"])


@probe("backup", "enabled")
def _backup_enabled(d: Path, present: bool, _: pytest.FixtureRequest) -> Any:
    s = project(d, section("backup", "enabled = false", present))
    return command.plan(s, "v2.6").to_payload()["steps"]


@probe("backup", "dir")
def _backup_dir(d: Path, present: bool, _: pytest.FixtureRequest) -> Any:
    s = project(d, section("backup", 'dir = "vault"', present))
    m = command.backup_create(s, backup_id="b1")
    return str(m.artifact_path.relative_to(d))


def _pgbackrest(d: Path, request: pytest.FixtureRequest, body: str) -> Settings:
    cluster: PgCluster = request.getfixturevalue("pg_cluster")
    url = cluster.url(cluster.createdb("stanza"))
    s = settings(d, f'[target]\nurl = "{url}"\n\n[backup]\nmethod = "pgbackrest"\n{body}\n')
    command.init(str(d / "statekeeper.toml"), None, None, None, "migrations")
    return s


def _create(s: Settings) -> Any:
    # the database name differs between the two runs; what the outcome says otherwise must not
    return re.sub(r"stanza_\d+_\d+_\d+", "<db>", repr(outcome(
        lambda: command.backup_create(s, backup_id="b1"))))


@probe("backup", "stanza")
def _stanza(d: Path, present: bool, request: pytest.FixtureRequest) -> Any:
    return _create(_pgbackrest(d, request, 'stanza = "main"' if present else ""))


@probe("backup", "pgbackrest_config")
def _pgbackrest_config(d: Path, present: bool, request: pytest.FixtureRequest) -> Any:
    conf = d / "pgbackrest.conf"
    conf.write_text(f"[global]\nrepo1-path={d}/repo\n")
    return _create(_pgbackrest(d, request, 'stanza = "main"\n'
                               + ('pgbackrest_config = "pgbackrest.conf"' if present else "")))


def _pgbackrest_restore(d: Path, request: pytest.FixtureRequest, body: str) -> Any:
    """A pgBackRest restore of a running server up to its first command: ``stop_command``
    (here one that leaves a mark and fails, so the server is never stopped)."""
    from statekeeper.backups import Manifest

    s = _pgbackrest(d, request, f'stanza = "main"\n{body}')
    manifest = Manifest(
        id="b1", method="pgbackrest", artifact="x", size=0, sha256="", server_version="15",
        created_at="", completed_at="", duration_ms=0, target="", database="",
        fingerprint={}, stanza="main", pgbackrest_label="L", restore_point="p",
    )
    driver = command.backup_manager(s)._driver()
    result = outcome(lambda: driver.restore(manifest, lambda: None))
    return result, (d / "stopped").exists()


STOP = 'stop_command = "touch {d}/stopped; echo refusing >&2; exit 7"'


@probe("backup", "stop_command")
def _stop_command(d: Path, present: bool, request: pytest.FixtureRequest) -> Any:
    body = 'start_command = "true"\n' + (STOP.format(d=d) if present else "")
    return _pgbackrest_restore(d, request, body)


@probe("backup", "start_command")
def _start_command(d: Path, present: bool, request: pytest.FixtureRequest) -> Any:
    body = STOP.format(d=d) + ("\nstart_command = \"true\"" if present else "")
    return _pgbackrest_restore(d, request, body)


def _pruned(d: Path, body: str) -> Any:
    """Two backups (backup create operations), then what ``backup prune --dry-run`` says."""
    s = project(d, f"[backup]\ndir = \"vault\"\n{body}\n")
    command.backup_create(s, backup_id="b1")
    command.backup_create(s, backup_id="b2")
    return outcome(lambda: [(v.manifest.id, v.delete)
                            for v in command.backup_prune(s, dry_run=True)])


@probe("backup", "keep")
def _backup_keep(d: Path, present: bool, _: pytest.FixtureRequest) -> Any:
    return _pruned(d, "keep = 1" if present else "")  # no rule: prune refuses


@probe("backup", "keep_days")
def _backup_keep_days(d: Path, present: bool, _: pytest.FixtureRequest) -> Any:
    return _pruned(d, "keep = 1\n" + ("keep_days = 1" if present else ""))


@probe("backup", "jobs")
def _backup_jobs(d: Path, present: bool, request: pytest.FixtureRequest) -> Any:
    """pg_dump's directory format, written by two processes, instead of one file."""
    cluster: PgCluster = request.getfixturevalue("pg_cluster")
    url = cluster.url(cluster.createdb("jobs"))
    s = project(d, section("backup", "jobs = 2", present), target=url)
    return command.backup_create(s, backup_id="b1").artifact


@probe("backup", "cluster_databases")
def _cluster_databases(d: Path, present: bool, request: pytest.FixtureRequest) -> Any:
    """A pgBackRest run's preflight refuses while another database of the cluster is not
    acknowledged; with every other one listed it passes (and the backup fails: no stanza)."""
    from tests.upgrade_support import seed

    cluster: PgCluster = request.getfixturevalue("pg_cluster")
    name = cluster.createdb("scope")
    seed("postgresql", cluster.url(name))
    others = [db for db in cluster.psql(
        "SELECT datname FROM pg_database WHERE datallowconn AND NOT datistemplate"
    ).split() if db != name]
    listed = ", ".join(f'"{db}"' for db in others)
    s = project(d, '[backup]\nmethod = "pgbackrest"\nstanza = "main"\n'
                + (f"cluster_databases = [{listed}]\n" if present else ""),
                target=cluster.url(name))
    run = command.start(s, "v2.6")
    return run.state, "not in [backup] cluster_databases" in (run.failure or "")


# -- [health] ---------------------------------------------------------------------------------
def _health_run(d: Path, health: str, target: str | None = None) -> tuple[str, int]:
    """A real upgrade whose health step runs; (final state, health step duration in ms)."""
    s = project(d, f"[backup]\nenabled = false\n\n[health]\n{health}\n", target=target)
    outcome(lambda: command.start(s, "v2.6"))
    run = command.status(s)
    steps = [st for st in run.steps if st.kind == "health"]
    return run.state, sum(st.duration_ms or 0 for st in steps)


FAILING = 'checks = [{ name = "missing", sql = "SELECT count(*) FROM no_such_table" }]'


@probe("health", "checks")
def _checks(d: Path, present: bool, _: pytest.FixtureRequest) -> Any:
    s = project(d, section("health", 'checks = [{ name = "users readable", '
                           'sql = "SELECT count(*) FROM users", expect = "3" }]', present))
    return command.plan(s, "v2.6").to_payload()["health_checks"]


# retries/interval/timeout are read by statekeeper/health.py; the probes measure what a user
# sees: how long a failing health step takes, whether a slow check passes.


@probe("health", "retries")
def _retries(d: Path, present: bool, _: pytest.FixtureRequest) -> Any:
    state, ms = _health_run(d, FAILING + '\ninterval = "200ms"'
                            + ("\nretries = 0" if present else ""))
    return state, ms >= 300  # the default 3 attempts sleep 2 x 200 ms; one attempt does not


@probe("health", "interval")
def _interval(d: Path, present: bool, _: pytest.FixtureRequest) -> Any:
    state, ms = _health_run(d, FAILING + "\nretries = 1"
                            + ('\ninterval = "50ms"' if present else ""))
    return state, ms >= 800  # one sleep: 1 s by default, 50 ms with the key


@probe("health", "timeout")
def _timeout(d: Path, present: bool, request: pytest.FixtureRequest) -> Any:
    cluster: PgCluster = request.getfixturevalue("pg_cluster")
    url = cluster.url(cluster.createdb("health"))
    conn = psycopg.connect(
        f"host=127.0.0.1 port={cluster.port} user=postgres dbname={url.rsplit('/', 1)[1]}",
        autocommit=True)
    for stmt in SEED_SQL:
        conn.execute(stmt)
    conn.close()
    slow = 'checks = [{ name = "slow", sql = "SELECT 1 FROM pg_sleep(1)", expect = "1" }]'
    state, _ms = _health_run(d, slow + "\nretries = 0"
                             + ('\ntimeout = "200ms"' if present else ""), target=url)
    assert present or state == "completed", state
    return state  # completed by default (10 s), rolled back with a 200 ms timeout


@probe("health", "deadline")
def _deadline(d: Path, present: bool, _: pytest.FixtureRequest) -> Any:
    # statekeeper health (no upgrade): six attempts 50 ms apart, or one, when the next would
    # start after a 10 ms deadline
    s = project(d, section("health", FAILING + '\nretries = 5\ninterval = "50ms"'
                           + ('\ndeadline = "10ms"' if present else ""), True))
    return [(c.name, c.ok, c.attempts) for c in command.health(s).checks]


# -- [deploy] ---------------------------------------------------------------------------------
def _deploy_plan(d: Path, body: str) -> Any:
    """What `plan` says of the release side (or the configuration error)."""
    (d / "releases" / "v2.6" / "config").mkdir(parents=True)
    (d / "releases" / "v2.6" / "config" / "app.env").write_text("A=1\n")
    s = outcome(lambda: project(d, f"[backup]\nenabled = false\n\n[deploy]\n{body}\n"))
    if not isinstance(s, Settings):
        return s
    return outcome(lambda: (lambda p: (p["release"], p["steps"]))(
        command.plan(s, "v2.6").to_payload()))


@probe("deploy", "releases_dir")
def _releases_dir(d: Path, present: bool, _: pytest.FixtureRequest) -> Any:
    return _deploy_plan(d, 'releases_dir = "releases"' if present else "")


@probe("deploy", "current_link")
def _current_link(d: Path, present: bool, _: pytest.FixtureRequest) -> Any:
    return _deploy_plan(d, 'releases_dir = "releases"'
                        + ('\ncurrent_link = "live"' if present else ""))


@probe("deploy", "config_files")
def _config_files(d: Path, present: bool, _: pytest.FixtureRequest) -> Any:
    return _deploy_plan(d, 'releases_dir = "releases"'
                        + ('\nconfig_files = ["app.env"]' if present else ""))


@probe("deploy", "config_from")
def _config_from(d: Path, present: bool, _: pytest.FixtureRequest) -> Any:
    return _deploy_plan(d, 'releases_dir = "releases"\nconfig_files = ["app.env"]'
                        + ('\nconfig_from = "releases/{version}/config"' if present else ""))


@probe("deploy", "stop")
def _deploy_stop(d: Path, present: bool, _: pytest.FixtureRequest) -> Any:
    return _deploy_plan(d, 'releases_dir = "releases"\nstart = "true"'
                        + ('\nstop = "true"' if present else ""))


@probe("deploy", "start")
def _deploy_start(d: Path, present: bool, _: pytest.FixtureRequest) -> Any:
    return _deploy_plan(d, 'releases_dir = "releases"\nstop = "true"'
                        + ('\nstart = "true"' if present else ""))


@probe("deploy", "rehearsal_stop")
def _deploy_rehearsal_stop(d: Path, present: bool, _: pytest.FixtureRequest) -> Any:
    # what a rehearsal runs is shown by tests/test_rehearse_release.py; here: read and checked
    return _deploy_plan(d, 'releases_dir = "releases"\nrehearsal_start = "true"'
                        + ('\nrehearsal_stop = "true"' if present else ""))


@probe("deploy", "rehearsal_start")
def _deploy_rehearsal_start(d: Path, present: bool, _: pytest.FixtureRequest) -> Any:
    return _deploy_plan(d, 'releases_dir = "releases"\nrehearsal_stop = "true"'
                        + ('\nrehearsal_start = "true"' if present else ""))


@probe("deploy", "command")
def _deploy_command(d: Path, present: bool, _: pytest.FixtureRequest) -> Any:
    return _deploy_plan(d, 'releases_dir = "releases"' + (
        '\n[[deploy.command]]\nrun = "true"\nundo = "true"' if present else ""))


@probe("deploy", "timeout")
def _deploy_timeout(d: Path, present: bool, _: pytest.FixtureRequest) -> Any:
    # a real upgrade whose stop command takes 0.3 s: completed by default (60 s), rolled back
    # with a 100 ms timeout
    (d / "releases" / "v2.6").mkdir(parents=True)
    s = project(d, '[backup]\nenabled = false\n\n[deploy]\nreleases_dir = "releases"\n'
                'stop = "sleep 0.3"\nstart = "true"\n' + ('timeout = "100ms"\n' if present else ""))
    outcome(lambda: command.start(s, "v2.6"))
    return command.status(s).state


# -- [migrations] tool = "liquibase" and its keys -----------------------------------------------
def _liquibase(d: Path, request: pytest.FixtureRequest, body: str) -> Any:
    """``migrate status`` of a Liquibase project on PostgreSQL whose ``liquibase`` is a script
    that prints what it was given and fails (no JVM: what differs is which files it gets)."""
    cluster: PgCluster = request.getfixturevalue("pg_cluster")
    url = cluster.url(cluster.createdb("lb"))
    fake = d / "fake-liquibase"
    fake.write_text('#!/bin/sh\necho "given: $(echo "$@" | tr " " "\\n" | '
                    'grep -E "^--(changelog-file|defaults-file)" | sed "s|.*/||" | tr "\\n" " ")"'
                    "\nexit 1\n")
    fake.chmod(0o755)
    for name in ("db.changelog.xml", "changes.xml", "lb.properties"):
        (d / name).write_text("")
    s = settings(d, f'[target]\nurl = "{url}"\n\n[migrations]\n{body}\n')
    return re.sub(r"lb_\d+_\d+_\d+", "<db>", repr(outcome(
        lambda: [m.id for m in command.migrate_status(s)[0]])))


@probe("migrations", "tool")
def _tool(d: Path, present: bool, request: pytest.FixtureRequest) -> Any:
    migrations(d, "migrations", {"001_only.sql": "CREATE TABLE t (x INTEGER);\n"})
    return _liquibase(d, request, 'dir = "migrations"\nliquibase = "./fake-liquibase"\n'
                      + ('tool = "liquibase"' if present else ""))


@probe("migrations", "liquibase")
def _liquibase_command(d: Path, present: bool, request: pytest.FixtureRequest) -> Any:
    return _liquibase(d, request, 'tool = "liquibase"\n'
                      + ('liquibase = "./fake-liquibase"' if present else ""))


@probe("migrations", "changelog")
def _changelog(d: Path, present: bool, request: pytest.FixtureRequest) -> Any:
    return _liquibase(d, request, 'tool = "liquibase"\nliquibase = "./fake-liquibase"\n'
                      + ('changelog = "changes.xml"' if present else ""))


@probe("migrations", "properties")
def _properties(d: Path, present: bool, request: pytest.FixtureRequest) -> Any:
    return _liquibase(d, request, 'tool = "liquibase"\nliquibase = "./fake-liquibase"\n'
                      + ('properties = "lb.properties"' if present else ""))


# -- the walk ---------------------------------------------------------------------------------
ALL_KEYS = sorted((s, k) for s, keys in SCHEMA.items() for k in keys)


def test_every_accepted_key_has_a_probe() -> None:
    assert sorted(PROBES) == ALL_KEYS


@pytest.mark.parametrize(
    "key",
    ALL_KEYS,
    ids=lambda k: f"{k[0]}.{k[1]}",
)
def test_each_key_changes_behaviour(
    key: tuple[str, str], tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    with_key, without = tmp_path / "with", tmp_path / "without"
    with_key.mkdir()
    without.mkdir()
    # Each run has its own directory: it must not be what makes the outcomes differ.
    a = repr(PROBES[key](without, False, request)).replace(str(without), "<dir>")
    b = repr(PROBES[key](with_key, True, request)).replace(str(with_key), "<dir>")
    assert a != b, f"[{key[0]}] {key[1]} made no difference: {a}"
