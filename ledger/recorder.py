"""Storage of the ledger: one small recorder interface, one class per backend.

Only this module knows SQL. Dialect quirks (how to take the chain-head lock, how to forbid
UPDATE/DELETE/TRUNCATE) live in the recorder subclasses, chosen by dialect name in
:data:`RECORDERS`. Driver errors are translated once, here, into :mod:`ledger.errors`.
"""

from __future__ import annotations

import base64
import contextlib
import operator
from collections.abc import Callable, Iterator
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Connection,
    Engine,
    Index,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    select,
    text,
)
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import URL

from .chain import KeyRecord, Seal, StoredEvent, stored_event
from .errors import ConfigurationError, OperationalError, StreamConflict
from .url import redact, sqlite_path

metadata = MetaData()

events = Table(
    "ledger_events",
    metadata,
    Column("seq", BigInteger, primary_key=True, autoincrement=False),
    Column("stream", String(200), nullable=False),
    Column("stream_seq", BigInteger, nullable=False),
    Column("type", String(200), nullable=False),
    Column("recorded_at", String(27), nullable=False),
    Column("actor", Text, nullable=False),
    Column("payload", Text, nullable=False),
    Column("closes", Boolean, nullable=False),
    Column("prev_hash", String(64), nullable=False),
    Column("stream_prev_hash", String(64), nullable=False),
    Column("hash", String(64), nullable=False),
    UniqueConstraint("stream", "stream_seq", name="ledger_events_stream_pos"),
    Index("ledger_events_recorded_at", "recorded_at"),
)

seals = Table(
    "ledger_seals",
    metadata,
    Column("seq", BigInteger, primary_key=True, autoincrement=False),
    Column("key_id", String(64), nullable=False),
    Column("signature", String(100), nullable=False),
)

keys = Table(
    "ledger_keys",
    metadata,
    Column("key_id", String(64), primary_key=True),
    Column("public_key", String(64), nullable=False),
    Column("added_seq", BigInteger, nullable=False),
)

TABLES = ("ledger_events", "ledger_seals", "ledger_keys")
_EVENT_FIELDS: tuple[str, ...] = StoredEvent.__slots__
_EVENT_COLS = [events.c[n] for n in _EVENT_FIELDS]
_event_values = operator.attrgetter(*_EVENT_FIELDS)  # StoredEvent -> row tuple, in C

# The append path runs on the driver connection with these statements (``{p}``: the driver's
# placeholder). One statement reads everything the append needs under the head lock.
_SQL_HEAD = (
    "SELECT (SELECT seq FROM ledger_events ORDER BY seq DESC LIMIT 1), "
    "(SELECT hash FROM ledger_events ORDER BY seq DESC LIMIT 1), "
    "(SELECT stream_seq FROM ledger_events WHERE stream = {p} ORDER BY stream_seq DESC LIMIT 1), "
    "(SELECT hash FROM ledger_events WHERE stream = {p} ORDER BY stream_seq DESC LIMIT 1), "
    "(SELECT key_id FROM ledger_keys ORDER BY added_seq DESC LIMIT 1)"
)
_SQL_INSERT_EVENTS = f"INSERT INTO ledger_events ({', '.join(_EVENT_FIELDS)}) VALUES "
_SQL_INSERT_SEALS = "INSERT INTO ledger_seals (seq, key_id, signature) VALUES "
_SQL_INSERT_KEYS = "INSERT INTO ledger_keys (key_id, public_key, added_seq) VALUES "


def _values(p: str, width: int, rows: int = 1) -> str:
    one = "(" + ", ".join([p] * width) + ")"
    return ", ".join([one] * rows)

# A builder receives (head_seq, head_hash, stream_seq, stream_hash) and returns the rows
# to insert: events and the seal. It runs inside the locked transaction.
Builder = Callable[
    [int, str, int, str, str | None], tuple[list[StoredEvent], list[Seal], list[KeyRecord]]
]


