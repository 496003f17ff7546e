"""Helpers shared by the ledger tests (this module holds no tests).

:class:`RawDB` talks to the ledger's tables with the plain database driver (sqlite3, psycopg),
never through :mod:`ledger`: it is what an operator or an attacker with table rights has.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psycopg
import pytest

import ledger
from ledger.chain import StoredEvent, event_hash

TABLES = ("ledger_events", "ledger_seals", "ledger_keys")
EVENT_COLUMNS = (
    "seq", "stream", "stream_seq", "type", "recorded_at", "actor", "payload", "closes",
    "prev_hash", "stream_prev_hash", "hash",
)

# The tables of a SQLite ledger as statekeeper made them before issue 15 (storage layout 1:
# a seal table, an index on recorded_at), as SQLAlchemy created them; the recorder opens,
# verifies and appends to such a file as it is.
SQLITE_LAYOUT_1 = (
    "CREATE TABLE ledger_events (seq INTEGER NOT NULL, stream VARCHAR(200) NOT NULL, "
    "stream_seq BIGINT NOT NULL, type VARCHAR(200) NOT NULL, recorded_at VARCHAR(27) NOT NULL, "
    "actor TEXT NOT NULL, payload TEXT NOT NULL, closes BOOLEAN NOT NULL, "
    "prev_hash VARCHAR(64) NOT NULL, stream_prev_hash VARCHAR(64) NOT NULL, "
    "hash VARCHAR(64) NOT NULL, PRIMARY KEY (seq), "
    "CONSTRAINT ledger_events_stream_pos UNIQUE (stream, stream_seq))",
    "CREATE INDEX ledger_events_recorded_at ON ledger_events (recorded_at)",
    "CREATE TABLE ledger_seals (seq INTEGER NOT NULL, first_seq BIGINT NOT NULL, "
    "key_id VARCHAR(64) NOT NULL, signature VARCHAR(100) NOT NULL, PRIMARY KEY (seq))",
    "CREATE TABLE ledger_keys (key_id VARCHAR(64) NOT NULL, public_key VARCHAR(64) NOT NULL, "
    "added_seq BIGINT NOT NULL, PRIMARY KEY (key_id))",
)


def make_sqlite_layout_1(path: Path, *, seals_without_extents: bool = False) -> None:
    """An empty SQLite ledger of layout 1 at ``path`` (format 1 with seals_without_extents)."""
    with sqlite3.connect(path) as conn:
        for sql in SQLITE_LAYOUT_1:
            if seals_without_extents:
                sql = sql.replace("first_seq BIGINT NOT NULL, ", "")
            conn.execute(sql)
    conn.close()


class RawDB:
    """One autocommit connection with the driver; SQL uses ``?`` placeholders on both."""

    def __init__(self, url: str) -> None:
        u = ledger.normalize_url(url)
        self.backend = u.get_backend_name()
        self.conn: Any
        if self.backend == "sqlite":
            self.conn = sqlite3.connect(str(u.database), isolation_level=None, timeout=30)
        else:
            # The test cluster's URL is libpq style; psycopg takes it as it is.
            self.conn = psycopg.connect(url, autocommit=True)

    def __enter__(self) -> RawDB:
        return self

    def __exit__(self, *exc: object) -> None:
        self.conn.close()

    def execute(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        if self.backend == "postgresql":
            sql = sql.replace("?", "%s")
        cur = self.conn.execute(sql, tuple(params))
        try:
            return [tuple(r) for r in cur.fetchall()] if cur.description else []
        finally:
            cur.close()

    def scalar(self, sql: str, params: Sequence[Any] = ()) -> Any:
        rows = self.execute(sql, params)
        return rows[0][0] if rows else None

    @property
    def seals_in_rows(self) -> bool:
        """SQLite storage layout 2: each seal is in its event's row, ledger_seals a view."""
        return self.backend == "sqlite" and self.scalar(
            "SELECT type FROM sqlite_master WHERE name = 'ledger_seals'") == "view"

    def disable_triggers(self) -> None:
        """What an attacker with table rights (and, on PostgreSQL, a superuser) does first."""
        if self.backend == "sqlite":
            names = self.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'")
            assert names, "the ledger has no triggers to drop"
            for (name,) in names:
                self.execute(f'DROP TRIGGER "{name}"')
            if self.seals_in_rows:
                # The tests' edits of ledger_seals become what the same attacker does to the
                # seal columns of the event rows (layout 2 has no seal table to edit).
                clear = ("UPDATE ledger_events SET seal_first = NULL, seal_key_id = NULL, "
                         "seal_signature = NULL WHERE seq = OLD.seq")
                put = ("UPDATE ledger_events SET seal_first = NEW.first_seq, "
                       "seal_key_id = NEW.key_id, seal_signature = NEW.signature "
                       "WHERE seq = NEW.seq")
                for op, body in (("DELETE", clear), ("INSERT", put),
                                 ("UPDATE", f"{clear}; {put}")):
                    self.execute(f"CREATE TRIGGER tamper_seals_{op.lower()} INSTEAD OF {op} "
                                 f"ON ledger_seals BEGIN {body}; END")
        else:
            for t in TABLES:
                self.execute(f"ALTER TABLE {t} DISABLE TRIGGER ALL")

    # -- rows ------------------------------------------------------------------------------
    def event(self, seq: int) -> StoredEvent:
        row = self.execute(
            f"SELECT {', '.join(EVENT_COLUMNS)} FROM ledger_events WHERE seq = ?", [seq]
        )
        assert row, f"no event at seq {seq}"
        r = row[0]
        return StoredEvent(r[0], r[1], r[2], r[3], r[4], r[5], r[6], bool(r[7]), r[8], r[9], r[10])

    def insert_event(self, ev: StoredEvent, seal: tuple[int, str, str] | None = None) -> None:
        """INSERT ``ev`` and, if given, its seal (first seq, key id, signature base64): in the
        same row (SQLite layout 2) or the seal table."""
        cols, values = list(EVENT_COLUMNS), [getattr(ev, c) for c in EVENT_COLUMNS]
        if seal is not None and self.seals_in_rows:
            cols += ["seal_first", "seal_key_id", "seal_signature"]
            values += list(seal)
        marks = ", ".join("?" for _ in cols)
        self.execute(f"INSERT INTO ledger_events ({', '.join(cols)}) VALUES ({marks})", values)
        if seal is not None and not self.seals_in_rows:
            self.execute("INSERT INTO ledger_seals (seq, first_seq, key_id, signature) "
                         "VALUES (?, ?, ?, ?)", [ev.seq, *seal])

    def replace_event(self, ev: StoredEvent) -> None:
        """Put ``ev`` in place of the event at its seq (triggers disabled), keeping its seal."""
        if self.seals_in_rows:  # the seal is in the row: an UPDATE keeps it
            sets = ", ".join(f"{c} = ?" for c in EVENT_COLUMNS)
            self.execute(f"UPDATE ledger_events SET {sets} WHERE seq = ?",
                         [*(getattr(ev, c) for c in EVENT_COLUMNS), ev.seq])
        else:
            self.execute("DELETE FROM ledger_events WHERE seq = ?", [ev.seq])
            self.insert_event(ev)

    def seal(self, seq: int) -> tuple[str, str] | None:
        rows = self.execute("SELECT key_id, signature FROM ledger_seals WHERE seq = ?", [seq])
        return (rows[0][0], rows[0][1]) if rows else None

    def renumber(self, table: str, from_seq: int, shift: int) -> None:
        """Move rows with seq >= from_seq by ``shift`` (two steps: the key is checked per row)."""
        if table == "ledger_seals" and self.seals_in_rows:
            return  # the seals moved with their event rows
        self.execute(f"UPDATE {table} SET seq = -(seq + ?) WHERE seq >= ?", [shift, from_seq])
        self.execute(f"UPDATE {table} SET seq = -seq WHERE seq < 0")


