"""Migrations against real databases: every test runs on a SQLite file and on a fresh
PostgreSQL 15 database of the throwaway test cluster. The error position of a failing text and
the target lock are the dialect contract's (tests/test_dialect_contract.py)."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from statekeeper.errors import (
    ConfigError,
    IrreversibleError,
    MigrationError,
    ValidationError,
)
from statekeeper.migrations import CHANGELOG_TABLE, Migrator
from statekeeper.targets import Target


@pytest.fixture
def target(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> Target:
    if backend == "sqlite":
        path = tmp_path / "app.db"
        sqlite3.connect(path).close()
        return Target.from_url(f"sqlite:///{path}")
    return Target.from_url(request.getfixturevalue("pg_url"))


@pytest.fixture
def mdir(tmp_path: Path) -> Path:
    d = tmp_path / "migrations"
    d.mkdir()
    return d


def fixed_clock() -> datetime:
    return datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)


@pytest.fixture
def mig(target: Target, mdir: Path) -> Migrator:
    return Migrator(target, mdir, clock=fixed_clock)


def write(d: Path, name: str, text: str) -> Path:
    p = d / name
    p.write_text(text, encoding="utf-8")
    return p


def query(target: Target, sql: str) -> list[tuple[Any, ...]]:
    conn = target.connect(autocommit=True)
    try:
        return [tuple(r) for r in conn.execute(sql).fetchall()]
    finally:
        conn.close()


def tables(target: Target) -> set[str]:
    if target.backend == "sqlite":
        rows = query(target, "SELECT name FROM sqlite_master WHERE type = 'table'")
    else:
        rows = query(target, "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
    return {r[0] for r in rows}


def catalog(target: Target) -> list[tuple[Any, ...]]:
    """Everything a migration could change, as comparable rows."""
    if target.backend == "sqlite":
        rows = query(target, "SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY name")
        if any(r[1] == CHANGELOG_TABLE for r in rows):
            rows += query(target, f"SELECT * FROM {CHANGELOG_TABLE} ORDER BY seq")
        return rows
    rows = query(target, """
        SELECT c.relname, c.relkind, a.attname, format_type(a.atttypid, a.atttypmod)
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        LEFT JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
        WHERE n.nspname = 'public' ORDER BY 1, 3""")
    rows += query(target, "SELECT proname, prosrc FROM pg_proc p JOIN pg_namespace n "
                          "ON n.oid = p.pronamespace WHERE n.nspname = 'public' ORDER BY 1")
    if any(r[0] == CHANGELOG_TABLE for r in rows):
        rows += query(target, f"SELECT * FROM {CHANGELOG_TABLE} ORDER BY seq")
    return rows


def ids(records: list[Any]) -> list[str]:
    return [r.id for r in records]


# -- applying --------------------------------------------------------------------------------
def test_natural_order_apply_and_changelog(mig: Migrator, mdir: Path, target: Target) -> None:
    # In plain string order 10_ would run before 2_ and fail: the table does not exist yet.
    write(mdir, "1_users.sql", "CREATE TABLE users (id integer PRIMARY KEY);\n")
    write(mdir, "2_orders.sql", "CREATE TABLE orders (id integer PRIMARY KEY);\n")
    write(mdir, "10_orders_qty.sql", "ALTER TABLE orders ADD COLUMN qty integer;\n")
    assert ids(mig.pending()) == ["1_users", "2_orders", "10_orders_qty"]
    seen: list[str] = []
    applied = mig.up(run_id="run-1", on_applied=lambda r: seen.append(r.id))
    assert ids(applied) == seen == ["1_users", "2_orders", "10_orders_qty"]
    recorded = mig.applied()
    assert ids(recorded) == ["1_users", "2_orders", "10_orders_qty"]
    files = {m.id: m.checksum for m in mig.migrations()}
    for r in recorded:
        assert r.checksum == files[r.id]
        assert r.applied_at == "2026-01-02T03:04:05.678901Z"
        assert r.run_id == "run-1" and r.tag is None and r.execution_ms >= 0
    assert mig.pending() == [] and mig.is_applied("10_orders_qty")
    assert mig.up() == []  # nothing pending: a no-op
    assert {"users", "orders", CHANGELOG_TABLE} <= tables(target)


def test_apply_one_at_a_time_is_safe_to_repeat(mig: Migrator, mdir: Path) -> None:
    write(mdir, "1_a.sql", "CREATE TABLE a (x integer);\n")
    write(mdir, "2_b.sql", "CREATE TABLE b (x integer);\n")
    m1, m2 = mig.migrations()
    with pytest.raises(ConfigError, match=r"^cannot apply 2_b before 1_a \(file order\)$"):
        mig.apply(m2)
    first = mig.apply(m1, run_id="r")
    assert mig.apply(m1, run_id="r") == first  # already applied: nothing runs again
    assert mig.is_applied("1_a") and not mig.is_applied("2_b")
    mig.apply(m2)
    assert ids(mig.applied()) == ["1_a", "2_b"]


def test_up_to_a_target_migration(mig: Migrator, mdir: Path) -> None:
    for i in range(1, 4):
        write(mdir, f"{i}_t{i}.sql", f"CREATE TABLE t{i} (x integer);\n")
    assert ids(mig.up(target_id="2_t2")) == ["1_t1", "2_t2"]
    assert ids(mig.pending()) == ["3_t3"]
    with pytest.raises(ConfigError, match="unknown migration 'nope'"):
        mig.up(target_id="nope")


PG_BODY = """-- a function with a dollar-quoted body full of semicolons
CREATE FUNCTION add_one(n integer) RETURNS integer AS $fn$
DECLARE
  result integer;  -- a comment; inside the body
