"""Bad migration files through the real CLI (a separate process, real temporary projects, a
SQLite file and a PostgreSQL database): exit 2, one exact error line, and the target, the
backup directory and the ledger exactly as they were."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from cli.main import cli
from statekeeper import command
from statekeeper.migrations import CHANGELOG_TABLE, TAGS_TABLE
from tests.upgrade_support import GOOD, Project, make_project, seed


@pytest.fixture(params=["sqlite", "postgresql"])
def proj(request: pytest.FixtureRequest, tmp_path: Path) -> Project:
    if request.param == "sqlite":
        (tmp_path / "app.db").touch()
        url = f"sqlite:///{tmp_path / 'app.db'}"
    else:
        cluster = request.getfixturevalue("pg_cluster")
        url = cluster.url(cluster.createdb("files"))
    seed(request.param, url)
    return make_project(tmp_path / "proj", request.param, url, {})


def refused(proj: Project, *args: str, process: bool = False) -> str:
    """The one error line of a refused command: in a process of its own, or in-process with
    Click's runner (the same code; cheaper for the read-only commands)."""
    if process:
        p = proj.cli(*args)
        code, stdout, stderr = p.returncode, p.stdout, p.stderr
    else:
        r = CliRunner(env={"STATEKEEPER_CONFIG": None, "STATEKEEPER_FAILPOINT": None}).invoke(
            cli, ["--config", str(proj.config), *args], prog_name="statekeeper")
        assert r.exception is None or isinstance(r.exception, SystemExit), r.exception
        code, stdout, stderr = r.exit_code, r.stdout, r.stderr
    assert code == 2, (args, code, stdout, stderr)
    lines = stderr.splitlines()
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


def state(proj: Project) -> tuple[object, ...]:
    """What a rejected input must leave alone: the whole target (schema, data, changelog and
    tags), the backups on disk and the runs in the ledger."""
    backups = proj.dir / "backups"
    files = sorted(str(p) for p in backups.rglob("*")) if backups.exists() else []
    conn = proj.target().connect(autocommit=True)
    try:  # read directly: loading the files (as migrate status does) refuses them
        bookkeeping = [tuple(r) for t in (CHANGELOG_TABLE, TAGS_TABLE)
                       for r in conn.execute(f"SELECT * FROM {t} ORDER BY seq").fetchall()]
    finally:
        conn.close()
    return (proj.fingerprint().digest, bookkeeping, files, command.history(proj.settings()))


def test_a_nul_byte_is_refused_and_nothing_reaches_the_target(proj: Project) -> None:
    f = proj.dir / "migrations" / "001_nul.sql"
    # Before: PostgreSQL never saw the second statement, and the migration was recorded.
    f.write_bytes(b"CREATE TABLE a (x integer);\n\x00CREATE TABLE b (x integer);\n")
    before = state(proj)
    for args in (["migrate", "up"], ["migrate", "status"], ["start", "--to", "v2.6"]):
        assert refused(proj, *args, process=args[0] == "start") == (
            f"error: {f}: NUL byte at byte offset 28 (line 2); a migration must be text")
    assert state(proj) == before


def test_own_transaction_control_is_refused_when_loaded_before_any_backup(
    proj: Project
) -> None:
    (proj.dir / "migrations" / "001_bump_qty.sql").write_text(GOOD["001_bump_qty.sql"])
    f = proj.dir / "migrations" / "002_txn.sql"
    f.write_text("CREATE TABLE t (x integer);\n-- statekeeper:down\nBEGIN;\nDROP TABLE t;\n"
                 "COMMIT;\n")
    before = state(proj)
    message = (f"error: {f}: line 3: BEGIN starts or ends a transaction: statekeeper runs "
               f"each migration in a transaction of its own (remove it, or make the first "
               f"line -- statekeeper:no-transaction)")
    for args in (["plan", "--to", "v2.6"], ["migrate", "status"], ["migrate", "sql"],
                 ["migrate", "validate"], ["migrate", "up"], ["start", "--to", "v2.6"]):
        assert refused(proj, *args, process=args[0] == "start") == message, args
    # not even 001 ran, no backup was taken, no run was opened
    assert state(proj) == before


