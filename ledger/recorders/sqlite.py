"""The SQLite recorder (the embedded default) and every SQLite quirk the ledger knows.

It runs on the standard library's sqlite3 module alone: a SQLite ledger is opened, appended
to and verified without importing SQLAlchemy (its import alone cost ~150 ms a command). The
statements are the ones every backend shares (ledger/recorders/base.py); the DDL is spelled
here, as SQLAlchemy spelled it for the ledgers made before (layout 1, below)."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

from ..chain import Seal, StoredEvent
from ..errors import LedgerError, LedgerUnreachable
from ..url import DatabaseURL, as_database_url
from .base import (
    _EVENT_FIELDS,
    _HEAD_SEAL_IN_ROW,
    _HEAD_SEAL_TABLE,
    _SQL_HEAD,
    _SQL_INSERT_EVENTS,
    _SQL_INSERT_KEYS,
    _SQL_INSERT_SEALS,
    _SQL_STREAM_STARTS_INDEX,
    TABLES,
    Appending,
    Builder,
    Recorder,
    _event_values,
    _values,
    driver_reason,
    format_1_refused,
)
from .urls import sqlite_file, sqlite_url

# Storage layout 2 (ledgers created since issue 15; PRAGMA user_version = 2): an append's
# seal is stored in its closing event's row, and ``ledger_seals`` is a view of those columns,
# so every reader (and the verifier) sees the same seal rows as in layout 1, where it is a
# table of its own. A commit of one event writes two B-tree pages (the table and the
# (stream, stream_seq) index) instead of four (layout 1 also writes the seal table and an
# index on recorded_at). Layout 1 ledgers are read and appended to as they are.
LAYOUT = 2
_SEAL_COLS = ("seal_first", "seal_key_id", "seal_signature")
_EVENTS_COLUMNS = (
    "seq INTEGER NOT NULL, stream VARCHAR(200) NOT NULL, stream_seq BIGINT NOT NULL, "
    "type VARCHAR(200) NOT NULL, recorded_at VARCHAR(27) NOT NULL, actor TEXT NOT NULL, "
    "payload TEXT NOT NULL, closes BOOLEAN NOT NULL, prev_hash VARCHAR(64) NOT NULL, "
    "stream_prev_hash VARCHAR(64) NOT NULL, hash VARCHAR(64) NOT NULL, "
)
_EVENTS_KEYS = "PRIMARY KEY (seq), CONSTRAINT ledger_events_stream_pos UNIQUE (stream, stream_seq)"
_KEYS_TABLE = (
    "CREATE TABLE IF NOT EXISTS ledger_keys (key_id VARCHAR(64) NOT NULL, "
    "public_key VARCHAR(64) NOT NULL, added_seq BIGINT NOT NULL, PRIMARY KEY (key_id))"
)
_LAYOUT_2 = (
    f"CREATE TABLE ledger_events ({_EVENTS_COLUMNS}"
    # The seal of the append this event closes (NULL on the others): first seq of the
    # extent, key id, signature base64, as ledger_seals has them in layout 1.
    f"seal_first BIGINT, seal_key_id VARCHAR(64), seal_signature VARCHAR(100), {_EVENTS_KEYS})",
    "CREATE VIEW ledger_seals (seq, first_seq, key_id, signature) AS "
    "SELECT seq, seal_first, seal_key_id, seal_signature FROM ledger_events "
    "WHERE seal_key_id IS NOT NULL",
    _KEYS_TABLE,
    f"PRAGMA user_version = {LAYOUT}",
)
#: Layout 1, the tables as SQLAlchemy created them before issue 15 (``seq INTEGER``: the
#: rowid); what is missing of them in such a file is created as it was.
LAYOUT_1 = (
    f"CREATE TABLE IF NOT EXISTS ledger_events ({_EVENTS_COLUMNS}{_EVENTS_KEYS})",
    "CREATE INDEX IF NOT EXISTS ledger_events_recorded_at ON ledger_events (recorded_at)",
    "CREATE TABLE IF NOT EXISTS ledger_seals (seq INTEGER NOT NULL, first_seq BIGINT NOT NULL, "
    "key_id VARCHAR(64) NOT NULL, signature VARCHAR(100) NOT NULL, PRIMARY KEY (seq))",
    _KEYS_TABLE,
)
_POOL_SIZE = 5  # idle read connections kept per recorder


class SQLiteRecorder(Recorder):
    """Embedded default. WAL + synchronous=FULL; writers serialise on ``BEGIN IMMEDIATE``."""

    dialect_name = "sqlite"
    schemes = frozenset({"sqlite", "sqlite+pysqlite"})
    binary_ranges = True
    placeholder = "?"
    _seal_in_row: bool | None = None  # the layout, once known (see LAYOUT)

    @classmethod
    def normalize_url(
        cls, u: DatabaseURL, base_dir: Path | None, what: str, shown: str
    ) -> DatabaseURL:
        return sqlite_url(u, base_dir, what, shown)

    @classmethod
    def database_file(cls, u: Any) -> Path | None:
        return sqlite_file(as_database_url(u))

    @contextlib.contextmanager
    def translate(
        self, job: Appending | None = None, *, connecting: bool = False
    ) -> Iterator[None]:
        try:
            yield
        except sqlite3.Error as e:
            if connecting:  # a file that cannot be opened, or not as a WAL database
                raise LedgerUnreachable(self.display_url, driver_reason(e, self.url)) from e
            if job is not None and isinstance(e, sqlite3.IntegrityError):
                # sqlite3 does not say which table refused: the append says what it inserted.
                refused = job.refused(job.table)
                if refused is not None:
                    raise refused from e
            raise self._operational(e) from e

    # -- connections -------------------------------------------------------------------------
    def _open(self) -> None:
        path = self.database_file(self.url)
        assert path is not None
        if not path.parent.is_dir():
            raise LedgerUnreachable(self.display_url, f"directory {path.parent} does not exist")
        self._path = path
        self._pool_lock = threading.Lock()
        self._idle: list[sqlite3.Connection] = []
        self._pool_pid = os.getpid()

    def _driver_errors(self) -> tuple[type[Exception], type[Exception]]:
        return sqlite3.Error, sqlite3.IntegrityError

    def _connect(self) -> sqlite3.Connection:
        # SQLite would create a missing ledger file 0644 (less the umask). Created 0600 first,
        # it keeps that mode, and SQLite gives its -wal and -shm files the mode of the
        # database file. (Only where SQLite would create it: Ledger(create=False) refuses a
        # missing file before it gets here.)
        path = self._path
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except FileExistsError:
            pass
        except OSError as e:
            raise LedgerUnreachable(self.display_url, f"cannot create {path}: {e.strerror}") from e
        else:
            try:
                os.fchmod(fd, 0o600)
            finally:
                os.close(fd)
        with self.translate(connecting=True):  # a file that cannot be opened, or not as WAL
            # isolation_level=None: the sqlite3 module opens no transaction of its own, so
            # BEGIN IMMEDIATE is ours. A connection is used by one thread at a time (the
            # writer lock, the pool), not always the one that opened it.
            conn = sqlite3.connect(path, timeout=60, isolation_level=None,
                                   check_same_thread=False)
            try:
                conn.execute("PRAGMA journal_mode=WAL")
            except BaseException:
                conn.close()
                raise
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA busy_timeout=60000")
        return conn

    def _own_pool(self) -> list[sqlite3.Connection]:
        """The idle connections, of this process: a forked child never uses (nor closes) its
        parent's, which would share one SQLite handle between two processes."""
        if self._pool_pid != os.getpid():
            self._inherited.extend(self._idle)
            self._idle, self._pool_pid = [], os.getpid()
        return self._idle

    @contextlib.contextmanager
    def _driver(self) -> Iterator[Any]:
        with self._pool_lock:
            idle = self._own_pool()
            conn = idle.pop() if idle else None
        if conn is None:
            conn = self._connect()
        try:
            yield conn
        finally:
            self._checkin(conn)

    def _checkin(self, conn: sqlite3.Connection) -> None:
        """Back to the pool, rolled back (a read abandoned half-way holds nothing)."""
        try:
            if conn.in_transaction:
                conn.rollback()
        except sqlite3.Error:
            conn.close()
            return
        with self._pool_lock:
            idle = self._own_pool()
            if len(idle) < _POOL_SIZE:
                idle.append(conn)
                return
        conn.close()

    def _writer_checkout(self) -> Any:
        return self._connect()

    def _writer_broken(self, handle: Any, e: Exception) -> bool:
        return False  # a SQLite connection does not drop

    def _writer_release(self, handle: Any) -> None:
        handle.close()

    def _close(self) -> None:
        with self._pool_lock:
            idle, self._idle = self._own_pool(), []
        for conn in idle:
            conn.close()

    _side_exists_sql = "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = {p}"

    def _side_begin(self, cur: Any, exclusive: str | None) -> None:
        # The sqlite3 module begins nothing itself (isolation_level=None). IMMEDIATE takes the
        # database's write lock now, so what this transaction reads no writer changes first.
        cur.execute("BEGIN IMMEDIATE" if exclusive else "BEGIN")

    # -- schema ------------------------------------------------------------------------------
    def ensure_schema(self) -> None:
        with self.translate(), self._driver() as conn:
            conn.execute("BEGIN IMMEDIATE")  # the chain-head lock: one creator at a time
            new = conn.execute(
                "SELECT 1 FROM sqlite_master WHERE name = 'ledger_events'"
            ).fetchone() is None
            for sql in _LAYOUT_2 if new else LAYOUT_1:
                conn.execute(sql)
            self._check_format(conn)
            self._seal_in_row = self._layout_of(conn)
            self._iter_sql.clear()
            self._install_triggers(conn)
            conn.execute(_SQL_STREAM_STARTS_INDEX)
            conn.execute("COMMIT")

    def exists(self) -> bool:
        with self.translate(), self._driver() as conn:
            found = conn.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'ledger_events'"
            ).fetchone() is not None
            if found:
                self._check_format(conn)
            return found

    def _check_format(self, conn: Any) -> None:
        names = {r[1] for r in conn.execute("PRAGMA table_info(ledger_seals)")}
        if "first_seq" not in names:
            raise format_1_refused(self.display_url)

    @staticmethod
    def _layout_of(conn: Any) -> bool:
        """Whether the ledger behind the sqlite3 connection keeps seals in the event rows."""
        row = conn.execute("SELECT type FROM sqlite_master WHERE name = 'ledger_seals'").fetchone()
        return bool(row and row[0] == "view")

    def _seals_in_rows(self, conn: Any) -> bool:
        known = self._seal_in_row
        if known is None:
            known = self._seal_in_row = self._layout_of(conn)
        return known

    _sql_head: ClassVar[dict[bool, str]] = {
        False: _SQL_HEAD.format(p="?", key_id="json_extract(payload, '$.key_id')",
                                **_HEAD_SEAL_TABLE),
        True: _SQL_HEAD.format(p="?", key_id="json_extract(payload, '$.key_id')",
                               **_HEAD_SEAL_IN_ROW),
    }
    _sql_insert_event: ClassVar[dict[bool, str]] = {
        False: _SQL_INSERT_EVENTS + _values("?", len(_EVENT_FIELDS)),
        True: _SQL_INSERT_EVENTS.replace(") VALUES ", ", " + ", ".join(_SEAL_COLS) + ") VALUES ")
        + _values("?", len(_EVENT_FIELDS) + len(_SEAL_COLS)),
    }
    _sql_insert_seal = _SQL_INSERT_SEALS + _values("?", 4)
    _sql_insert_key = _SQL_INSERT_KEYS + _values("?", 3)

    def orphan_seal(self, after: int = 0) -> int | None:
        with self.translate(), self._driver() as conn:
            if self._seals_in_rows(conn):
                return None  # a seal in an event's row cannot outlive its event
        return super().orphan_seal(after)

    def _append(
        self, conn: Any, job: Appending, expected: int | None, build: Builder
    ) -> list[StoredEvent]:
        # The connection is in autocommit mode (see _on_connect): the transaction is ours.
        # BEGIN IMMEDIATE takes the database's write lock (waiting up to the busy timeout),
        # so the head read below cannot be overtaken by another appender.
        cur = conn.cursor()
        try:
            in_row = self._seals_in_rows(conn)
            cur.execute("BEGIN IMMEDIATE")
            try:
                cur.execute(self._sql_head[in_row], (job.stream, job.stream))
                spos, rows, new_seals, new_keys = self._plan(
                    cur.fetchone(), job, expected, build
                )
                job.conflict_at, job.table = spos, "ledger_events"
                insert = self._sql_insert_event[in_row]
                if in_row:
                    values = _sealed_rows(rows, new_seals)
                    if len(values) == 1:
                        cur.execute(insert, values[0])
                    else:
                        cur.executemany(insert, values)
                else:
                    if len(rows) == 1:
                        cur.execute(insert, _event_values(rows[0]))
                    else:
                        cur.executemany(insert, map(_event_values, rows))
                    seal_rows = self._seal_rows(new_seals)
                    job.table = "ledger_seals"
                    if len(seal_rows) == 1:
                        cur.execute(self._sql_insert_seal, seal_rows[0])
                    else:
                        cur.executemany(self._sql_insert_seal, seal_rows)
                job.table = "ledger_keys"
                for k in new_keys:
                    cur.execute(self._sql_insert_key, (k.key_id, k.public_key, rows[-1].seq))
                job.table = None
                cur.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.rollback()
                raise
        finally:
            cur.close()
        return rows

    def _install_triggers(self, conn: Any) -> None:
        tables: tuple[str, ...] = TABLES
        if self._seal_in_row:  # ledger_seals is a view: nothing can be written through it
            tables = tuple(t for t in TABLES if t != "ledger_seals")
            for op in ("INSERT", "UPDATE", "DELETE"):
                conn.execute(
                    f"CREATE TRIGGER IF NOT EXISTS ledger_seals_no_{op.lower()} INSTEAD OF {op} "
                    f"ON ledger_seals BEGIN SELECT RAISE(ABORT, 'ledger_seals is append-only: "
                    f"{op} refused (a seal is stored with the event it closes)'); END"
                )
        for table in tables:
            for op in ("UPDATE", "DELETE"):
                conn.execute(
                    f"CREATE TRIGGER IF NOT EXISTS {table}_no_{op.lower()} BEFORE {op} ON {table} "
                    f"BEGIN SELECT RAISE(ABORT, '{table} is append-only: {op} refused'); END"
                )
        # INSERT OR REPLACE deletes the row it collides with without firing DELETE triggers
        # (recursive_triggers is off by default), so refuse any insert that would collide.
        for table, where in _SQLITE_UNIQUE.items():
            if table not in tables:
                continue
            conn.execute(
                f"CREATE TRIGGER IF NOT EXISTS {table}_no_replace BEFORE INSERT ON {table} "
                f"WHEN {where} "
                f"BEGIN SELECT RAISE(ABORT, '{table} is append-only: REPLACE refused'); END"
            )


# Per table: the condition under which an insert would collide with (and REPLACE) a row.
_SQLITE_UNIQUE = {
    "ledger_events": "EXISTS (SELECT 1 FROM ledger_events WHERE seq = NEW.seq) OR EXISTS "
    "(SELECT 1 FROM ledger_events WHERE stream = NEW.stream AND stream_seq = NEW.stream_seq)",
    "ledger_seals": "EXISTS (SELECT 1 FROM ledger_seals WHERE seq = NEW.seq)",
    "ledger_keys": "EXISTS (SELECT 1 FROM ledger_keys WHERE key_id = NEW.key_id)",
}



def _sealed_rows(rows: list[StoredEvent], new_seals: list[Seal]) -> list[tuple[Any, ...]]:
    """The events as layout 2 stores them: each closing event with its append's seal."""
    by_seq = {r[0]: r[1:] for r in Recorder._seal_rows(new_seals)}
    none = (None, None, None)
    out = [(*_event_values(r), *by_seq.pop(r.seq, none)) for r in rows]
    if by_seq:  # a seal for an event not in this append: a bug, never stored half-way
        raise LedgerError(f"seal for seq {min(by_seq)} has no event in its append")
    return out
