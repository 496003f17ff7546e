"""The target dialect's contract, written once and run on each backend (SQLite and PostgreSQL),
the way eventsourcing's ``AggregateRecorderTestCase`` runs on each recorder: connect, a
migration's text in a transaction (rolled back on error), the changelog tables, the target
lock, the fingerprint reader, a health check's query.

One database per backend serves the whole module (each test leaves it as it found it), so the
suite costs one ``CREATE DATABASE``, not one per test. A new dialect passes this file first.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from statekeeper.clock import stamp
from statekeeper.dialects import dialect_for, dialect_for_url
from statekeeper.errors import (
    ConfigError,
    LockHeld,
    MigrationError,
    TargetError,
    TargetUnreachable,
)
from statekeeper.fingerprint import diff, fingerprint
from statekeeper.migrations import (
    CHANGELOG_TABLE,
    TAGS_TABLE,
    AppliedMigration,
    Migration,
    Migrator,
    Tag,
    checksum_of,
)
from statekeeper.migrations.changelog import Changelog
from statekeeper.targets import Target
from tests.test_backup_support import execute, seed
from tests.test_migrations import tables, write

SINCE = "2026-01-02T03:04:05.678901Z"


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def db(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
       ) -> Iterator[Target]:
    if request.param == "sqlite":
        path = tmp_path_factory.mktemp("contract") / "app.db"
        sqlite3.connect(path).close()
        yield Target.from_url(f"sqlite:///{path}")
        return
    cluster = request.getfixturevalue("pg_cluster")
    yield Target.from_url(cluster.url(cluster.createdb("contract")))


@pytest.fixture
def target(db: Target) -> Iterator[Target]:
    """The module's database, for a test that migrates it: what it created is dropped after."""
    yield db
    execute(url_of(db), *(f"DROP TABLE IF EXISTS {t}" for t in ("a", "t", CHANGELOG_TABLE,
                                                                 TAGS_TABLE)))


@pytest.fixture
def mdir(tmp_path: Path) -> Path:
    d = tmp_path / "migrations"
    d.mkdir()
    return d


@pytest.fixture
def mig(target: Target, mdir: Path) -> Migrator:
    return Migrator(target, mdir)


def url_of(t: Target) -> str:
    return t.url.render_as_string(hide_password=False)


def exists(t: Target, table: str) -> bool:
    """Is ``table`` there? (Asked by selecting from it: the same SQL on both backends.)"""
    conn = t.connect(autocommit=True)
    try:
        with t.dialect.errors("probe"):
            conn.execute(f"SELECT count(*) FROM {table}").fetchone()
        return True
    except TargetError:
        return False
    finally:
        conn.close()


# -- connect ----------------------------------------------------------------------------------
def test_connect_by_the_dialect_the_url_names(db: Target) -> None:
    assert db.dialect is dialect_for(db.backend) is dialect_for_url(url_of(db))
    conn = db.connect(autocommit=True)
    try:
        assert conn.execute("SELECT 1").fetchone()[0] == 1
    finally:
        conn.close()


def test_missing_sqlite_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        fingerprint(Target.from_url(f"sqlite:///{tmp_path / 'nope.db'}"))


@pytest.mark.postgresql
def test_unreachable_server_is_a_target_error(pg_cluster) -> None:  # type: ignore[no-untyped-def]
    from tests.pgcluster import free_port

    with pytest.raises(TargetError):
        fingerprint(Target.from_url(f"postgresql://postgres@127.0.0.1:{free_port()}/x"))


# -- a migration's text -----------------------------------------------------------------------
FAILS = "CREATE TABLE contract_t (x integer);\nINSERT INTO contract_t VALUES (1);\n" \
        "SELECT no_such_column FROM contract_t;\n"
#: where each backend places the error: PostgreSQL at the token, SQLite at the statement
FAILS_AT = {"postgresql": ("no_such_column", 'column "no_such_column" does not exist'),
            "sqlite": ("SELECT", "no such column: no_such_column")}


def test_a_migration_text_runs_in_a_transaction_rolled_back_on_error(db: Target) -> None:
    d = db.dialect
    conn = db.connect(autocommit=d.migration_autocommit(True))
    try:
        d.begin(conn)
        with pytest.raises(MigrationError) as e:
            d.execute(conn, "1_t", FAILS, 100, True)
        d.rollback(conn)
        token, message = FAILS_AT[db.backend]
        assert e.value.migration_id == "1_t" and e.value.server_message == message
        assert e.value.position == 100 + FAILS.index(token) + 1  # offset: where the text starts
        assert not exists(db, "contract_t")  # nothing half-done

        d.begin(conn)
        d.execute(conn, "1_t", FAILS[: FAILS.index("SELECT")], 0, True)
        d.commit(conn, "1_t", "up part")
        assert exists(db, "contract_t")
    finally:
        d.rollback(conn)
        conn.close()
        execute(url_of(db), "DROP TABLE IF EXISTS contract_t")