BEGIN
  result := n + 1;
  RETURN result;
END;
$fn$ LANGUAGE plpgsql;
/* a block comment; /* nested */ still a comment; */
CREATE TABLE notes (body text);
INSERT INTO notes VALUES ('semi;colon'), ($$dollar; quoted$$);
DO $$ BEGIN PERFORM add_one(1); END $$;
SELECT add_one(41) AS answer;  -- a trailing SELECT
"""

SQLITE_BODY = """-- a trigger whose body is full of semicolons
CREATE TABLE notes (body text);
CREATE TABLE log (msg text);
CREATE TRIGGER notes_log AFTER INSERT ON notes BEGIN
  INSERT INTO log VALUES ('inserted; ' || new.body);  -- a comment; inside
  INSERT INTO log VALUES ('twice;');
END;
/* a block comment; still a comment; */
INSERT INTO notes VALUES ('semi;colon');
SELECT count(*) FROM notes  -- a trailing SELECT, no semicolon
"""


def test_whole_file_with_bodies_comments_and_trailing_select(
    mig: Migrator, mdir: Path, target: Target
) -> None:
    write(mdir, "1_body.sql", PG_BODY if target.backend == "postgresql" else SQLITE_BODY)
    (rec,) = mig.up()
    assert rec.id == "1_body"
    if target.backend == "postgresql":
        assert query(target, "SELECT add_one(41)") == [(42,)]
        assert query(target, "SELECT body FROM notes ORDER BY body") == [
            ("dollar; quoted",), ("semi;colon",)]
    else:
        assert query(target, "SELECT msg FROM log ORDER BY msg") == [
            ("inserted; semi;colon",), ("twice;",)]


def test_failing_third_migration_leaves_first_two(
    mig: Migrator, mdir: Path, target: Target
) -> None:
    write(mdir, "0001_users.sql", "CREATE TABLE users (id integer PRIMARY KEY);\n")
    write(mdir, "0002_email.sql", "ALTER TABLE users ADD COLUMN email text;\n")
    bad = ("-- adds an audit table, then the email column again\n"
           "CREATE TABLE audit (x integer);\n"
           "ALTER TABLE users ADD COLUMN email text;\n")
    write(mdir, "0003_again.sql", bad)
    write(mdir, "0004_never.sql", "CREATE TABLE never (x integer);\n")
    applied: list[str] = []
    with pytest.raises(MigrationError) as e:
        mig.up(on_applied=lambda r: applied.append(r.id))
    err = e.value
    assert err.migration_id == "0003_again"
    assert err.position == bad.index("ALTER TABLE") + 1  # the failing statement, 1-based
    expected = ('column "email" of relation "users" already exists'
                if target.backend == "postgresql" else "duplicate column name: email")
    assert err.server_message == expected
    assert str(err) == f"migration 0003_again failed at {mdir / '0003_again.sql'}:3:1: {expected}"
    assert (err.line, err.column) == (3, 1)
    assert err.display_lines()[:2] == ["3 | ALTER TABLE users ADD COLUMN email text;",
                                       "  | ^"]
    assert applied == ["0001_users", "0002_email"]
    assert ids(mig.applied()) == ["0001_users", "0002_email"]
    assert not mig.is_applied("0003_again")
    assert "audit" not in tables(target) and "never" not in tables(target)  # nothing half-done
    assert ids(mig.pending()) == ["0003_again", "0004_never"]


def test_transaction_control_in_a_migration_is_refused_before_it_runs(
    mig: Migrator, mdir: Path, target: Target
) -> None:
    text = "BEGIN;\nCREATE TABLE t (x integer);\nCOMMIT;\n"
    p = write(mdir, "1_t.sql", text)
    # refused when the files are loaded: by the read-only commands too, before any write
    for call in (mig.status, mig.validate, mig.sql, mig.up):
        with pytest.raises(ConfigError, match=rf"^{p}: line 1: BEGIN starts or ends a "
                           r"transaction: statekeeper runs each migration"):
            call()
    assert "t" not in tables(target) and CHANGELOG_TABLE not in tables(target)


# -- validation ------------------------------------------------------------------------------
def test_edited_applied_migration_is_refused_naming_the_file(
    mig: Migrator, mdir: Path, target: Target
) -> None:
    p = write(mdir, "1_users.sql", "CREATE TABLE users (id integer);\n")
    mig.up()
    old = mig.migrations()[0].checksum
    p.write_text("CREATE TABLE users (id bigint);\n")
    new = mig.migrations()[0].checksum
    write(mdir, "2_more.sql", "CREATE TABLE more (x integer);\n")
    msg = (f"migration 1_users was edited after it was applied: the up part of {p} has sha256 "
           f"{new[:12]}, the changelog recorded {old[:12]} (restore the file and put the "
           f"change in a new migration)")
    with pytest.raises(ValidationError) as e:
        mig.validate()
    assert str(e.value) == msg
    with pytest.raises(ValidationError, match="was edited after it was applied"):
        mig.up()
    assert "more" not in tables(target)  # validation runs before anything
    assert [s.state for s in mig.status()] == ["edited", "pending"]


def test_deleted_applied_migration_is_refused(mig: Migrator, mdir: Path, target: Target) -> None:
    p = write(mdir, "1_users.sql", "CREATE TABLE users (id integer);\n")
    write(mdir, "2_orders.sql", "CREATE TABLE orders (id integer);\n-- statekeeper:down\n"
                                "DROP TABLE orders;\n")
    mig.up()
    mig.tag("v1")
    p.unlink()
    msg = (f"migration 1_users is applied but its file {p} is missing (restore the file; "
           "applied migrations must stay in the directory)")
    for call in (mig.validate, mig.up, lambda: mig.down_to_tag("v1"), lambda: mig.sql()):
        with pytest.raises(ValidationError) as e:
            call()
        assert str(e.value) == msg
    assert [(s.id, s.state) for s in mig.status()] == [("1_users", "missing"),
                                                       ("2_orders", "applied")]


def test_a_new_file_sorting_before_an_applied_one_is_refused(mig: Migrator, mdir: Path) -> None:
    write(mdir, "2_b.sql", "CREATE TABLE b (x integer);\n")
    mig.up()
    p = write(mdir, "1_a.sql", "CREATE TABLE a (x integer);\n")
    with pytest.raises(ValidationError) as e:
        mig.up()
    assert str(e.value) == (f"migration 1_a ({p}) is not applied but sorts before applied "
                            "migration 2_b; rename it to sort after 2_b")


# -- tags and rolling back -------------------------------------------------------------------
def reversible(table: str) -> str:
    return f"CREATE TABLE {table} (x integer);\n-- statekeeper:down\nDROP TABLE {table};\n"


def test_tags_and_down_to_tag_in_reverse_order(mig: Migrator, mdir: Path, target: Target) -> None:
    empty = mig.tag("empty")  # before anything is applied, even before the changelog exists
    assert empty.migration_id is None and mig.last_tag() == "empty"
    for i in range(1, 5):
        write(mdir, f"{i}_t{i}.sql", reversible(f"t{i}"))
    mig.up(target_id="2_t2")
    v1 = mig.tag("v1", run_id="run-9")
    assert (v1.name, v1.migration_id, v1.run_id) == ("v1", "2_t2", "run-9")
    assert mig.tag("v1", run_id="run-9") == v1  # the same run repeating itself: fine
    assert mig.applied()[-1].tag == "v1"
    mig.up()
    assert [t.name for t in mig.tags()] == ["empty", "v1"] and mig.last_tag() == "v1"
    assert ids(mig.plan_down_to_tag("v1")) == ["4_t4", "3_t3"]
    before = catalog(target)
    sql = mig.sql("v1")
    assert catalog(target) == before  # a dry run changes nothing
    assert sql.index("DROP TABLE t4") < sql.index("DROP TABLE t3")
    reverted: list[str] = []
    assert mig.down_to_tag("v1", on_reverted=lambda m: reverted.append(m.id)) == ["4_t4", "3_t3"]
    assert reverted == ["4_t4", "3_t3"]
    assert ids(mig.applied()) == ["1_t1", "2_t2"]
    assert not {"t3", "t4"} & tables(target) and {"t1", "t2"} <= tables(target)
    assert mig.down_to_tag("v1") == []  # already there: safe to repeat
    assert mig.down_to_tag("empty") == ["2_t2", "1_t1"]
    assert mig.applied() == [] and not {"t1", "t2"} & tables(target)
    # reverting 2_t2 removed the tag that named the state it made: v1 is gone, so the last tag
    # is again the state the schema is in
    assert [t.name for t in mig.tags()] == ["empty"] and mig.last_tag() == "empty"
    with pytest.raises(ConfigError, match=r"^unknown tag 'v1' \(known tags: empty\)"):
        mig.down_to_tag("v1")


def test_tag_errors(mig: Migrator) -> None:
    mig.tag("v2.5")
    with pytest.raises(ConfigError) as e:
        mig.tag("v2.5")
    assert str(e.value) == ("tag v2.5 already exists (created 2026-01-02T03:04:05.678901Z at no "
                            "migrations applied); choose another name")
    with pytest.raises(ConfigError, match=r"^tag name 'two words' is not valid"):
        mig.tag("two words")
    with pytest.raises(ConfigError) as e2:
        mig.plan_down_to_tag("v9")
    assert str(e2.value) == "unknown tag 'v9' (known tags: v2.5)"


def test_down_over_an_irreversible_migration_is_refused_before_anything_runs(
    mig: Migrator, mdir: Path, target: Target
) -> None:
    write(mdir, "1_a.sql", reversible("a"))
    mig.up()
    mig.tag("v1")
    p = write(mdir, "2_b.sql", "CREATE TABLE b (x integer);\n")  # no down part
    write(mdir, "3_c.sql", reversible("c"))
    mig.up()
    msg = (f"cannot roll back to tag v1: migration 2_b has no down part (no "
           f"'-- statekeeper:down' line in {p}); only restoring a backup can undo it")
    for call in (lambda: mig.plan_down_to_tag("v1"), lambda: mig.down_to_tag("v1"),
                 lambda: mig.sql("v1")):
        with pytest.raises(IrreversibleError) as e:
            call()
        assert str(e.value) == msg
    assert ids(mig.applied()) == ["1_a", "2_b", "3_c"]  # 3_c was not reverted either
    assert {"a", "b", "c"} <= tables(target)
    assert mig.revert("3_c") is not None
    with pytest.raises(IrreversibleError, match=r"^migration 2_b has no down part"):
        mig.revert("2_b")
    assert ids(mig.applied()) == ["1_a", "2_b"]


def test_revert_one_migration(mig: Migrator, mdir: Path, target: Target) -> None:
    write(mdir, "1_a.sql", reversible("a"))
    write(mdir, "2_b.sql", reversible("b"))
    mig.up()
    with pytest.raises(ConfigError, match=r"^cannot revert 1_a: 2_b was applied after it"):
        mig.revert("1_a")
    rec = mig.revert("2_b", run_id="r")
    assert rec is not None and rec.id == "2_b"
    assert mig.revert("2_b") is None  # not applied any more: safe to repeat
    assert ids(mig.applied()) == ["1_a"] and "b" not in tables(target)


def test_failing_down_part_reports_its_position_in_the_file(
    mig: Migrator, mdir: Path, target: Target
) -> None:
    text = ("CREATE TABLE a (x integer);\n-- statekeeper:down\n"
            "DROP TABLE a;\nDROP TABLE no_such_table;\n")
    write(mdir, "1_a.sql", text)
    mig.up()
    with pytest.raises(MigrationError) as e:
        mig.revert("1_a")
    assert e.value.migration_id == "1_a"
    assert e.value.position == text.index("DROP TABLE no_such_table") + 1
    assert mig.is_applied("1_a") and "a" in tables(target)  # the down part rolled back whole


# -- dry run ----------------------------------------------------------------------------------
def test_dry_run_changes_nothing(mig: Migrator, mdir: Path, target: Target) -> None:
    write(mdir, "1_a.sql", reversible("a"))
    write(mdir, "2_b.sql", "-- statekeeper:no-transaction\nCREATE TABLE b (x integer);\n")
    before = catalog(target)
    text = mig.sql()
    assert catalog(target) == before  # not even the changelog table was created
    assert CHANGELOG_TABLE not in tables(target)
    assert text == (
        "-- statekeeper: 1_a (up, in one transaction; recorded in statekeeper_changelog)\n"
        "CREATE TABLE a (x integer);\n\n"
        "-- statekeeper: 2_b (up, outside a transaction; recorded in statekeeper_changelog)\n"
        "-- statekeeper:no-transaction\nCREATE TABLE b (x integer);\n"
    )
    assert [s.state for s in mig.status()] == ["pending", "pending"]
    assert mig.validate() == [] and mig.tags() == [] and not mig.is_applied("1_a")
    assert catalog(target) == before  # reading never creates anything
    mig.up(target_id="1_a")
    before = catalog(target)
    assert mig.sql().startswith("-- statekeeper: 2_b (up")
    assert mig.sql(target_id="1_a") == ""
    assert catalog(target) == before


# -- no-transaction -------------------------------------------------------------------------
@pytest.mark.parametrize("backend", ["postgresql"])
def test_create_index_concurrently_runs_outside_a_transaction(
    mig: Migrator, mdir: Path, target: Target
) -> None:
    write(mdir, "1_t.sql", "CREATE TABLE t (x integer);\n"
                           "INSERT INTO t SELECT generate_series(1, 1000);\n")
    write(mdir, "2_idx.sql", "-- statekeeper:no-transaction\n"
                             "CREATE INDEX CONCURRENTLY t_x ON t (x);\n"
                             "-- statekeeper:down\nDROP INDEX CONCURRENTLY t_x;\n")
    write(mdir, "3_bad.sql", "CREATE INDEX CONCURRENTLY t_x2 ON t (x);\n")  # not flagged
    mig.up(target_id="2_idx")
    assert query(target, "SELECT indisvalid FROM pg_index WHERE indexrelid = 't_x'::regclass") \
        == [(True,)]
    assert mig.is_applied("2_idx")
    with pytest.raises(MigrationError) as e:
        mig.up()
    assert e.value.server_message == (
        "CREATE INDEX CONCURRENTLY cannot run inside a transaction block")
    mig.revert("2_idx")  # DROP INDEX CONCURRENTLY, outside a transaction too
    assert query(target, "SELECT to_regclass('t_x') IS NULL") == [(True,)]


# -- crashes and sessions ---------------------------------------------------------------------
def test_killed_in_the_middle_leaves_nothing(target: Target, mdir: Path) -> None:
    """os._exit between the SQL (plus changelog row) and the commit, as kill -9 would."""
    import subprocess
    import sys

    write(mdir, "1_a.sql", "CREATE TABLE a (x integer);\nINSERT INTO a VALUES (1);\n")
    code = (
        "import os, sys\n"
        "from pathlib import Path\n"
        "from statekeeper.migrations import Migrator\n"
        "from statekeeper.targets import Target\n"
        "m = Migrator(Target.from_url(sys.argv[1]), Path(sys.argv[2]))\n"
        "m.apply(m.migrations()[0], hook=lambda: os._exit(137))\n"
    )
    url = target.url.render_as_string(hide_password=False)
    p = subprocess.run([sys.executable, "-c", code, url, str(mdir)], capture_output=True,
                       text=True, timeout=60, cwd=Path(__file__).resolve().parent.parent)
    assert p.returncode == 137, p.stderr
    mig = Migrator(target, mdir)
    assert not mig.is_applied("1_a") and "a" not in tables(target)
    assert ids(mig.up()) == ["1_a"]  # the lock died with the process; the probe says redo
    assert query(target, "SELECT x FROM a") == [(1,)]


@pytest.mark.parametrize("backend", ["postgresql"])
def test_a_migration_changing_search_path_does_not_lose_the_changelog(
    mig: Migrator, mdir: Path, target: Target
) -> None:
    write(mdir, "1_app.sql", "CREATE SCHEMA app;\nSET search_path TO app;\n"
                             "CREATE TABLE t (x integer);\n")
    write(mdir, "2_more.sql", "CREATE TABLE app.u (x integer);\n")
    assert ids(mig.up()) == ["1_app", "2_more"]
    assert query(target, "SELECT schemaname FROM pg_tables WHERE tablename = "
                         f"'{CHANGELOG_TABLE}'") == [("public",)]
    assert ids(Migrator(target, mdir).applied()) == ["1_app", "2_more"]