class Recorder:
    """Backend-neutral part: tables, append under the head lock, streaming reads."""

    dialect_name = ""

    def __init__(self, url: URL) -> None:
        self.url = url
        self.display_url = redact(url)
        self.engine = self._create_engine()
        dbapi = self.engine.dialect.loaded_dbapi
        self._driver_error: type[Exception] = dbapi.Error
        self._integrity_error: type[Exception] = dbapi.IntegrityError

    @contextlib.contextmanager
    def _driver(self) -> Iterator[Any]:
        """A pooled connection at the driver level, for the two hot paths (append, iterate):
        SQLAlchemy's per-statement machinery costs more there than the database does.
        Returned to the pool afterwards (which rolls back anything left open); discarded
        if the driver says it is broken."""
        raw = self.engine.raw_connection()
        try:
            yield raw.driver_connection
        except self._driver_error as e:
            if self.engine.dialect.is_disconnect(e, raw.driver_connection, None):  # type: ignore[arg-type]
                raw.invalidate(e)
            raise
        finally:
            raw.close()

    # -- backend hooks -----------------------------------------------------------------------
    def _create_engine(self) -> Engine:
        raise NotImplementedError

    def _lock_head(self, conn: Connection) -> None:
        raise NotImplementedError

    def _install_triggers(self, conn: Connection) -> None:
        raise NotImplementedError

    def _write(self) -> contextlib.AbstractContextManager[Connection]:
        return self.engine.begin()

    # -- errors ------------------------------------------------------------------------------
    @contextlib.contextmanager
    def translate(self) -> Iterator[None]:
        try:
            yield
        except self._driver_error as e:  # raised on the driver connection (hot paths)
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise OperationalError(f"ledger {self.display_url}: {msg}") from e
        except sa_exc.DBAPIError as e:
            msg = str(e.orig).strip().splitlines()[0] if e.orig is not None else str(e)
            raise OperationalError(f"ledger {self.display_url}: {msg}") from e
        except sa_exc.SQLAlchemyError as e:
            raise OperationalError(f"ledger {self.display_url}: {e}") from e

    # -- schema ------------------------------------------------------------------------------
    def ensure_schema(self) -> None:
        with self.translate(), self._write() as conn:
            self._lock_head(conn)
            metadata.create_all(conn, checkfirst=True)
            self._install_triggers(conn)

    def exists(self) -> bool:
        with self.translate(), self.engine.connect() as conn:
            return bool(self.engine.dialect.has_table(conn, "ledger_events"))

    # -- writes ------------------------------------------------------------------------------
    def append(self, stream: str, expected: int | None, build: Builder) -> list[StoredEvent]:
        """Append what ``build`` returns, in one transaction holding the chain-head lock.

        Under the lock, one statement reads the chain head, the stream head and the active
        key; ``build`` hashes and seals; the rows are inserted and committed.
        """
        with self.translate(), self._driver() as conn:
            return self._append(conn, stream, expected, build)

    def _append(
        self, conn: Any, stream: str, expected: int | None, build: Builder
    ) -> list[StoredEvent]:
        raise NotImplementedError

    @staticmethod
    def _plan(
        head: tuple[Any, ...] | None, stream: str, expected: int | None, build: Builder
    ) -> tuple[int, list[StoredEvent], list[Seal], list[KeyRecord]]:
        head_seq, head_hash, spos, shash, active = head or (None, None, None, None, None)
        spos = spos or 0
        if expected is not None and spos != expected:
            raise StreamConflict(stream, expected, spos)
        rows, new_seals, new_keys = build(
            head_seq if head_seq is not None else 0,
            head_hash if head_seq is not None else "0" * 64,
            spos,
            shash if shash is not None else "0" * 64,
            active,
        )
        return spos, rows, new_seals, new_keys

    @staticmethod
    def _seal_rows(new_seals: list[Seal]) -> list[tuple[int, str, str]]:
        return [
            (seal.seq, seal.key_id, base64.b64encode(seal.signature).decode("ascii"))
            for seal in new_seals
        ]

    # -- reads -------------------------------------------------------------------------------
    def head(self) -> tuple[int, str]:
        with self.translate(), self.engine.connect() as conn:
            row = conn.execute(
                select(events.c.seq, events.c.hash).order_by(events.c.seq.desc()).limit(1)
            ).first()
        return (row[0], row[1]) if row else (0, "0" * 64)

    def stream_position(self, stream: str) -> int:
        with self.translate(), self.engine.connect() as conn:
            pos = conn.execute(
                select(events.c.stream_seq)
                .where(events.c.stream == stream)
                .order_by(events.c.stream_seq.desc())
                .limit(1)
            ).scalar()
        return int(pos or 0)

    def list_keys(self) -> list[KeyRecord]:
        with self.translate(), self.engine.connect() as conn:
            rows = conn.execute(select(keys.c.key_id, keys.c.public_key).order_by(keys.c.added_seq))
            return [KeyRecord(r[0], r[1]) for r in rows]

    def active_key(self) -> str | None:
        with self.translate(), self.engine.connect() as conn:
            return conn.execute(
                select(keys.c.key_id).order_by(keys.c.added_seq.desc()).limit(1)
            ).scalar()

    def iter_events(
        self,
        *,
        start: int = 1,
        stop: int | None = None,
        stream: str | None = None,
        stream_prefix: str | None = None,
        with_seals: bool = False,
        batch: int = 2000,
    ) -> Iterator[tuple[StoredEvent, Seal | None]]:
        """Yield events in seq order without loading them all (server-side cursor on PG)."""
        cols: list[Any] = list(_EVENT_COLS)
        src: Any = events
        if with_seals:
            cols += [seals.c.key_id, seals.c.signature]
            src = events.outerjoin(seals, seals.c.seq == events.c.seq)
        stmt = select(*cols).select_from(src).where(events.c.seq >= start)
        if stop is not None:
            stmt = stmt.where(events.c.seq <= stop)
        if stream is not None:
            stmt = stmt.where(events.c.stream == stream)
        if stream_prefix is not None:
            stmt = stmt.where(events.c.stream.startswith(stream_prefix, autoescape=True))
        stmt = stmt.order_by(events.c.seq)
        compiled = stmt.compile(dialect=self.engine.dialect)
        params = compiled.construct_params()
        args: Any = params
        if compiled.positional:
            args = tuple(params[k] for k in compiled.positiontup or ())
        sql = str(compiled)
        b64 = base64.b64decode
        make = stored_event
        with self.translate(), self._driver() as conn:
            cur = self._read_cursor(conn, batch)
            try:
                cur.execute(sql, args)
                while True:
                    part = cur.fetchmany(batch)
                    if not part:
                        break
                    for r in part:
                        ev = make(
                            r[0], r[1], r[2], r[3], r[4], r[5], r[6], bool(r[7]), r[8], r[9], r[10]
                        )
                        seal = None
                        if with_seals and r[11] is not None:
                            try:
                                sig = b64(r[12])
                            except ValueError:
                                sig = b""
                            seal = Seal(r[0], r[11], sig)
                        yield ev, seal
            finally:
                cur.close()

    def _read_cursor(self, conn: Any, batch: int) -> Any:
        """A cursor that streams a long result (the driver's default for SQLite)."""
        return conn.cursor()

    def orphan_seal(self) -> int | None:
        """The first seal that belongs to no event, if any (a seal cannot float free)."""
        with self.translate(), self.engine.connect() as conn:
            return conn.execute(
                select(seals.c.seq)
                .where(~select(events.c.seq).where(events.c.seq == seals.c.seq).exists())
                .order_by(seals.c.seq)
                .limit(1)
            ).scalar()

    def streams(self, prefix: str = "") -> list[tuple[str, int, str, str]]:
        """(stream, events, first recorded_at, last recorded_at) for streams under ``prefix``."""
        from sqlalchemy import func

        stmt = (
            select(events.c.stream, func.count(), func.min(events.c.recorded_at),
                   func.max(events.c.recorded_at))
            .where(events.c.stream.startswith(prefix, autoescape=True))
            .group_by(events.c.stream)
            .order_by(func.min(events.c.seq))
        )
        with self.translate(), self.engine.connect() as conn:
            return [(r[0], r[1], r[2], r[3]) for r in conn.execute(stmt)]

    def dispose(self) -> None:
        self.engine.dispose()