def test_a_near_miss_directive_is_refused_not_taken_for_a_comment(proj: Project) -> None:
    f = proj.dir / "migrations" / "001_orders.sql"
    # Before: the "down" SQL became part of the up part and dropped the table it created.
    f.write_text("CREATE TABLE orders (id integer);\n--statekeeper:down\nDROP TABLE orders;\n")
    before = state(proj)
    assert refused(proj, "migrate", "up", process=True) == (
        f"error: {f}: line 2: malformed directive '--statekeeper:down': write it exactly as "
        f"'-- statekeeper:down', at the start of its line")
    assert state(proj) == before
    f.write_text("CREATE TABLE orders (id integer);\n-- Statekeeper:Down\nDROP TABLE orders;\n")
    p = proj.cli("migrate", "up", check=True)
    assert p.stdout.startswith("applied 001_orders ")
    assert [(m["id"], m["reversible"]) for m in proj.cli_json("migrate", "status")] == [
        ("001_orders", True)]


# A name that is a keyword before the first COMMIT: the file was loaded (validate said ok) and
# `migrate up` ran it whole on PostgreSQL, committing t2 at the COMMIT with no changelog row,
# then failing at the SELECT (exit 1, 002_b pending, t2 there).
REPRO = ("CREATE TABLE t2 (begin int);\nCOMMIT;\nCREATE TABLE t3 (x int);\n"
         "SELECT no_such_col FROM t3;\n")
# What the lexer must still accept: the keywords as names, and a real body with ";" inside.
BODIES = {
    "postgresql": "CREATE FUNCTION g(a int) RETURNS int LANGUAGE sql\nBEGIN ATOMIC\n"
                  "  SELECT CASE WHEN a > 0 THEN 1 ELSE CASE a WHEN 0 THEN 0 END END AS end;\n"
                  "  SELECT a AS case;\nEND;\n",
    "sqlite": "CREATE TRIGGER tr AFTER INSERT ON t2 BEGIN\n"
              "  UPDATE t2 SET begin = CASE WHEN begin > 0 THEN 1 END;\n"
              "  SELECT 1 AS begin;\nEND;\n",
}


def tables(proj: Project, *names: str) -> list[str]:
    conn = proj.target().connect(autocommit=True)
    try:
        sql = ("SELECT name FROM sqlite_master WHERE type = 'table'" if proj.backend == "sqlite"
               else "SELECT table_name FROM information_schema.tables "
                    "WHERE table_schema = current_schema()")
        return sorted(r[0] for r in conn.execute(sql).fetchall() if r[0] in names)
    finally:
        conn.close()


def test_commit_after_a_keyword_used_as_a_name_is_refused_before_anything_runs(
    proj: Project
) -> None:
    (proj.dir / "migrations" / "001_bump_qty.sql").write_text(GOOD["001_bump_qty.sql"])
    f = proj.dir / "migrations" / "002_b.sql"
    f.write_text(REPRO)
    before = state(proj)
    message = (f"error: {f}: line 2: COMMIT starts or ends a transaction: statekeeper runs "
               f"each migration in a transaction of its own (remove it, or make the first "
               f"line -- statekeeper:no-transaction)")
    assert refused(proj, "migrate", "validate") == message
    assert refused(proj, "migrate", "up", process=True) == message
    assert state(proj) == before  # no changelog row, not even 001's
    assert tables(proj, "t2", "t3") == []
    f.write_text("CREATE TABLE t2 (begin int);\n" + BODIES[proj.backend])
    proj.cli("migrate", "up", check=True)
    assert proj.applied_ids() == ["001_bump_qty", "002_b"]
    assert tables(proj, "t2", "t3") == ["t2"]
