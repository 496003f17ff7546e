"""The SQLite recorder (the embedded default) and every SQLite quirk the ledger knows."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import URL
from sqlalchemy.ext.compiler import compiles

from ..chain import Seal, StoredEvent
from ..errors import ConfigurationError, LedgerError, LedgerUnreachable
from .base import (
    _EVENT_FIELDS,
    _HEAD_SEAL_IN_ROW,
    _HEAD_SEAL_TABLE,
    _SQL_HEAD,
    _SQL_STREAM_STARTS_INDEX,
    _SQL_INSERT_EVENTS,
    _SQL_INSERT_KEYS,
    _SQL_INSERT_SEALS,
    TABLES,
    Appending,
    Builder,
    Recorder,
    SeqType,
    _event_values,
    metadata,
    _values,
    driver_reason,
)


@compiles(SeqType, "sqlite")
def _seq_is_the_rowid(_type: SeqType, _compiler: Any, **_kw: Any) -> str:
    # "INTEGER" (not "BIGINT", same 64-bit range) makes seq the table's rowid: rows are
    # stored in seq order with no separate primary-key index, one B-tree fewer to write on
    # every commit and to walk on every read. Ledgers created with BIGINT keep working.
    return "INTEGER"


# Storage layout 2 (ledgers created since issue 15; PRAGMA user_version = 2): an append's
# seal is stored in its closing event's row, and ``ledger_seals`` is a view of those columns,
# so every reader (and the verifier) sees the same seal rows as in layout 1, where it is a
# table of its own. A commit of one event writes two B-tree pages (the table and the
# (stream, stream_seq) index) instead of four (layout 1 also writes the seal table and an
# index on recorded_at). Layout 1 ledgers are read and appended to as they are.
LAYOUT = 2
_SEAL_COLS = ("seal_first", "seal_key_id", "seal_signature")
_LAYOUT_2 = (
    "CREATE TABLE ledger_events (seq INTEGER NOT NULL, stream VARCHAR(200) NOT NULL, "
    "stream_seq BIGINT NOT NULL, type VARCHAR(200) NOT NULL, "
    "recorded_at VARCHAR(27) NOT NULL, actor TEXT NOT NULL, payload TEXT NOT NULL, "
    "closes BOOLEAN NOT NULL, prev_hash VARCHAR(64) NOT NULL, "
    "stream_prev_hash VARCHAR(64) NOT NULL, hash VARCHAR(64) NOT NULL, "
    # The seal of the append this event closes (NULL on the others): first seq of the
    # extent, key id, signature base64, as ledger_seals has them in layout 1.
    "seal_first BIGINT, seal_key_id VARCHAR(64), seal_signature VARCHAR(100), "
    "PRIMARY KEY (seq), CONSTRAINT ledger_events_stream_pos UNIQUE (stream, stream_seq))",
    "CREATE VIEW ledger_seals (seq, first_seq, key_id, signature) AS "
    "SELECT seq, seal_first, seal_key_id, seal_signature FROM ledger_events "
    "WHERE seal_key_id IS NOT NULL",
    "CREATE TABLE IF NOT EXISTS ledger_keys (key_id VARCHAR(64) NOT NULL, "
    "public_key VARCHAR(64) NOT NULL, added_seq BIGINT NOT NULL, PRIMARY KEY (key_id))",
    f"PRAGMA user_version = {LAYOUT}",
)


class SQLiteRecorder(Recorder):
    """Embedded default. WAL + synchronous=FULL; writers serialise on ``BEGIN IMMEDIATE``."""

    dialect_name = "sqlite"
    schemes = frozenset({"sqlite", "sqlite+pysqlite"})
    binary_ranges = True
    _seal_in_row: bool | None = None  # the layout, once known (see LAYOUT)

    @classmethod
    def normalize_url(cls, u: URL, base_dir: Path | None, what: str, shown: str) -> URL:
        db = u.database
        if not db or db == ":memory:":
            raise ConfigurationError(f"{what} {shown!r} needs a file path (sqlite:///path)")
        try:
            path = Path(db).expanduser()
        except RuntimeError as e:  # ~user of a user that does not exist
            raise ConfigurationError(f"{what} {shown!r}: {e}") from e
        if not path.is_absolute() and base_dir is not None:
            path = base_dir / path
        return u.set(drivername="sqlite", database=str(path))

    @classmethod
    def database_file(cls, u: URL) -> Path | None:
        return Path(u.database) if u.database else None

    @contextlib.contextmanager
    def translate(
        self, job: Appending | None = None, *, connecting: bool = False
    ) -> Iterator[None]:
        try:
            yield
        except self._driver_error as e:  # sqlite3.Error
            if connecting:  # a file that cannot be opened, or not as a WAL database
                raise LedgerUnreachable(self.display_url, driver_reason(e, self.url)) from e
            if job is not None and isinstance(e, self._integrity_error):
                # sqlite3 does not say which table refused: the append says what it inserted.
                refused = job.refused(job.table)
                if refused is not None:
                    raise refused from e
            raise self._operational(e) from e
        except sa_exc.SQLAlchemyError as e:
            raise self._operational(e) from e

    def _create_engine(self) -> Engine:
        path = self.database_file(self.url)
        assert path is not None
        if not path.parent.is_dir():
            raise LedgerUnreachable(self.display_url, f"directory {path.parent} does not exist")
        engine = create_engine(self.url, connect_args={"timeout": 60})
        where = self.display_url

        @event.listens_for(engine, "do_connect")
        def _private_file(_dialect: Any, _record: Any, _cargs: Any, _cparams: Any) -> None:
            # SQLite would create a missing ledger file 0644 (less the umask). Created 0600
            # first, it keeps that mode, and SQLite gives its -wal and -shm files the mode of
            # the database file. (Only where SQLite would create it: Ledger(create=False)
            # refuses a missing file before it gets here.)
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            except FileExistsError:
                return None
            except OSError as e:
                raise LedgerUnreachable(where, f"cannot create {path}: {e.strerror}") from e
            try:
                os.fchmod(fd, 0o600)
            finally:
                os.close(fd)
            return None

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_conn: Any, _record: Any) -> None:
            # Take transaction control from the sqlite3 module so BEGIN IMMEDIATE is ours.
            dbapi_conn.isolation_level = None
            cur = dbapi_conn.cursor()
            with self.translate(connecting=True):  # a file that is not a WAL database
                cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=FULL")
            cur.execute("PRAGMA busy_timeout=60000")
            cur.close()

        @event.listens_for(engine, "begin")
        def _on_begin(conn: Connection) -> None:
            mode = "IMMEDIATE" if conn.get_execution_options().get("ledger_write") else "DEFERRED"
            conn.exec_driver_sql(f"BEGIN {mode}")

        return engine

    def _write(self) -> contextlib.AbstractContextManager[Connection]:
        @contextlib.contextmanager
        def cm() -> Iterator[Connection]:
            with self.engine.connect() as conn:
                conn = conn.execution_options(ledger_write=True)
                with conn.begin():
                    yield conn

        return cm()

    def _lock_head(self, conn: Connection) -> None:
        pass  # BEGIN IMMEDIATE already holds the database's single write lock

    def _create_schema(self, conn: Connection) -> None:
        new = conn.exec_driver_sql(
            "SELECT 1 FROM sqlite_master WHERE name = 'ledger_events'"
        ).first() is None
        if new:
            for sql in _LAYOUT_2:
                conn.exec_driver_sql(sql)
        else:  # made by an earlier version: completed as it was made (layout 1)
            metadata.create_all(conn, checkfirst=True)
        self._check_format(conn)
        self._seal_in_row = self._layout_of(conn.connection.driver_connection)
        self._iter_sql.clear()
        self._install_triggers(conn)
        conn.exec_driver_sql(_SQL_STREAM_STARTS_INDEX)

    @staticmethod
    def _layout_of(conn: Any) -> bool:
        """Whether the ledger behind the sqlite3 connection keeps seals in the event rows."""
        row = conn.execute("SELECT type FROM sqlite_master WHERE name = 'ledger_seals'").fetchone()
        return bool(row and row[0] == "view")

    def _in_row(self, conn: Any) -> bool:
        known = self._seal_in_row
        if known is None:
            known = self._seal_in_row = self._layout_of(conn)
        return known

    _sql_head = {
        False: _SQL_HEAD.format(p="?", key_id="json_extract(payload, '$.key_id')",
                                **_HEAD_SEAL_TABLE),
        True: _SQL_HEAD.format(p="?", key_id="json_extract(payload, '$.key_id')",
                               **_HEAD_SEAL_IN_ROW),
    }
    _sql_insert_event = {
        False: _SQL_INSERT_EVENTS + _values("?", len(_EVENT_FIELDS)),
        True: _SQL_INSERT_EVENTS.replace(") VALUES ", ", " + ", ".join(_SEAL_COLS) + ") VALUES ")
        + _values("?", len(_EVENT_FIELDS) + len(_SEAL_COLS)),
    }
    _sql_insert_seal = _SQL_INSERT_SEALS + _values("?", 4)
    _sql_insert_key = _SQL_INSERT_KEYS + _values("?", 3)

    def _compile_iter(
        self, with_seals: bool, stop: bool, stream: bool, prefix: bool
    ) -> tuple[str, list[str] | None]:
        cols = ", ".join(f"e.{c}" for c in _EVENT_FIELDS)
        src = "ledger_events AS e"
        if with_seals:
            with self._driver() as conn:
                in_row = self._in_row(conn)
            if in_row:
                cols += ", e.seal_key_id, e.seal_signature, e.seal_first"
            else:
                cols += ", s.key_id, s.signature, s.first_seq"
                src += " LEFT JOIN ledger_seals AS s ON s.seq = e.seq"
        where, names = ["e.seq >= ?"], ["start"]
        if stop:
            where.append("e.seq <= ?")
            names.append("stop")
        if stream:
            where.append("e.stream = ?")
            names.append("stream")
        if prefix:
            where.append("e.stream LIKE ? ESCAPE '/'")
            names.append("prefix")
        # One stream's events in stream_seq order: see Recorder._compile_iter.
        order = "e.stream_seq" if stream else "e.seq"
        return f"SELECT {cols} FROM {src} WHERE {' AND '.join(where)} ORDER BY {order}", names

    def orphan_seal(self, after: int = 0) -> int | None:
        with self.translate(), self._driver() as conn:
            if self._in_row(conn):
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
            in_row = self._in_row(conn)
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

    def _install_triggers(self, conn: Connection) -> None:
        tables = TABLES
        if self._seal_in_row:  # ledger_seals is a view: nothing can be written through it
            tables = tuple(t for t in TABLES if t != "ledger_seals")
            for op in ("INSERT", "UPDATE", "DELETE"):
                conn.exec_driver_sql(
                    f"CREATE TRIGGER IF NOT EXISTS ledger_seals_no_{op.lower()} INSTEAD OF {op} "
                    f"ON ledger_seals BEGIN SELECT RAISE(ABORT, 'ledger_seals is append-only: "
                    f"{op} refused (a seal is stored with the event it closes)'); END"
                )
        for table in tables:
            for op in ("UPDATE", "DELETE"):
                conn.exec_driver_sql(
                    f"CREATE TRIGGER IF NOT EXISTS {table}_no_{op.lower()} BEFORE {op} ON {table} "
                    f"BEGIN SELECT RAISE(ABORT, '{table} is append-only: {op} refused'); END"
                )
        # INSERT OR REPLACE deletes the row it collides with without firing DELETE triggers
        # (recursive_triggers is off by default), so refuse any insert that would collide.
        for table, where in _SQLITE_UNIQUE.items():
            if table not in tables:
                continue
            conn.exec_driver_sql(
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