class SQLiteRecorder(Recorder):
    """Embedded default. WAL + synchronous=FULL; writers serialise on ``BEGIN IMMEDIATE``."""

    dialect_name = "sqlite"

    def _create_engine(self) -> Engine:
        path = sqlite_path(self.url)
        assert path is not None
        if not path.parent.exists():
            raise ConfigurationError(
                f"ledger {self.display_url}: directory {path.parent} does not exist"
            )
        engine = create_engine(self.url, connect_args={"timeout": 60})

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_conn: Any, _record: Any) -> None:
            # Take transaction control from the sqlite3 module so BEGIN IMMEDIATE is ours.
            dbapi_conn.isolation_level = None
            cur = dbapi_conn.cursor()
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

    _sql_head = _SQL_HEAD.format(p="?")
    _sql_insert_event = _SQL_INSERT_EVENTS + _values("?", len(_EVENT_FIELDS))
    _sql_insert_seal = _SQL_INSERT_SEALS + _values("?", 3)
    _sql_insert_key = _SQL_INSERT_KEYS + _values("?", 3)

    def _append(
        self, conn: Any, stream: str, expected: int | None, build: Builder
    ) -> list[StoredEvent]:
        # The connection is in autocommit mode (see _on_connect): the transaction is ours.
        # BEGIN IMMEDIATE takes the database's write lock (waiting up to the busy timeout),
        # so the head read below cannot be overtaken by another appender.
        cur = conn.cursor()
        try:
            cur.execute("BEGIN IMMEDIATE")
            try:
                cur.execute(self._sql_head, (stream, stream))
                spos, rows, new_seals, new_keys = self._plan(
                    cur.fetchone(), stream, expected, build
                )
                try:
                    if len(rows) == 1:
                        cur.execute(self._sql_insert_event, _event_values(rows[0]))
                    else:
                        cur.executemany(self._sql_insert_event, map(_event_values, rows))
                except self._integrity_error as e:
                    raise StreamConflict(stream, spos, spos + 1) from e
                cur.executemany(self._sql_insert_seal, self._seal_rows(new_seals))
                for k in new_keys:
                    cur.execute(self._sql_insert_key, (k.key_id, k.public_key, rows[-1].seq))
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


