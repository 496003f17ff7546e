"""Helpers shared by the ledger tests (this module holds no tests).

:class:`RawDB` talks to the ledger's tables with the plain database driver (sqlite3, psycopg),
never through :mod:`ledger`: it is what an operator or an attacker with table rights has.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
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

    def disable_triggers(self) -> None:
        """What an attacker with table rights (and, on PostgreSQL, a superuser) does first."""
        if self.backend == "sqlite":
            names = self.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'")
            assert names, "the ledger has no triggers to drop"
            for (name,) in names:
                self.execute(f'DROP TRIGGER "{name}"')
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

    def insert_event(self, ev: StoredEvent) -> None:
        cols = ", ".join(EVENT_COLUMNS)
        marks = ", ".join("?" for _ in EVENT_COLUMNS)
        self.execute(
            f"INSERT INTO ledger_events ({cols}) VALUES ({marks})",
            [getattr(ev, c) for c in EVENT_COLUMNS],
        )

    def seal(self, seq: int) -> tuple[str, str] | None:
        rows = self.execute("SELECT key_id, signature FROM ledger_seals WHERE seq = ?", [seq])
        return (rows[0][0], rows[0][1]) if rows else None

    def renumber(self, table: str, from_seq: int, shift: int) -> None:
        """Move rows with seq >= from_seq by ``shift`` (two steps: the key is checked per row)."""
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
