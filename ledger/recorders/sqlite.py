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

from ..chain import StoredEvent
from ..errors import ConfigurationError, LedgerUnreachable
from .base import (
    _EVENT_FIELDS,
    _SQL_HEAD,
    _SQL_INSERT_EVENTS,
    _SQL_INSERT_KEYS,
    _SQL_INSERT_SEALS,
    TABLES,
    Appending,
    Builder,
    Recorder,
    SeqType,
    _event_values,
    _values,
    driver_reason,
)


@compiles(SeqType, "sqlite")
def _seq_is_the_rowid(_type: SeqType, _compiler: Any, **_kw: Any) -> str:
    # "INTEGER" (not "BIGINT", same 64-bit range) makes seq the table's rowid: rows are
    # stored in seq order with no separate primary-key index, one B-tree fewer to write on
    # every commit and to walk on every read. Ledgers created with BIGINT keep working.
    return "INTEGER"


class SQLiteRecorder(Recorder):
    """Embedded default. WAL + synchronous=FULL; writers serialise on ``BEGIN IMMEDIATE``."""

    dialect_name = "sqlite"
    schemes = frozenset({"sqlite", "sqlite+pysqlite"})
    binary_ranges = True

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

    _sql_head = _SQL_HEAD.format(p="?", key_id="json_extract(payload, '$.key_id')")
    _sql_insert_event = _SQL_INSERT_EVENTS + _values("?", len(_EVENT_FIELDS))
    _sql_insert_seal = _SQL_INSERT_SEALS + _values("?", 4)
    _sql_insert_key = _SQL_INSERT_KEYS + _values("?", 3)

    def _append(
        self, conn: Any, job: Appending, expected: int | None, build: Builder
    ) -> list[StoredEvent]:
        # The connection is in autocommit mode (see _on_connect): the transaction is ours.
        # BEGIN IMMEDIATE takes the database's write lock (waiting up to the busy timeout),
        # so the head read below cannot be overtaken by another appender.
        cur = conn.cursor()
        try:
            cur.execute("BEGIN IMMEDIATE")
            try:
                cur.execute(self._sql_head, (job.stream, job.stream))
                spos, rows, new_seals, new_keys = self._plan(
                    cur.fetchone(), job, expected, build
                )
                job.conflict_at, job.table = spos, "ledger_events"
                if len(rows) == 1:
                    cur.execute(self._sql_insert_event, _event_values(rows[0]))
                else:
                    cur.executemany(self._sql_insert_event, map(_event_values, rows))
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
        for table in TABLES:
            for op in ("UPDATE", "DELETE"):
                conn.exec_driver_sql(
                    f"CREATE TRIGGER IF NOT EXISTS {table}_no_{op.lower()} BEFORE {op} ON {table} "
                    f"BEGIN SELECT RAISE(ABORT, '{table} is append-only: {op} refused'); END"
                )
        # INSERT OR REPLACE deletes the row it collides with without firing DELETE triggers
        # (recursive_triggers is off by default), so refuse any insert that would collide.
        for table, where in _SQLITE_UNIQUE.items():
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