def test_a_text_that_ends_its_own_transaction_is_refused(db: Target) -> None:
    d = db.dialect
    conn = db.connect(autocommit=d.migration_autocommit(True))
    try:
        d.begin(conn)
        with pytest.raises(MigrationError, match="the migration ended its transaction itself"):
            d.execute(conn, "1_c", "CREATE TABLE contract_c (x integer);\nCOMMIT;\n", 0, True)
    finally:
        d.rollback(conn)
        conn.close()
        execute(url_of(db), "DROP TABLE IF EXISTS contract_c")


def test_a_no_transaction_text_takes_effect_as_it_runs(db: Target) -> None:
    d = db.dialect
    conn = db.connect(autocommit=d.migration_autocommit(False))
    try:
        d.execute(conn, "1_n", "CREATE TABLE contract_n (x integer);\n", 0, False)
        assert exists(db, "contract_n")  # seen by another connection: nothing to commit
    finally:
        conn.close()
        execute(url_of(db), "DROP TABLE IF EXISTS contract_n")


def test_driver_errors_are_translated_once_and_chained(db: Target) -> None:
    conn = db.connect(autocommit=True)
    try:
        with pytest.raises(TargetError) as e, db.dialect.errors(f"target {db.display}"):
            conn.execute("SELECT * FROM no_such_table")
        assert str(e.value).startswith(f"target {db.display}: ")
        assert "no_such_table" in str(e.value) and "\n" not in str(e.value)
        assert isinstance(e.value.__cause__, db.dialect.driver_error())
    finally:
        conn.close()


def test_error_position_points_at_the_token_when_the_server_gives_one(
    mig: Migrator, mdir: Path, target: Target
) -> None:
    text = "CREATE TABLE t (x integer);\nSELECT no_such_column FROM t;\n"
    write(mdir, "1_t.sql", text)
    with pytest.raises(MigrationError) as e:
        mig.up()
    if target.backend == "postgresql":
        assert e.value.server_message == 'column "no_such_column" does not exist'
        assert e.value.position == text.index("no_such_column") + 1
    else:
        assert e.value.server_message == "no such column: no_such_column"
        assert e.value.position == text.index("SELECT") + 1
    assert "t" not in tables(target)


# -- the changelog ----------------------------------------------------------------------------
def test_the_changelog_tables_are_created_once_and_read_back_what_was_written(
    db: Target
) -> None:
    d = db.dialect
    m = Migration("1_a", Path("1_a.sql"), "CREATE TABLE a (x integer);\n", None,
                  checksum_of("CREATE TABLE a (x integer);\n"))
    conn = db.connect(autocommit=d.migration_autocommit(True))
    try:
        cl = Changelog(db)
        d.begin(conn)
        assert not cl.exists(conn) and cl.read(conn) == ([], [])
        cl.create(conn)
        cl.create(conn)  # already there: nothing to do
        cl.record(conn, m, SINCE, 7, "run-1")
        cl.add_tag(conn, Tag("v1", "1_a", SINCE, "run-1"))
        d.end(conn)
        again = Changelog(db)  # a second reader finds the same tables
        assert again.exists(conn)
        assert again.read(conn) == (
            [AppliedMigration("1_a", m.checksum, SINCE, 7, "run-1", "v1")],
            [Tag("v1", "1_a", SINCE, "run-1")],
        )
        d.begin(conn)
        assert cl.remove_tag(conn, "v1", "run-1") and not cl.remove_tag(conn, "v1", "run-1")
        cl.remove(conn, "1_a")
        d.end(conn)
        assert cl.read(conn) == ([], [])
    finally:
        d.rollback(conn)
        conn.close()
        execute(url_of(db), "DROP TABLE IF EXISTS statekeeper_changelog",
                "DROP TABLE IF EXISTS statekeeper_tags")


# -- the target lock --------------------------------------------------------------------------
def test_the_lock_excludes_a_second_holder_and_names_it(db: Target) -> None:
    d = db.dialect
    held = d.lock(db, "statekeeper contract holder", SINCE)
    try:
        assert held.alive()
        with pytest.raises(LockHeld) as e:
            d.lock(db, "a second holder", SINCE)
        assert str(e.value).startswith(
            f"migrations on {db.shown} are locked by another process: "
            f"statekeeper contract holder")
    finally:
        held.release()
    d.lock(db, "a second holder", SINCE).release()  # released: the next holder takes it


