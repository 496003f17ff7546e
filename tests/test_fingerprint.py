"""Fingerprints on real databases (SQLite and PostgreSQL): stable, and sensitive to one value,
one row, one column type; bookkeeping tables ignored. A changed, an added and a removed row,
and the errors without a database, are the dialect contract's (tests/test_dialect_contract.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from statekeeper.fingerprint import Fingerprint, diff, fingerprint
from statekeeper.targets import Target
from tests.test_backup_support import execute, seed


@pytest.fixture
def url(db_url: str) -> str:
    seed(db_url)
    return db_url


def test_stable_across_calls_and_serialization(url: str) -> None:
    t = Target.from_url(url)
    a, b = fingerprint(t), fingerprint(t)
    assert a == b and a.digest == b.digest and diff(a, b) == []
    assert a.tables["users"].rows == 3 and a.tables["positions"].rows == 120
    assert a.tables["events_log"].rows == 3
    again = Fingerprint.from_dict(json.loads(json.dumps(a.to_dict())))
    assert again == a and again.to_dict() == a.to_dict()
    assert len(a.digest) == 64 and len(a.schema) == 64


def test_null_and_empty_string_differ(url: str) -> None:
    t = Target.from_url(url)
    before = fingerprint(t)
    execute(url, "UPDATE users SET email = NULL WHERE id = 3")  # was ''
    assert diff(before, fingerprint(t)) == ["users: 3 rows, contents differ"]


def test_changed_column_type(url: str, backend: str) -> None:
    t = Target.from_url(url)
    before = fingerprint(t)
    if backend == "postgresql":
        execute(url, "DROP VIEW big_positions",
                "ALTER TABLE positions ALTER COLUMN qty TYPE numeric(14,4)",
                "CREATE VIEW big_positions AS SELECT id, symbol FROM positions WHERE qty > 100")
        assert diff(before, fingerprint(t)) == [
            "schema differs: column public.positions.qty: #4 numeric(12,4) not null -> "
            "#4 numeric(14,4) not null"
        ]
    else:  # SQLite has no ALTER COLUMN: rebuild the table the way migrations do
        execute(url, "PRAGMA foreign_keys = OFF",
                "CREATE TABLE settings_new (key TEXT PRIMARY KEY, value BLOB)",
                "INSERT INTO settings_new SELECT * FROM settings", "DROP TABLE settings",
                "ALTER TABLE settings_new RENAME TO settings")
        lines = diff(before, fingerprint(t))
        assert lines == ["schema differs: table settings: CREATE TABLE settings (key TEXT "
                         "PRIMARY KEY, value TEXT) -> CREATE TABLE \"settings\" (key TEXT "
                         "PRIMARY KEY, value BLOB)"]


def test_table_added_and_dropped(url: str) -> None:
    t = Target.from_url(url)
    before = fingerprint(t)
    execute(url, "CREATE TABLE audit_tmp (id INTEGER)", "DROP TABLE events_log")
    lines = diff(before, fingerprint(t))
    assert lines[:2] == ["table audit_tmp exists only after (0 rows)",
                         "table events_log exists only before (3 rows)"]
    assert all(ln.startswith("schema differs: ") for ln in lines[2:]) and len(lines) > 2


def test_bookkeeping_tables_are_ignored(url: str) -> None:
    t = Target.from_url(url)
    before = fingerprint(t)
    execute(url, "CREATE TABLE statekeeper_changelog (id TEXT PRIMARY KEY, checksum TEXT)",
            "CREATE INDEX statekeeper_changelog_cs ON statekeeper_changelog (checksum)",
            "INSERT INTO statekeeper_changelog VALUES ('0001', 'abc')")
    assert fingerprint(t) == before


def test_row_order_does_not_matter_without_primary_key(url: str) -> None:
    t = Target.from_url(url)
    before = fingerprint(t)
    # Rewrite the table in another physical order.
    execute(url, "CREATE TABLE ev_copy AS SELECT * FROM events_log",
            "DELETE FROM events_log",
            "INSERT INTO events_log SELECT * FROM ev_copy ORDER BY message DESC",
            "DROP TABLE ev_copy")
    assert fingerprint(t) == before


def test_digest_is_checked_on_load(url: str) -> None:
    d = fingerprint(Target.from_url(url)).to_dict()
    d["tables"]["users"]["rows"] = 4
    with pytest.raises(ValueError, match="digest does not match"):
        Fingerprint.from_dict(d)
    with pytest.raises(ValueError, match="not a fingerprint"):
        Fingerprint.from_dict({"tables": []})


@pytest.mark.postgresql
def test_pg_independent_of_session_settings_and_dropped_columns(pg_url: str) -> None:
    seed(pg_url)
    before = fingerprint(Target.from_url(pg_url))
    tokyo = pg_url + "?options=-c%20TimeZone%3DAsia/Tokyo%20-c%20DateStyle%3DSQL,DMY" \
        "%20-c%20extra_float_digits%3D-3"
    assert fingerprint(Target.from_url(tokyo)) == before
    # A column added and dropped again leaves an attnum gap: a dump/restore closes it, so the
    # fingerprint must not see it. A sequence moving on is not content either.
    execute(pg_url, "ALTER TABLE users ADD COLUMN tmp int", "ALTER TABLE users DROP COLUMN tmp",
            "SELECT nextval(pg_get_serial_sequence('trading.orders', 'id'))")
    assert fingerprint(Target.from_url(pg_url)) == before


@pytest.mark.postgresql
def test_pg_sees_schema_objects(pg_url: str) -> None:
    seed(pg_url)
    t = Target.from_url(pg_url)
    fp = fingerprint(t)
    objs = fp.schema_objects
    assert objs["type trading.side"] == "enum ('buy', 'sell')"
    assert objs["column trading.orders.id"] == "#1 bigint not null generated always as identity"
    assert "trigger trading.orders.orders_touch" in objs
    assert objs["index public.positions_symbol"] == (
        "CREATE INDEX positions_symbol ON public.positions USING btree (symbol)")
    assert fp.tables["trading.orders"].rows == 2
    assert fp.tables["(large objects)"].rows == 1
    execute(pg_url, "CREATE OR REPLACE FUNCTION trading.touch() RETURNS trigger LANGUAGE "
                    "plpgsql AS $$ BEGIN RETURN NEW; END $$",
            "ALTER TABLE settings ADD CONSTRAINT key_len CHECK (length(key) < 50)")
    assert diff(fp, fingerprint(t)) == [
        "schema differs: constraint public.settings.key_len exists only after",
        "schema differs: function trading.touch(): CREATE OR REPLACE FUNCTION trading.touch() "
        "RETURNS trigger LANGUAGE plpgsql AS $function$ BEGIN NEW.placed_at := now(); RETURN "
        "NEW; END $function$ -> CREATE OR REPLACE FUNCTION trading.touch() RETURNS trigger "
        "LANGUAGE plpgsql AS $function$ BEGIN RETURN NEW; END $function$",
    ]


def test_sqlite_rows_hash_as_their_canonical_json(tmp_path: Path) -> None:
    """The SQLite reader writes each row's text itself (for speed); the bytes hashed must stay
    the canonical JSON of its typed values, or every existing manifest would stop matching."""
    import hashlib
    import sqlite3

    from statekeeper.fingerprint import canonical

    db = tmp_path / "odd.db"
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, s TEXT, r REAL, b BLOB, n NUMERIC)")
    values = [
        (1, 'quote " back \\ slash / tab \t nl \n cr \r', 1e308, b"", 1.25),
        (2, "\x00\x01\x1f \u2028 \u00e9 \U0001f600", -0.0, b"\x00\xff", None),
        (3, None, float("inf"), None, 9223372036854775807),
        (4, "", 5e-324, b"x" * 40, -9223372036854775808),
    ]
    with conn:
        conn.executemany("INSERT INTO t VALUES (?, ?, ?, ?, ?)", values)
    rows = conn.execute("SELECT * FROM t ORDER BY id").fetchall()
    conn.close()

    def typed(v: object) -> object:
        if isinstance(v, float):
            return {"f": v.hex()}
        if isinstance(v, bytes):
            return {"b": v.hex()}
        return v

    h = hashlib.sha256()
    for row in rows:
        h.update(canonical([typed(v) for v in row]).encode("utf-8") + b"\n")
    got = fingerprint(Target.from_url(f"sqlite:///{db}")).tables["t"]
    assert (got.rows, got.checksum) == (4, h.hexdigest())
