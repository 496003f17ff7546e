"""The Liquibase driver against a real PostgreSQL and the real Liquibase CLI (liquibase@4.28.1
from npm, which scripts/test installs into .cache/liquibase; ``STATEKEEPER_TEST_LIQUIBASE``
names another). Every Liquibase invocation starts a JVM (~3 s): the tests are few and each
covers a whole story."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from statekeeper import command
from statekeeper.fingerprint import fingerprint
from statekeeper.targets import Target
from tests.pgcluster import PgCluster
from tests.upgrade_support import ROOT, Project, seed

BUNDLED = ROOT / ".cache/liquibase/node_modules/liquibase/dist/liquibase/liquibase"
XMLNS = ('xmlns="http://www.liquibase.org/xml/ns/dbchangelog" '
         'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" '
         'xsi:schemaLocation="http://www.liquibase.org/xml/ns/dbchangelog '
         'http://www.liquibase.org/xml/ns/dbchangelog/dbchangelog-4.20.xsd"')


@pytest.fixture(scope="module")
def liquibase() -> str:
    exe = os.environ.get("STATEKEEPER_TEST_LIQUIBASE") or str(BUNDLED)
    missing = [what for what, ok in (("java", shutil.which("java")),
                                     (exe, os.access(exe, os.X_OK))) if not ok]
    if missing:
        why = f"not installed: {', '.join(missing)} (scripts/test installs liquibase@4.28.1)"
        if os.environ.get("CI") or os.environ.get("STATEKEEPER_FULL_SUITE"):
            pytest.fail(why)
        pytest.skip(why)
    return exe


def changeset(cid: str, author: str, body: str) -> str:
    return f'  <changeSet id="{cid}" author="{author}">\n    {body}\n  </changeSet>\n'


def changelog(*sets: str, include: str | None = None) -> str:
    inc = f'  <include file="{include}" relativeToChangelogFile="true"/>\n' if include else ""
    return (f'<?xml version="1.0" encoding="UTF-8"?>\n<databaseChangeLog {XMLNS}>\n'
            + "".join(sets) + inc + "</databaseChangeLog>\n")


AUDIT = changeset("1", "ana", '<createTable tableName="audit_log"><column name="id" '
                  'type="int"><constraints primaryKey="true"/></column><column name="note" '
                  'type="text"/></createTable>')


# slow only while the database says so (ALTER DATABASE ... SET sk.slow): the same changeset,
# the same MD5SUM, fast again once the test has killed it
BUMP = changeset("2", "ana", "<sql>SELECT pg_sleep(coalesce(nullif(current_setting('sk.slow', "
                 "true), ''), '0')::float); UPDATE positions SET qty = qty + 1000</sql>"
                 "<rollback>UPDATE positions SET qty = qty - 1000</rollback>")


FAILING = changeset("3", "bob", "<sql>UPDATE users SET name = 'x' WHERE no_such_column = 1"
                    "</sql><rollback/>")


def project(tmp_path: Path, cluster: PgCluster, exe: str, files: dict[str, str],
            password: str | None = None) -> Project:
    url = cluster.url(cluster.createdb("lb"))
    seed("postgresql", url)
    if password:
        url = url.replace("postgres@", f"postgres:{password}@")
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    (tmp_path / "statekeeper.toml").write_text(
        f'[target]\nurl = "{url}"\n\n[migrations]\ntool = "liquibase"\nliquibase = "{exe}"\n'
        'changelog = "db.changelog.xml"\n\n[backup]\nmethod = "pg_dump"\ndir = "backups"\n\n'
        '[health]\nchecks = [{ name = "users", sql = "SELECT count(*) FROM users", '
        'expect = "3" }]\n')
    p = Project(tmp_path, url, "postgresql")
    command.init(str(p.config), None, None, None, "migrations")
    return p


def events(p: Project, run_id: str) -> list[dict[str, Any]]:
    lg = p.settings().open_ledger(signing=False)
    try:
        return [{"type": e.type, **json.loads(e.payload)}
                for e in lg.read_stream(f"upgrade/{run_id}")]
    finally:
        lg.close()


def test_plan_lists_changesets_their_sql_and_which_have_no_rollback(
        tmp_path: Path, pg_cluster: PgCluster, liquibase: str) -> None:
    """``plan`` reads the user's changelog (with an include) through Liquibase itself: the
    pending changesets with their MD5SUM, the SQL ``update-sql`` prints, and beforehand which
    ones have no rollback. The password went to Liquibase's environment, never its argv or
    its output kept in the artifacts (0600)."""
    no_rollback = changeset("3", "bob", "<sql>DELETE FROM settings WHERE key = 'fee_bps'</sql>")
    p = project(tmp_path, pg_cluster, liquibase,
                {"db.changelog.xml": changelog(AUDIT, BUMP, include="kyc.xml"),
                 "kyc.xml": changelog(no_rollback)}, password="s3cret-pw")
    out = p.cli("plan", "--to", "v2.6", "--from", "v2.5", check=True).stdout
    lines = out.splitlines()
    assert "pending changesets: 3" in lines
    rows = {ln.split()[0]: ln for ln in lines if "MD5SUM 9:" in ln}
    assert list(rows) == ["db.changelog.xml::1::ana", "db.changelog.xml::2::ana",
                          "kyc.xml::3::bob"]
    assert rows["db.changelog.xml::1::ana"].endswith("has a rollback")  # createTable
    assert rows["db.changelog.xml::2::ana"].endswith("has a rollback")  # its own <rollback>
    assert "NO ROLLBACK (a rollback of this run restores the backup instead)" in \
        rows["kyc.xml::3::bob"]
    sql = out[out.index("SQL (liquibase update-sql):"):]
    assert "CREATE TABLE public.audit_log" in sql
    assert "UPDATE positions SET qty = qty + 1000" in sql
    assert "DELETE FROM settings WHERE key = 'fee_bps'" in sql
    assert "s3cret-pw" not in out
    logs = list((tmp_path / ".statekeeper").rglob("liquibase/*.log"))
    assert logs
    for f in logs:
        assert stat.S_IMODE(f.stat().st_mode) == 0o600
        text = f.read_text()
        assert "--url=jdbc:postgresql://127.0.0.1:" in text and "s3cret-pw" not in text
    # nothing was applied
    db = p.target_url.rsplit("/", 1)[1]
    assert pg_cluster.psql("SELECT to_regclass('audit_log') IS NULL", db) == "t"
    assert pg_cluster.psql("SELECT sum(qty) FROM positions", db) == "23"


def _wait_for(cond: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = cond()
        if got:
            return got
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_killed_liquibase_is_resumed_its_lock_released_and_a_failure_rolled_back(
        tmp_path: Path, pg_cluster: PgCluster, liquibase: str) -> None:
    """The whole story on one run: statekeeper and its Liquibase child are SIGKILLed while a
    changeset runs (its pg_sleep), leaving DATABASECHANGELOGLOCK held. ``resume`` proves the
    child dead, releases the lock (an event of the run), finds in DATABASECHANGELOG that the
    changeset did not commit, applies it, then the next changeset fails: its changeset and
    message go into step.failed, and the rollback is Liquibase's ``rollback --tag`` to the
    tag statekeeper made (v2.5), leaving the database equal to its fingerprint before."""
    p = project(tmp_path, pg_cluster, liquibase,
                {"db.changelog.xml": changelog(AUDIT, BUMP, FAILING)})
    before = fingerprint(Target.from_url(p.target_url)).digest
    db = p.target_url.rsplit("/", 1)[1]
    pg_cluster.psql(f"ALTER DATABASE {db} SET sk.slow = '60'")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("STATEKEEPER_FAILPOINT", None)
    sk = subprocess.Popen([sys.executable, "-m", "cli", "--config", str(p.config), "start",
                           "--to", "v2.6", "--from", "v2.5"], cwd=p.dir, env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        app = _wait_for(lambda: pg_cluster.psql(
            "SELECT application_name FROM pg_stat_activity WHERE query LIKE '%pg_sleep(%' "
            "AND application_name LIKE 'statekeeper-liquibase-%'", db), 90, "the pg_sleep")
        rec = next(json.loads(f.read_text()) for f in (p.dir / ".statekeeper").rglob(
            "liquibase/child-*.json") if json.loads(f.read_text())["application_name"] == app)
    finally:
        sk.kill()
        sk.wait()
    os.killpg(rec["pid"], signal.SIGKILL)
    assert pg_cluster.psql("SELECT locked FROM databasechangeloglock", db) == "t"
    pg_cluster.psql(f"ALTER DATABASE {db} RESET sk.slow")

    r = p.cli("resume", timeout=240)
    assert r.returncode == 1, r.stdout + r.stderr  # rolled back cleanly
    run_id = _only_run(p)
    evs = events(p, run_id)
    released = [e for e in evs if e["type"] == "migrations.lock_released"]
    assert len(released) == 1 and released[0]["pid"] == rec["pid"]
    assert released[0]["command"] == "update-count"
    try:
        assert pg_cluster.psql("SELECT locked FROM databasechangeloglock", db) == "f"
    except subprocess.CalledProcessError as e:
        raise AssertionError(e.stderr + r.stdout) from e
    recovered = [e for e in evs if e["type"] == "step.failed" and e.get("recovered")]
    assert [e["step"] for e in recovered] == ["migrate:db.changelog.xml::2::ana"]
    failed = [e for e in evs if e["type"] == "step.failed" and not e.get("recovered")]
    assert failed[-1]["step"] == "migrate:db.changelog.xml::3::bob"
    assert "db.changelog.xml::3::bob failed" in failed[-1]["error"]
    assert 'column "no_such_column" does not exist' in failed[-1]["error"]
    states = [e["to"] for e in evs if e["type"] == "state.changed"]
    assert states[-1] == "rolled_back"
    # rolled back by Liquibase, not by restoring the backup
    assert not [e for e in evs if e["type"] == "step.started" and e["kind"] == "restore"]
    assert [e["step"] for e in evs if e["type"] == "step.succeeded"
            and e["kind"] == "untag"] == ["untag:v2.5"]
    logs = sorted((p.dir / ".statekeeper/runs" / run_id / "liquibase").glob("*rollback*.log"))
    assert len(logs) == 1 and "rollback --tag=v2.5" in logs[0].read_text()
    assert fingerprint(Target.from_url(p.target_url)).digest == before
    assert pg_cluster.psql("SELECT count(*) FROM databasechangelog", db) == "0"


def _only_run(p: Project) -> str:
    runs = [d.name for d in (p.dir / ".statekeeper/runs").iterdir() if d.name != "plan"]
    assert len(runs) == 1, runs
    return runs[0]


# Liquibase 4.28's own output when a changeset fails (update-count on PostgreSQL)
FAILED_OUTPUT = """Running Changeset: db.changelog.xml::3::bob
ERROR: Exception Details
ERROR: Exception Primary Class:  PSQLException
ERROR: Exception Primary Reason:  ERROR: relation "nosuch" does not exist
  Position: 13