def test_lock_excludes_a_second_migrator_and_names_the_holder(
    target: Target, mdir: Path
) -> None:
    import os
    import socket

    write(mdir, "1_a.sql", "CREATE TABLE a (x integer);\n")
    first = Migrator(target, mdir)
    second = Migrator(target, mdir)
    with first.lock(run_id="run-1"):
        with first.lock():  # reentrant within one Migrator
            pass
        with pytest.raises(LockHeld) as e:
            second.up()
        msg = str(e.value)
        assert msg.startswith(
            f"migrations on {target.shown} are locked by another process: "
            f"statekeeper pid={os.getpid()} host={socket.gethostname()} run=run-1")
        first.up()  # the holder itself proceeds
    assert second.up() == [] and second.is_applied("1_a")  # released


def test_a_lock_lost_with_its_session_is_taken_again_before_the_target_is_touched(
    target: Target, mdir: Path
) -> None:
    """A server restart (a pgBackRest restore) ends the session of a PostgreSQL lock:
    ensure_lock finds that and takes the lock again, so that another migrator is refused."""
    from statekeeper.migrations.lock import process_label

    write(mdir, "1_a.sql", "CREATE TABLE a (x integer);\n")
    holder, other = Migrator(target, mdir), Migrator(target, mdir)
    with holder.lock(run_id="run-restart"):
        if target.backend == "postgresql":
            execute(url_of(target), "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    f"WHERE application_name = '{process_label('run-restart')}'")
            free = target.dialect.lock(target, "a prober", SINCE)  # the session is gone
            free.release()
        holder.ensure_lock()
        with pytest.raises(LockHeld, match="run=run-restart"):
            other.up()
        assert [a.id for a in holder.up()] == ["1_a"]
    assert other.status()[0].applied


def test_a_server_that_is_down_defers_the_lock_only_when_asked(mdir: Path) -> None:
    from tests.pgcluster import free_port

    down = Target.from_url(f"postgresql://postgres@127.0.0.1:{free_port()}/app")
    m = Migrator(down, mdir)
    with pytest.raises(TargetUnreachable, match="Connection refused"), m.lock():
        pass
    with m.lock(run_id="run-down", defer_unreachable=True):
        assert m.lock_deferred
        with pytest.raises(TargetUnreachable, match="Connection refused"):
            m.ensure_lock()
        assert m.lock_deferred


# -- the fingerprint reader -------------------------------------------------------------------
def test_the_fingerprint_reader_sees_a_changed_an_added_and_a_removed_row(db: Target) -> None:
    url = url_of(db)
    seed(url)
    try:
        t = Target.from_url(url)
        before = fingerprint(t)
        execute(url, "UPDATE positions SET price = price + 0.000001 WHERE id = 17")
        after = fingerprint(t)
        assert after != before
        assert diff(before, after) == ["positions: 120 rows, contents differ"]
        before = after
        execute(url, "INSERT INTO settings VALUES ('extra', 'x')")
        assert diff(before, fingerprint(t)) == ["settings: 2 rows -> 3 rows"]
        execute(url, "DELETE FROM settings WHERE key = 'extra'")
        assert fingerprint(t) == before
    finally:
        drop = ["DROP VIEW big_positions", "DROP TABLE positions", "DROP TABLE users",
                "DROP TABLE settings", "DROP TABLE events_log"]
        if db.backend == "postgresql":
            drop += ["DROP SCHEMA trading CASCADE",
                     "SELECT lo_unlink(oid) FROM pg_largeobject_metadata"]
        execute(url, *drop)
    assert fingerprint(db).tables == {}


# -- a health check ---------------------------------------------------------------------------
SLOW = {
    "sqlite": "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c"
              " WHERE x < 1000000000) SELECT count(*) FROM c",
    "postgresql": "SELECT pg_sleep(5)",
}


def test_a_health_query_returns_its_first_row_or_times_out(db: Target) -> None:
    d = db.dialect
    assert tuple(d.health_query(db, "SELECT 1 WHERE 1 = 1", 1000)) == (1,)
    assert d.health_query(db, "SELECT 1 WHERE 1 = 0", 1000) is None
    with pytest.raises(d.driver_error()):
        d.health_query(db, "SELECT * FROM no_such_table", 1000)
    with pytest.raises(TimeoutError):
        d.health_query(db, SLOW[db.backend], 200)


def test_timestamps_are_stored_in_one_format() -> None:
    from datetime import UTC, datetime

    assert stamp(datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)) == SINCE
    assert stamp(datetime(2026, 1, 2, 3, 4, 5, 678901)) == SINCE  # naive: UTC
