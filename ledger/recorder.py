"""Storage of the ledger: one small recorder interface, one class per backend.

Only this module knows SQL. Dialect quirks (how to take the chain-head lock, how to forbid
UPDATE/DELETE/TRUNCATE) live in the recorder subclasses, chosen by dialect name in
:data:`RECORDERS`. Driver errors are translated once, here, into :mod:`ledger.errors`.
"""

from __future__ import annotations

import base64
import contextlib
from collections.abc import Callable, Iterator, Sequence
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

from .chain import KeyRecord, Seal, StoredEvent
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
_EVENT_COLS = [events.c[n] for n in StoredEvent.__slots__]  # type: ignore[attr-defined]

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
        with self.translate(), self._write() as conn:
            self._lock_head(conn)
            head = conn.execute(
                select(events.c.seq, events.c.hash).order_by(events.c.seq.desc()).limit(1)
            ).first()
            shead = conn.execute(
                select(events.c.stream_seq, events.c.hash)
                .where(events.c.stream == stream)
                .order_by(events.c.stream_seq.desc())
                .limit(1)
            ).first()
            spos = shead[0] if shead else 0
            if expected is not None and spos != expected:
                raise StreamConflict(stream, expected, spos)
            active = conn.execute(
                select(keys.c.key_id).order_by(keys.c.added_seq.desc()).limit(1)
            ).scalar()
            rows, new_seals, new_keys = build(
                head[0] if head else 0,
                head[1] if head else "0" * 64,
                spos,
                shead[1] if shead else "0" * 64,
                active,
            )
            try:
                conn.execute(events.insert(), [_event_row(r) for r in rows])
            except sa_exc.IntegrityError as e:
                raise StreamConflict(stream, spos, spos + 1) from e
            conn.execute(
                seals.insert(),
                [
                    {
                        "seq": seal.seq,
                        "key_id": seal.key_id,
                        "signature": base64.b64encode(seal.signature).decode("ascii"),
                    }
                    for seal in new_seals
                ],
            )
            for k in new_keys:
                conn.execute(
                    keys.insert(),
                    {"key_id": k.key_id, "public_key": k.public_key, "added_seq": rows[-1].seq},
                )
            return rows

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
        with self.translate(), self.engine.connect() as conn:
            result = conn.execution_options(stream_results=True, yield_per=batch).execute(stmt)
            b64 = base64.b64decode
            for part in result.partitions():
                for r in part:
                    ev = StoredEvent(r[0], r[1], r[2], r[3], r[4], r[5], r[6], bool(r[7]), r[8], r[9], r[10])
                    seal = None
                    if with_seals and r[11] is not None:
                        try:
                            sig = b64(r[12])
                        except ValueError:
                            sig = b""
                        seal = Seal(r[0], r[11], sig)
                    yield ev, seal

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


def _event_row(ev: StoredEvent) -> dict[str, Any]:
    return {
        "seq": ev.seq, "stream": ev.stream, "stream_seq": ev.stream_seq, "type": ev.type,
        "recorded_at": ev.recorded_at, "actor": ev.actor, "payload": ev.payload,
        "closes": ev.closes, "prev_hash": ev.prev_hash, "stream_prev_hash": ev.stream_prev_hash,
        "hash": ev.hash,
    }


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