# Arbitrary constant: the advisory lock that serialises appenders on the chain head.
PG_HEAD_LOCK = 0x5E_1ED6E2


class PostgresRecorder(Recorder):
    """Production backend. Appenders on any host serialise on a transaction advisory lock."""

    dialect_name = "postgresql"

    def _create_engine(self) -> Engine:
        return create_engine(self.url, pool_pre_ping=False, connect_args={"connect_timeout": 10})

    def _lock_head(self, conn: Connection) -> None:
        conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": PG_HEAD_LOCK})

    # The append costs two round trips: BEGIN, the lock and the head read go in one
    # multi-statement query, the inserts and COMMIT in another. Each statement of a
    # multi-statement query takes its own snapshot (READ COMMITTED), so the head read sees
    # every append committed before the lock was granted. Values are bound client side by
    # psycopg's ClientCursor (libpq quoting): the simple protocol takes no parameters.
    _sql_lock_and_head = (
        f"BEGIN; SELECT pg_advisory_xact_lock({PG_HEAD_LOCK}); " + _SQL_HEAD.format(p="%s")
    )

    def _append(
        self, conn: Any, stream: str, expected: int | None, build: Builder
    ) -> list[StoredEvent]:
        from psycopg import ClientCursor

        conn.autocommit = True  # BEGIN and COMMIT are sent with the statements they enclose
        try:
            cur = ClientCursor(conn)
            cur.execute(self._sql_lock_and_head, (stream, stream))
            while cur.nextset():  # BEGIN, the lock, then the head row
                pass
            spos, rows, new_seals, new_keys = self._plan(cur.fetchone(), stream, expected, build)
            width = len(_EVENT_FIELDS)
            sql = [_SQL_INSERT_EVENTS + _values("%s", width, len(rows))]
            params: list[Any] = []
            for r in rows:
                params.extend(_event_values(r))
            if new_seals:
                sql.append(_SQL_INSERT_SEALS + _values("%s", 3, len(new_seals)))
                for seal_row in self._seal_rows(new_seals):
                    params.extend(seal_row)
            for k in new_keys:
                sql.append(_SQL_INSERT_KEYS + _values("%s", 3))
                params.extend((k.key_id, k.public_key, rows[-1].seq))
            sql.append("COMMIT")
            try:
                cur.execute("; ".join(sql), params)
            except self._integrity_error as e:
                if getattr(getattr(e, "diag", None), "table_name", None) == "ledger_events":
                    raise StreamConflict(stream, spos, spos + 1) from e
                raise
            return rows
        finally:
            if not conn.closed and not conn.broken:
                conn.rollback()  # a no-op after COMMIT; ends the transaction after an error
                conn.autocommit = False

    def _read_cursor(self, conn: Any, batch: int) -> Any:
        # A named (server-side) cursor: rows come ``batch`` at a time, never all at once.
        cur = conn.cursor(name="ledger_iter_events")
        cur.itersize = batch
        return cur

    def _install_triggers(self, conn: Connection) -> None:
        conn.exec_driver_sql(
            "CREATE OR REPLACE FUNCTION ledger_append_only() RETURNS trigger "
            "LANGUAGE plpgsql AS $$ BEGIN "
            "RAISE EXCEPTION '%% is append-only: %% refused', TG_TABLE_NAME, TG_OP "
            "USING ERRCODE = 'insufficient_privilege'; END $$"
        )
        for table in TABLES:
            conn.exec_driver_sql(
                f"CREATE OR REPLACE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE ON {table} "
                "FOR EACH ROW EXECUTE FUNCTION ledger_append_only()"
            )
            conn.exec_driver_sql(
                f"CREATE OR REPLACE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table} "
                "FOR EACH STATEMENT EXECUTE FUNCTION ledger_append_only()"
            )
            # ALWAYS: also fires under session_replication_role = replica.
            conn.exec_driver_sql(f"ALTER TABLE {table} ENABLE ALWAYS TRIGGER {table}_append_only")
            conn.exec_driver_sql(f"ALTER TABLE {table} ENABLE ALWAYS TRIGGER {table}_no_truncate")


RECORDERS: dict[str, type[Recorder]] = {
    "sqlite": SQLiteRecorder,
    "postgresql": PostgresRecorder,
}


def recorder_for(url: URL) -> Recorder:
    cls = RECORDERS.get(url.get_backend_name())
    if cls is None:
        raise ConfigurationError(f"no ledger backend for {redact(url)!r}")
    return cls(url)