# -- append-only: the database refuses changes -------------------------------------------
def refused(db: RawDB, sql: str) -> str:
    """Run ``sql`` and expect the database's append-only triggers to refuse it."""
    with pytest.raises((sqlite3.IntegrityError, psycopg.Error)) as ei:
        db.execute(sql)
    assert "append-only" in str(ei.value), str(ei.value)
    return str(ei.value)


MUTATIONS = {
    "ledger_events": ["UPDATE ledger_events SET payload = '{}' WHERE seq = 2",
                      "DELETE FROM ledger_events WHERE seq = 3"],
    "ledger_seals": ["UPDATE ledger_seals SET key_id = 'x' WHERE seq = 2",
                     "DELETE FROM ledger_seals WHERE seq = 3"],
    "ledger_keys": ["UPDATE ledger_keys SET public_key = 'x'", "DELETE FROM ledger_keys"],
}


def snapshot(db: RawDB) -> list[list[tuple[object, ...]]]:
    return [db.execute(f"SELECT * FROM {t} ORDER BY 1") for t in TABLES]


def forge(
    seq: int,
    stream: str,
    stream_seq: int,
    prev_hash: str,
    stream_prev_hash: str,
    *,
    closes: bool,
    type_: str = "forged",
    payload: str = '{"forged":true}',
    recorded_at: str = "2030-01-01T00:00:00.000000Z",
    actor: str = '{"user":"mallory"}',
) -> StoredEvent:
    """An event hashed exactly as the ledger would (the algorithm is public); unsigned."""
    h = event_hash(seq, stream, stream_seq, type_, recorded_at, actor, payload, closes,
                   prev_hash, stream_prev_hash)
    return StoredEvent(seq, stream, stream_seq, type_, recorded_at, actor, payload, closes,
                       prev_hash, stream_prev_hash, h)