Unexpected error running Liquibase: Migration failed for changeset db.changelog.xml::3::bob:
     Reason: liquibase.exception.DatabaseException: ERROR: relation "nosuch" does not exist
  Position: 13 [Failed SQL: (0) INSERT INTO nosuch VALUES ('4111-1111')]

For more information, please use the --log-level flag
"""


def test_errors_and_rollbacks_are_read_from_liquibase_and_the_changelog(
        tmp_path: Path) -> None:
    """No JVM: a failed changeset's output becomes one MigrationError line naming it with
    the database's message (the failed statement, which quotes data, kept out of the line);
    which changesets have a rollback is read from XML, YAML and formatted SQL changelogs."""
    from statekeeper.errors import MigrationError
    from statekeeper.migrations.liquibase import _failure, _parse_update_sql, reversibility

    e = _failure("update-count", FAILED_OUTPUT, 1, "db.changelog.xml::3::bob")
    assert isinstance(e, MigrationError)
    assert str(e) == ('migration db.changelog.xml::3::bob failed: ERROR: relation "nosuch" '
                      'does not exist Position: 13')
    assert e.detail == "INSERT INTO nosuch VALUES ('4111-1111')"
    # the tag a tagDatabase changeset sets is the last value of its DATABASECHANGELOG row
    # (what baseline's changelog-sync-to-tag is chosen by)
    row = ("INSERT INTO public.databasechangelog (ID, AUTHOR, FILENAME, DATEEXECUTED, "
           "ORDEREXECUTED, MD5SUM, DESCRIPTION, COMMENTS, EXECTYPE, CONTEXTS, LABELS, "
           "LIQUIBASE, DEPLOYMENT_ID{}) VALUES ('{}', 'ana', 'db.changelog.xml', NOW(), 1, "
           "'9:ab', 'd', '', 'EXECUTED', NULL, NULL, '4.28.0', '1'{});\n")
    sets, _ = _parse_update_sql(
        "-- Changeset db.changelog.xml::t::ana\n" + row.format(", TAG", "t", ", 'v2.5'")
        + "-- Changeset db.changelog.xml::2::ana\nCREATE TABLE x (id int);\n"
        + row.format("", "2", ""), tmp_path / "db.changelog.xml")
    assert [(c.id, c.tag) for c in sets] == [("db.changelog.xml::t::ana", "v2.5"),
                                             ("db.changelog.xml::2::ana", None)]
    killed = _failure("update-count", "Running Changeset: x\n", -9, "db.changelog.xml::2::ana")
    assert str(killed) == ("migration db.changelog.xml::2::ana failed: Liquibase was killed "
                           "(exit status -9)")

    (tmp_path / "db.changelog.xml").write_text(changelog(
        AUDIT, BUMP, changeset("4", "cy", "<sql>DELETE FROM settings</sql>"),
        include="more.yaml"))
    (tmp_path / "more.yaml").write_text(
        "databaseChangeLog:\n"
        "  - changeSet: {id: y1, author: dee, changes: [{addColumn: {tableName: t}}]}\n"
        "  - changeSet: {id: y2, author: dee, changes: [{sql: {sql: DELETE FROM t}}]}\n"
        "  - include: {file: kyc.sql, relativeToChangelogFile: true}\n")
    (tmp_path / "kyc.sql").write_text(
        "--liquibase formatted sql\n--changeset eve:s1\nCREATE TABLE kyc (id int);\n"
        "--rollback DROP TABLE kyc;\n--changeset eve:s2\nDELETE FROM kyc;\n")
    assert reversibility(tmp_path / "db.changelog.xml") == {
        ("db.changelog.xml", "1", "ana"): True, ("db.changelog.xml", "2", "ana"): True,
        ("db.changelog.xml", "4", "cy"): False, ("more.yaml", "y1", "dee"): True,
        ("more.yaml", "y2", "dee"): False, ("kyc.sql", "s1", "eve"): True,
        ("kyc.sql", "s2", "eve"): False}


KYC = changeset("2", "ana", '<createTable tableName="kyc_checks"><column name="id" '
                'type="int"/><column name="user_id" type="int"/></createTable>')
STATUS = changeset("4", "bob", '<addColumn tableName="users"><column name="status" '
                   'type="text"/></addColumn>')


def test_baseline_marks_the_changesets_through_one_then_start_applies_the_rest(
        tmp_path: Path, pg_cluster: PgCluster, liquibase: str) -> None:
    """A database whose first two changesets were applied by hand: ``migrate baseline
    --through`` the second has Liquibase mark exactly those two as executed (nothing runs:
    the fingerprint is unchanged and recorded), tags that state v2.5 (owned by the
    operation), and ledgers each changeset's MD5SUM; a second baseline is refused without
    --force; ``plan`` and ``start`` then go from v2.5 over the two later changesets only."""
    from click.testing import CliRunner

    from cli.main import cli
    from statekeeper.ops import scan_ops

    def sk(*args: str, code: int = 0) -> str:
        r = CliRunner().invoke(cli, ["--config", str(p.config), *args])
        assert r.exit_code == code, r.output
        return r.output

    p = project(tmp_path, pg_cluster, liquibase,
                {"db.changelog.xml": changelog(AUDIT, KYC, BUMP.replace('"2"', '"3"'),
                                               STATUS)})
    db = p.target_url.rsplit("/", 1)[1]
    pg_cluster.psql("CREATE TABLE audit_log (id int PRIMARY KEY, note text); "
                    "CREATE TABLE kyc_checks (id int, user_id int)", db)
    before = fingerprint(Target.from_url(p.target_url)).digest
    first, second = "db.changelog.xml::1::ana", "db.changelog.xml::2::ana"

    out = sk("migrate", "baseline", "--tag", "v2.5", "--through", second,
             "--reason", "adopting statekeeper")
    assert "2 migrations recorded as applied, none run" in out
    rows = pg_cluster.psql("SELECT id || ' ' || md5sum || ' ' || exectype || ' ' || "
                           "coalesce(tag, '-') FROM databasechangelog ORDER BY orderexecuted",
                           db).splitlines()
    assert [r.split()[0] + " " + " ".join(r.split()[2:]) for r in rows] == [
        "1 EXECUTED -", "2 EXECUTED v2.5"]
    md5 = {f"db.changelog.xml::{r.split()[0]}::ana": r.split()[1] for r in rows}
    assert fingerprint(Target.from_url(p.target_url)).digest == before  # nothing ran
    with contextlib.closing(p.settings().open_ledger(signing=False)) as lg:
        (op,) = [op for op in scan_ops(lg) if op.op == "migrate.baseline"]
    (step,) = op.steps
    assert (op.status, op.args["through"], op.args["force"]) == ("succeeded", second, False)
    assert [(m["migration"], m["checksum"]) for m in step.args["migrations"]] == [
        (first, md5[first]), (second, md5[second])]
    assert step.args["written"] == [first, second]
    assert step.result["fingerprint_digest"] == before
    assert pg_cluster.psql("SELECT run_id FROM statekeeper_liquibase_tags WHERE name = "
                           "'v2.5'", db) == op.op_id

    refused = sk("migrate", "baseline", "--tag", "v2.4", "--through", first, code=2)
    assert "already has entries (2 changesets recorded (last " + second in refused
    assert "--force" in refused

    plan = json.loads(sk("plan", "--to", "v2.6", "--json"))
    assert plan["from_version"] == "v2.5"
    assert [m["id"] for m in plan["migrations"]] == ["db.changelog.xml::3::ana",
                                                     "db.changelog.xml::4::bob"]
    sk("start", "--to", "v2.6")
    assert pg_cluster.psql("SELECT string_agg(id, ',' ORDER BY orderexecuted) FROM "
                           "databasechangelog", db) == "1,2,3,4"
    assert pg_cluster.psql("SELECT sum(qty) FROM positions", db) == str(23 + 1000 * 4)  # 3 ran once
