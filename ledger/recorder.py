"""Storage of the ledger: one small recorder interface, one class per backend.

Only this module knows SQL. Dialect quirks (how to take the chain-head lock, how to forbid
UPDATE/DELETE/TRUNCATE) live in the recorder subclasses, chosen by dialect name in
:data:`RECORDERS`. Driver errors are translated once, here, into :mod:`ledger.errors`.
"""

from __future__ import annotations

import base64
import contextlib
import operator
import os
import threading
from collections.abc import Callable, Iterator
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Connection,
    Engine,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    bindparam,
    create_engine,
    event,
    select,
    text,
)
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import URL

from .chain import KeyRecord, Seal, StoredEvent, stored_event
from .errors import (
    ConfigurationError,
    IntegrityViolation,
    LedgerUnreachable,
    OperationalError,
    StreamConflict,
)
from .url import redact, sqlite_path

metadata = MetaData()

# On SQLite, "INTEGER" (not "BIGINT", same 64-bit range) makes seq the table's rowid: rows
# are stored in seq order with no separate primary-key index, one B-tree fewer to write on
# every commit and to walk on every read. Ledgers created with BIGINT keep working as they are.
_SEQ = BigInteger().with_variant(Integer(), "sqlite")

events = Table(
    "ledger_events",
    metadata,
    Column("seq", _SEQ, primary_key=True, autoincrement=False),
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
    Column("seq", _SEQ, primary_key=True, autoincrement=False),
    Column("first_seq", BigInteger, nullable=False),
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
# placeholder). One statement reads everything the append needs under the head lock: the
# chain head, the stream head, the active key, and what the appender checks before it builds
# on the head (that it closes its append, and its seal; a rotation's payload, whose seal is
# the previous key's).
_SQL_HEAD = (
    "SELECT h.seq, h.hash, "
    "(SELECT stream_seq FROM ledger_events WHERE stream = {p} ORDER BY stream_seq DESC LIMIT 1), "
    "(SELECT hash FROM ledger_events WHERE stream = {p} ORDER BY stream_seq DESC LIMIT 1), "
    # The active key as the chain says it (the ledger stream's last key event: the genesis or
    # a rotation), not the key table, where an INSERT could add a row.
    "(SELECT {key_id} FROM ledger_events WHERE stream = 'ledger' "
    "ORDER BY stream_seq DESC LIMIT 1), "
    "h.closes, s.first_seq, s.key_id, s.signature, "
    "CASE WHEN h.type = 'ledger.key_rotated' THEN h.payload END "
    "FROM (SELECT 1 AS one) AS x "
    "LEFT JOIN (SELECT seq, hash, closes, type, payload FROM ledger_events "
    "ORDER BY seq DESC LIMIT 1) AS h ON TRUE "
    "LEFT JOIN ledger_seals AS s ON s.seq = h.seq"
)
_SQL_INSERT_EVENTS = f"INSERT INTO ledger_events ({', '.join(_EVENT_FIELDS)}) VALUES "
_SQL_INSERT_SEALS = "INSERT INTO ledger_seals (seq, first_seq, key_id, signature) VALUES "
_SQL_INSERT_KEYS = "INSERT INTO ledger_keys (key_id, public_key, added_seq) VALUES "


def _values(p: str, width: int, rows: int = 1) -> str:
    one = "(" + ", ".join([p] * width) + ")"
    return ", ".join([one] * rows)


# The head event as the appender checks it before building on it: (closes, seal first seq,
# seal key id, seal signature base64, rotation payload). None: the recorder's own last
# append (a prediction the database checks), or an empty ledger.
Tip = tuple[Any, Any, Any, Any, Any] | None

# A builder receives (head_seq, head_hash, stream_seq, stream_hash, active key, tip) and
# returns the rows to insert: events, seals, keys. It runs inside the locked transaction.
Builder = Callable[
    [int, str, int, str, str | None, Tip],
    tuple[list[StoredEvent], list[Seal], list[KeyRecord]],
]


class Recorder:
    """Backend-neutral part: tables, append under the head lock, streaming reads."""

    dialect_name = ""

    def __init__(self, url: URL) -> None:
        self.url = url
        self.display_url = redact(url)
        self.engine = self._create_engine()
        _no_pool_sharing_across_fork(self.engine)
        _unreachable_on_connect(self.engine, self.display_url, url)
        dbapi = self.engine.dialect.loaded_dbapi
        self._driver_error: type[Exception] = dbapi.Error
        self._integrity_error: type[Exception] = dbapi.IntegrityError
        self._writer_lock = threading.Lock()
        self._writer_conn: Any = None
        self._writer_pid = 0
        self._iter_sql: dict[tuple[bool, ...], tuple[str, list[str] | None]] = {}
        self._inherited: list[Any] = []

    def _new_writer(self) -> Any:
        """Check out the connection appends run on and keep it from one append to the next
        (the pool's checkout and reset cost more than an append's own statements). Another
        thread appending at the same moment gets a pooled one (see append)."""
        if self._writer_conn is not None:  # the parent's, in a forked child: never used
            self._inherited.append(self._writer_conn)  # here, nor closed (GC would close it)
        self._writer_conn = None
        raw = self.engine.raw_connection()
        self._writer_opened(raw.driver_connection)
        self._writer_conn = raw
        self._writer_pid = os.getpid()
        return raw

    def _writer_opened(self, conn: Any) -> None:
        """Set up the appenders' connection once (a backend hook)."""

    def _writer_closing(self, conn: Any) -> None:
        """Undo _writer_opened before the connection goes back to the pool."""

    @contextlib.contextmanager
    def _driver(self) -> Iterator[Any]:
        """A pooled connection at the driver level, for the hot paths (iterating, appending
        from a second thread): SQLAlchemy's per-statement machinery costs more there than the
        database does. Returned to the pool afterwards (which rolls back anything left open);
        discarded if the driver says it is broken."""
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

    def _schema_ready(self, conn: Connection) -> bool:
        """Whether tables and triggers are all in place, so that opening needs no DDL."""
        return False

    def _write(self) -> contextlib.AbstractContextManager[Connection]:
        return self.engine.begin()

    # -- errors ------------------------------------------------------------------------------
    @contextlib.contextmanager
    def translate(self) -> Iterator[None]:
        try:
            yield
        except (self._driver_error, sa_exc.SQLAlchemyError) as e:
            raise self._operational(e) from e

    def _operational(self, e: Exception) -> OperationalError:
        if isinstance(e, sa_exc.DBAPIError):
            msg = str(e.orig).strip().splitlines()[0] if e.orig is not None else str(e)
        elif isinstance(e, sa_exc.SQLAlchemyError):
            msg = str(e)
        else:  # raised on the driver connection (the hot paths)
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        return OperationalError(f"ledger {self.display_url}: {msg}")

    # -- schema ------------------------------------------------------------------------------
    def ensure_schema(self) -> None:
        with self.translate(), self._write() as conn:
            self._lock_head(conn)
            if self._schema_ready(conn):  # no DDL: the appending role may only INSERT
                self._check_format(conn)
                return
            metadata.create_all(conn, checkfirst=True)
            self._check_format(conn)
            self._install_triggers(conn)

    def exists(self) -> bool:
        with self.translate(), self.engine.connect() as conn:
            found = bool(self.engine.dialect.has_table(conn, "ledger_events"))
            if found:
                self._check_format(conn)
            return found

    def _check_format(self, conn: Connection) -> None:
        """Refuse a format-1 ledger (seals without extents): its seals cannot tell an event
        slipped in at the head from a genuine one, so nothing here may read or extend it."""
        from sqlalchemy import inspect

        names = {c["name"] for c in inspect(conn).get_columns("ledger_seals")}
        if "first_seq" not in names:
            raise ConfigurationError(
                f"ledger {self.display_url}: format 1 (statekeeper 0.1, seals without "
                "extents) is not supported: export it with statekeeper 0.1 for the record "
                "and start a new ledger (docs/architecture.md, 'Ledger format')"
            )

    # -- writes ------------------------------------------------------------------------------
    def append(self, stream: str, expected: int | None, build: Builder) -> list[StoredEvent]:
        """Append what ``build`` returns, in one transaction holding the chain-head lock.

        Under the lock, one statement reads the chain head, the stream head and the active
        key; ``build`` hashes and seals; the rows are inserted and committed.
        """
        # translate() spelled out (this runs once per append), around the kept connection.
        lock = self._writer_lock
        if not lock.acquire(blocking=False):  # another thread is appending: a pooled one
            with self.translate(), self._driver() as conn:
                return self._append(conn, stream, expected, build)
        try:
            raw = self._writer_conn
            if raw is None or self._writer_pid != os.getpid():
                with self.translate():
                    raw = self._new_writer()
            try:
                return self._append(raw.driver_connection, stream, expected, build)
            except self._driver_error as e:
                if self.engine.dialect.is_disconnect(e, raw.driver_connection, None):  # type: ignore[arg-type]
                    self._writer_conn = None
                    raw.invalidate(e)
                raise self._operational(e) from e
            except sa_exc.SQLAlchemyError as e:
                raise self._operational(e) from e
        finally:
            lock.release()

    def _append(
        self, conn: Any, stream: str, expected: int | None, build: Builder
    ) -> list[StoredEvent]:
        raise NotImplementedError

    @staticmethod
    def _plan(
        head: tuple[Any, ...] | None, stream: str, expected: int | None, build: Builder
    ) -> tuple[int, list[StoredEvent], list[Seal], list[KeyRecord]]:
        head_seq, head_hash, spos, shash, active = head[:5] if head else (None,) * 5
        spos = spos or 0
        if expected is not None and spos != expected:
            raise StreamConflict(stream, expected, spos)
        tip: Tip = None
        if head is not None and len(head) > 5 and head_seq is not None:
            tip = (head[5], head[6], head[7], head[8], head[9])
        rows, new_seals, new_keys = build(
            head_seq if head_seq is not None else 0,
            head_hash if head_seq is not None else "0" * 64,
            spos,
            shash if shash is not None else "0" * 64,
            active,
            tip,
        )
        return spos, rows, new_seals, new_keys

    @staticmethod
    def _seal_rows(new_seals: list[Seal]) -> list[tuple[int, int, str, str]]:
        return [
            (seal.seq, seal.first, seal.key_id, base64.b64encode(seal.signature).decode("ascii"))
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
        shape = (with_seals, stop is not None, stream is not None, stream_prefix is not None)
        cached = self._iter_sql.get(shape)
        if cached is None:
            cached = self._iter_sql[shape] = self._compile_iter(*shape)
        sql, names = cached
        values: dict[str, Any] = {"start": start, "stop": stop, "stream": stream}
        if stream_prefix is not None:
            values["prefix"] = (
                stream_prefix.replace("/", "//").replace("%", "/%").replace("_", "/_") + "%"
            )
        args: Any = tuple(values[k] for k in names) if names is not None else values
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
                            seal = Seal(r[0], r[11], sig, r[13])
                        yield ev, seal
            finally:
                cur.close()

    def _compile_iter(
        self, with_seals: bool, stop: bool, stream: bool, prefix: bool
    ) -> tuple[str, list[str] | None]:
        """The SELECT of one shape of ``iter_events``, compiled once per recorder (compiling
        costs more than a short read): its SQL and, for positional drivers, its parameter
        order (None: named)."""
        cols: list[Any] = list(_EVENT_COLS)
        src: Any = events
        if with_seals:
            cols += [seals.c.key_id, seals.c.signature, seals.c.first_seq]
            src = events.outerjoin(seals, seals.c.seq == events.c.seq)
        stmt = select(*cols).select_from(src).where(events.c.seq >= bindparam("start"))
        if stop:
            stmt = stmt.where(events.c.seq <= bindparam("stop"))
        if stream:
            stmt = stmt.where(events.c.stream == bindparam("stream"))
        if prefix:
            stmt = stmt.where(events.c.stream.like(bindparam("prefix"), escape="/"))
        # One stream's events come in stream_seq order, the same as seq order for any stream
        # the appender wrote (the verifier checks both), so that the (stream, stream_seq)
        # index serves the read: ordering by seq made it a scan of the whole table.
        stmt = stmt.order_by(events.c.stream_seq if stream else events.c.seq)
        compiled = stmt.compile(dialect=self.engine.dialect)
        names = list(compiled.positiontup or ()) if compiled.positional else None
        return str(compiled), names

    def _read_cursor(self, conn: Any, batch: int) -> Any:
        """A cursor that streams a long result (the driver's default for SQLite)."""
        return conn.cursor()

    def orphan_seal(self, after: int = 0) -> int | None:
        """The first seal after ``after`` that belongs to no event (a seal cannot float free)."""
        with self.translate(), self.engine.connect() as conn:
            return conn.execute(
                select(seals.c.seq)
                .where(seals.c.seq > after)
                .where(~select(events.c.seq).where(events.c.seq == seals.c.seq).exists())
                .order_by(seals.c.seq)
                .limit(1)
            ).scalar()

    def stream_head(self, stream: str, at_most: int) -> tuple[int, str] | None:
        """(stream_seq, hash) of the stream's last event at or before seq ``at_most``."""
        with self.translate(), self.engine.connect() as conn:
            row = conn.execute(
                select(events.c.stream_seq, events.c.hash)
                .where(events.c.stream == stream, events.c.seq <= at_most)
                .order_by(events.c.stream_seq.desc())
                .limit(1)
            ).first()
        return (int(row[0]), str(row[1])) if row else None

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
        with self._writer_lock:
            raw, self._writer_conn = self._writer_conn, None
            if raw is not None and self._writer_pid == os.getpid():
                with contextlib.suppress(Exception):  # a broken connection is dropped anyway
                    self._writer_closing(raw.driver_connection)
                raw.close()
        self.engine.dispose()


class SQLiteRecorder(Recorder):
    """Embedded default. WAL + synchronous=FULL; writers serialise on ``BEGIN IMMEDIATE``."""

    dialect_name = "sqlite"

    def _create_engine(self) -> Engine:
        path = sqlite_path(self.url)
        assert path is not None
        if not path.parent.is_dir():
            raise LedgerUnreachable(self.display_url, f"directory {path.parent} does not exist")
        engine = create_engine(self.url, connect_args={"timeout": 60})
        where = self.display_url
        sqlite_error: type[Exception] = engine.dialect.loaded_dbapi.Error

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
            try:  # still connecting: a file that cannot be opened as a WAL database
                cur.execute("PRAGMA journal_mode=WAL")
            except sqlite_error as e:
                raise LedgerUnreachable(where, _reason(e, None)) from e
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
                seal_rows = self._seal_rows(new_seals)
                try:
                    if len(seal_rows) == 1:
                        cur.execute(self._sql_insert_seal, seal_rows[0])
                    else:
                        cur.executemany(self._sql_insert_seal, seal_rows)
                except self._integrity_error as e:
                    raise _seal_in_the_way(rows) from e
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

_PG_KEY_ID = "(payload::json ->> 'key_id')"
_PG_HEAD = _SQL_HEAD.format(p="{p}", key_id=_PG_KEY_ID).encode()
_PG_EVENT_ARGS = "bigint, text, bigint, text, text, text, text, boolean, text, text, text"
_PG_EVENT_VALUES = ", ".join(f"${i}" for i in range(1, 12))
_PG_PREPARE = "; ".join([
    "PREPARE ledger_head(text) AS " + _SQL_HEAD.format(p="$1", key_id=_PG_KEY_ID),
    f"PREPARE ledger_event({_PG_EVENT_ARGS}) AS "
    f"INSERT INTO ledger_events ({', '.join(_EVENT_FIELDS)}) VALUES ({_PG_EVENT_VALUES})",
    # The conditions of the predicted-head INSERT in PostgresRecorder._insert.
    f"PREPARE ledger_event_if({_PG_EVENT_ARGS}, bigint, text) AS "
    f"INSERT INTO ledger_events ({', '.join(_EVENT_FIELDS)}) SELECT {_PG_EVENT_VALUES} "
    "WHERE EXISTS (SELECT 1 FROM ledger_events WHERE seq = $12 AND hash = $13) "
    "AND NOT EXISTS (SELECT 1 FROM ledger_events WHERE seq = $1) "
    "AND NOT EXISTS (SELECT 1 FROM ledger_events WHERE stream = $2 AND stream_seq = $3)",
    "PREPARE ledger_seal_if(bigint, bigint, text, text, text) AS "
    "INSERT INTO ledger_seals (seq, first_seq, key_id, signature) SELECT $1, $2, $3, $4 "
    "WHERE EXISTS (SELECT 1 FROM ledger_events WHERE seq = $1 AND hash = $5)",
])
_PG_PREPARED = ["ledger_head", "ledger_event", "ledger_event_if", "ledger_seal_if"]
_PG_INSERT_EVENTS = _SQL_INSERT_EVENTS.removesuffix(" VALUES ").encode()
_PG_INSERT_SEALS = _SQL_INSERT_SEALS.removesuffix(" VALUES ").encode()
_PG_INSERT_KEYS = _SQL_INSERT_KEYS.removesuffix(" VALUES ").encode()


class _PgLiterals:
    """SQL literals for one connection: libpq's PQescapeLiteral, which knows the connection's
    encoding and ``standard_conforming_strings``. ``text`` remembers what it quoted (stream,
    type, actor: the same in every row of an append); ``value`` does not (payloads, hashes)."""

    def __init__(self, conn: Any) -> None:
        from psycopg import pq

        self._escape = pq.Escaping(conn.pgconn).escape_literal
        self._codec = conn.info.encoding
        self._memo: dict[str, bytes] = {}

    def value(self, s: str) -> bytes:
        try:
            raw = s.encode(self._codec)
        except UnicodeEncodeError as e:
            from psycopg import DataError

            raise DataError(f"text not representable in client encoding {self._codec}") from e
        if b"\x00" in raw:  # PQescapeLiteral would stop there, cutting the value short
            from psycopg import DataError

            raise DataError("PostgreSQL text fields cannot contain NUL (0x00) bytes")
        return bytes(self._escape(raw))

    def text(self, s: str) -> bytes:
        lit = self._memo.get(s)
        if lit is None:
            if len(self._memo) > 1000:
                self._memo.clear()
            lit = self._memo[s] = self.value(s)
        return lit



# READ COMMITTED whatever the server's default: each statement after the lock must see the
# head as the previous holder of the lock left it (REPEATABLE READ would snapshot before it).
_PG_BEGIN_LOCKED = b"BEGIN ISOLATION LEVEL READ COMMITTED; SELECT pg_advisory_xact_lock(%d)" % (
    PG_HEAD_LOCK
)


class PostgresRecorder(Recorder):
    """Production backend. Appenders on any host serialise on a transaction advisory lock."""

    dialect_name = "postgresql"

    def _create_engine(self) -> Engine:
        return create_engine(self.url, pool_pre_ping=False, connect_args={"connect_timeout": 10})

    def _lock_head(self, conn: Connection) -> None:
        conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": PG_HEAD_LOCK})

    # An append is one or two round trips, each a multi-statement query in the simple
    # protocol, each statement with a snapshot of its own (READ COMMITTED), taken after the
    # lock statement before it:
    #
    # * head predicted (this recorder's last append, nobody else's since): BEGIN; lock;
    #   INSERT the events only WHERE the predicted head (seq, hash) still is the head and the
    #   next positions are free; the seal and keys only WHERE those events went in; COMMIT.
    #   If another writer got in between, nothing is written and the slow path runs.
    # * otherwise: BEGIN; lock; read the head. Then: the INSERTs; COMMIT.
    #
    # Values are quoted by libpq (PQescapeLiteral). On the appenders' own connection the
    # one-event statements are prepared once (SQL PREPARE: the simple protocol has no other
    # kind), which saves the server planning them on every append; should they vanish (a
    # pooler in transaction mode, DISCARD ALL), they are prepared again, or not used.

    def __init__(self, url: URL) -> None:
        super().__init__(url)
        self._lits: tuple[Any, _PgLiterals] | None = None
        self._prepared_on: Any = None  # the connection holding our prepared statements
        self._prepare_tries = 0
        # (head seq, head hash, stream, stream seq, stream hash, active key) as of this
        # recorder's last append: a prediction, checked by the database, never trusted.
        self._predicted: tuple[int, str, str, int, str, str | None] | None = None
        self._skip_predictions = 0  # after a wrong prediction (other writers), read first

    def _append(
        self, conn: Any, stream: str, expected: int | None, build: Builder
    ) -> list[StoredEvent]:
        from psycopg.errors import InvalidSqlStatementName

        # BEGIN and COMMIT are sent with the statements they enclose: autocommit mode (the
        # appenders' own connection is kept in it; a pooled one is switched for the append).
        pooled = not conn.autocommit
        if pooled:
            conn.autocommit = True
        try:
            try:
                return self._append_once(conn, stream, expected, build)
            except InvalidSqlStatementName:
                # Our prepared statements are gone; the transaction was aborted before its
                # COMMIT, so nothing was written. Prepare them again (or do without).
                if conn.pgconn.transaction_status:
                    conn.rollback()
                self._prepared_on = None
                self._prepare(conn)
                return self._append_once(conn, stream, expected, build)
        except BaseException:
            self._predicted = None
            raise
        finally:
            if not conn.closed and not conn.broken:
                if conn.pgconn.transaction_status:  # not IDLE: an error left it open
                    conn.rollback()
                if pooled:
                    conn.autocommit = False

    def _append_once(
        self, conn: Any, stream: str, expected: int | None, build: Builder
    ) -> list[StoredEvent]:
        lit = self._literals(conn)
        prepared = conn is self._prepared_on
        head = self._prediction(stream, expected)
        if head is not None:
            _, rows, new_seals, new_keys = self._plan(head, stream, expected, build)
            try:
                went_in = self._insert(conn, lit, rows, new_seals, new_keys, head, prepared)
            except self._integrity_error as e:
                if getattr(getattr(e, "diag", None), "table_name", None) == "ledger_seals":
                    raise _seal_in_the_way(rows) from e
                raise
            if went_in:
                self._remember(rows, new_keys, head[4])
                return rows
            self._predicted, self._skip_predictions = None, 16
        elif self._skip_predictions:
            self._skip_predictions -= 1
        cur = conn.cursor()
        s = lit.text(stream)
        cur.execute(
            _PG_BEGIN_LOCKED + b"; "
            + (b"EXECUTE ledger_head(%s)" % s if prepared else _PG_HEAD.replace(b"{p}", s))
        )
        while cur.nextset():  # BEGIN, the lock, then the head row
            pass
        head = cur.fetchone()
        spos, rows, new_seals, new_keys = self._plan(head, stream, expected, build)
        try:
            self._insert(conn, lit, rows, new_seals, new_keys, None, prepared)
        except self._integrity_error as e:
            table = getattr(getattr(e, "diag", None), "table_name", None)
            if table == "ledger_events":
                raise StreamConflict(stream, spos, spos + 1) from e
            if table == "ledger_seals":
                raise _seal_in_the_way(rows) from e
            raise
        self._remember(rows, new_keys, head[4] if head else None)
        return rows

    def _writer_opened(self, conn: Any) -> None:
        conn.autocommit = True
        conn.prepare_threshold = None  # psycopg's own: its DEALLOCATE ALL would drop ours
        self._prepare(conn)

    def _writer_closing(self, conn: Any) -> None:
        if conn.pgconn.transaction_status:
            conn.rollback()
        if self._prepared_on is conn:
            self._prepared_on = None
            self._deallocate(conn)
        conn.prepare_threshold = 5  # psycopg's default
        conn.autocommit = False

    def _prepare(self, conn: Any) -> None:
        """Prepare the one-event statements on ``conn``; without them appends still work."""
        from psycopg import Error

        if self._prepare_tries >= 3:  # they keep vanishing (a pooler): do without
            return
        self._prepare_tries += 1
        try:
            self._deallocate(conn)  # left over from an earlier writer on this connection?
            conn.execute(_PG_PREPARE)
        except Error:
            if conn.pgconn.transaction_status:
                conn.rollback()
            return
        self._prepared_on = conn

    @staticmethod
    def _deallocate(conn: Any) -> None:
        names = [r[0] for r in conn.execute(
            "SELECT name FROM pg_prepared_statements WHERE name = ANY(%s)", (_PG_PREPARED,)
        )]
        if names:
            conn.execute("; ".join(f"DEALLOCATE {n}" for n in names))

    def _literals(self, conn: Any) -> _PgLiterals:
        cached = self._lits
        if cached is None or cached[0] is not conn:
            cached = self._lits = (conn, _PgLiterals(conn))
        return cached[1]

    def _prediction(self, stream: str, expected: int | None) -> tuple[Any, ...] | None:
        """The head row (as _SQL_HEAD returns it) this recorder expects, or None."""
        p = self._predicted
        if p is None or self._skip_predictions:
            return None
        head_seq, head_hash, pstream, pspos, pshash, active = p
        if pstream == stream and expected in (None, pspos):
            return (head_seq, head_hash, pspos, pshash, active)
        if expected == 0:  # a new stream, the caller says: the INSERT checks that too
            return (head_seq, head_hash, None, None, active)
        return None

    def _remember(
        self, rows: list[StoredEvent], new_keys: list[KeyRecord], active: str | None
    ) -> None:
        last = rows[-1]
        if new_keys:
            active = new_keys[-1].key_id
        self._predicted = (last.seq, last.hash, last.stream, last.stream_seq, last.hash, active)

    @staticmethod
    def _insert(
        conn: Any,
        lit: _PgLiterals,
        rows: list[StoredEvent],
        new_seals: list[Seal],
        new_keys: list[KeyRecord],
        predicted: tuple[Any, ...] | None,
        prepared: bool,
    ) -> bool:
        """Send the INSERTs and COMMIT. With ``predicted``, open the transaction and take the
        lock first, and insert only if the head is still the predicted one. Return whether
        the rows went in."""
        text, value = lit.text, lit.value
        last = rows[-1]
        seal_rows = Recorder._seal_rows(new_seals)
        parts: list[bytes] = []
        if predicted is not None:
            parts.append(_PG_BEGIN_LOCKED)
            head_seq, head_hash, spos = predicted[0], predicted[1], predicted[2] or 0
        if prepared and len(rows) == 1 and len(seal_rows) == 1 and not new_keys:
            r = last
            args = b"%d,%s,%d,%s,%s,%s,%s,%s,%s,%s,%s" % (
                r.seq, text(r.stream), r.stream_seq, text(r.type), text(r.recorded_at),
                text(r.actor), value(r.payload), b"true" if r.closes else b"false",
                value(r.prev_hash), value(r.stream_prev_hash), value(r.hash),
            )
            if predicted is None:
                parts.append(b"EXECUTE ledger_event(%s)" % args)
            else:  # the same conditions as the statement below, prepared
                parts.append(b"EXECUTE ledger_event_if(%s,%d,%s)" % (
                    args, head_seq, value(head_hash)
                ))
            seq, first_seq, key_id, sig = seal_rows[0]
            parts.append(b"EXECUTE ledger_seal_if(%d,%d,%s,%s,%s)" % (
                seq, first_seq, text(key_id), value(sig), value(r.hash)
            ))
        else:
            events = b",".join([
                b"(%d,%s,%d,%s,%s,%s,%s,%s,%s,%s,%s)" % (
                    r.seq, text(r.stream), r.stream_seq, text(r.type), text(r.recorded_at),
                    text(r.actor), value(r.payload), b"true" if r.closes else b"false",
                    value(r.prev_hash), value(r.stream_prev_hash), value(r.hash),
                )
                for r in rows
            ])
            seals_ = b",".join([
                b"(%d,%d,%s,%s)" % (seq, first_seq, text(key_id), value(sig))
                for seq, first_seq, key_id, sig in seal_rows
            ])
            keys_ = b",".join([
                b"(%s,%s,%d)" % (text(k.key_id), text(k.public_key), last.seq) for k in new_keys
            ])
            if predicted is None:
                parts.append(_PG_INSERT_EVENTS + b" VALUES " + events)
                if seals_:
                    parts.append(_PG_INSERT_SEALS + b" VALUES " + seals_)
                if keys_:
                    parts.append(_PG_INSERT_KEYS + b" VALUES " + keys_)
            else:
                first = rows[0]
                parts.append(
                    _PG_INSERT_EVENTS + b" SELECT * FROM (VALUES " + events + b") AS v"
                    b" WHERE EXISTS (SELECT 1 FROM ledger_events WHERE seq = %d AND hash = %s)"
                    b" AND NOT EXISTS (SELECT 1 FROM ledger_events WHERE seq = %d)"
                    b" AND NOT EXISTS (SELECT 1 FROM ledger_events WHERE stream = %s"
                    b" AND stream_seq = %d)"
                    % (head_seq, value(head_hash), first.seq, text(first.stream), spos + 1)
                )
                went_in = b") AS v WHERE EXISTS (SELECT 1 FROM ledger_events WHERE seq = %d" \
                    b" AND hash = %s)" % (last.seq, value(last.hash))
                if seals_:
                    parts.append(_PG_INSERT_SEALS + b" SELECT * FROM (VALUES " + seals_ + went_in)
                if keys_:
                    parts.append(_PG_INSERT_KEYS + b" SELECT * FROM (VALUES " + keys_ + went_in)
        parts.append(b"COMMIT")
        cur = conn.cursor()
        cur.execute(b"; ".join(parts))  # no parameters: sent as one simple-protocol query
        if predicted is None:
            return True
        cur.nextset()  # past BEGIN
        cur.nextset()  # past the lock: at the events INSERT
        return bool(cur.rowcount == len(rows))

    def _read_cursor(self, conn: Any, batch: int) -> Any:
        # A named (server-side) cursor: rows come ``batch`` at a time, never all at once.
        cur = conn.cursor(name="ledger_iter_events")
        cur.itersize = batch
        return cur

    def _schema_ready(self, conn: Connection) -> bool:
        names = [f"{t}_{kind}" for t in TABLES for kind in ("append_only", "no_truncate")]
        found = conn.execute(text(
            "SELECT count(*) FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid "
            "WHERE pg_table_is_visible(c.oid) AND c.relname = ANY(:tables) "
            "AND t.tgname = ANY(:names) AND t.tgenabled = 'A'"
        ), {"tables": list(TABLES), "names": names}).scalar()
        return found == len(names)

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


def _seal_in_the_way(rows: list[StoredEvent]) -> IntegrityViolation:
    """A seal row already stored where this append's seal goes: INSERTed by someone else."""
    return IntegrityViolation(
        rows[0].seq, "bad seal", f"a seal for seq {rows[-1].seq} is already stored, though no "
        "append wrote that event: refusing to append (run 'statekeeper ledger verify')",
    )


def recorder_for(url: URL) -> Recorder:
    cls = RECORDERS.get(url.get_backend_name())
    if cls is None:
        raise ConfigurationError(f"no ledger backend for {redact(url)!r}")
    return cls(url)


def _reason(e: BaseException, url: URL | None) -> str:
    """The driver's first line, without libpq's "connection failed: " and never a password."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    msg = " ".join((lines[0] if lines else type(e).__name__).split())
    for prefix in ("connection failed: ", "connection is bad: "):
        msg = msg.removeprefix(prefix)
    secrets = [url.password] if url is not None and url.password else []
    if url is not None:
        secrets += [str(v) for k, v in url.query.items() if "password" in k.lower() and v]
    for s in secrets:
        msg = msg.replace(str(s), "***")
    return msg


def _unreachable_on_connect(engine: Engine, where: str, url: URL) -> None:
    """Connecting is where an unreachable ledger shows (a closed port, a bad host, a refused
    login, a SQLite file that cannot be opened): one LedgerUnreachable on one line, raised for
    every command at the same place, instead of whatever a driver says mid-way."""
    dbapi_error: type[Exception] = engine.dialect.loaded_dbapi.Error

    @event.listens_for(engine, "do_connect")
    def _connect(dialect: Any, _record: Any, cargs: Any, cparams: Any) -> Any:
        try:
            return dialect.connect(*cargs, **cparams)
        except dbapi_error as e:
            raise LedgerUnreachable(where, _reason(e, url)) from e


def _no_pool_sharing_across_fork(engine: Engine) -> None:
    """A forked child must never use a pooled connection its parent opened (two processes on
    one socket or one SQLite handle): such a connection is discarded at checkout, as
    SQLAlchemy's pooling guide recommends for multiprocessing."""

    @event.listens_for(engine, "connect")
    def _connect(dbapi_conn: Any, record: Any) -> None:
        record.info["pid"] = os.getpid()

    @event.listens_for(engine, "checkout")
    def _checkout(dbapi_conn: Any, record: Any, proxy: Any) -> None:
        if record.info.get("pid") != os.getpid():
            record.dbapi_connection = proxy.dbapi_connection = None
            raise sa_exc.DisconnectionError("connection opened by another process")
