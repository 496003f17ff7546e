"""The PostgreSQL recorder (production, several hosts sharing one ledger) and every PostgreSQL
quirk the ledger knows. psycopg itself is imported only where it is used: SQLAlchemy loads it
when the engine is made, so a SQLite ledger never pays for it."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, text
from sqlalchemy import exc as sa_exc

from ..chain import KeyRecord, Seal, StoredEvent
from ..errors import LedgerUnreachable
from ..url import DatabaseURL
from .base import (
    _EVENT_FIELDS,
    _HEAD_SEAL_TABLE,
    _SQL_HEAD,
    _SQL_INSERT_EVENTS,
    _SQL_INSERT_KEYS,
    _SQL_INSERT_SEALS,
    STREAM_STARTS_INDEX,
    TABLES,
    Appending,
    Builder,
    Recorder,
    driver_reason,
)
from .engine import EngineRecorder
from .urls import postgresql_url

# Arbitrary constant: the advisory lock that serialises appenders on the chain head.
PG_HEAD_LOCK = 0x5E_1ED6E2

_PG_KEY_ID = "(payload::json ->> 'key_id')"
_PG_HEAD = _SQL_HEAD.format(p="{p}", key_id=_PG_KEY_ID, **_HEAD_SEAL_TABLE).encode()
_PG_EVENT_ARGS = "bigint, text, bigint, text, text, text, text, boolean, text, text, text"
_PG_EVENT_VALUES = ", ".join(f"${i}" for i in range(1, 12))
_PG_PREPARE = "; ".join([
    "PREPARE ledger_head(text) AS "
    + _SQL_HEAD.format(p="$1", key_id=_PG_KEY_ID, **_HEAD_SEAL_TABLE),
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


class PostgresRecorder(EngineRecorder):
    """Production backend. Appenders on any host serialise on a transaction advisory lock."""

    dialect_name = "postgresql"
    schemes = frozenset({"postgresql", "postgres", "postgresql+psycopg", "postgresql+psycopg3"})
    placeholder = "%s"

    @classmethod
    def normalize_url(
        cls, u: DatabaseURL, base_dir: Path | None, what: str, shown: str
    ) -> DatabaseURL:
        return postgresql_url(u, base_dir, what, shown)

    @contextlib.contextmanager
    def translate(
        self, job: Appending | None = None, *, connecting: bool = False
    ) -> Iterator[None]:
        try:
            yield
        except self._driver_error as e:  # psycopg.Error (imported by SQLAlchemy, not here)
            if connecting:  # a closed port, a bad host, a refused login
                raise LedgerUnreachable(self.display_url, driver_reason(e, self.url)) from e
            if job is not None and isinstance(e, self._integrity_error):
                refused = job.refused(getattr(getattr(e, "diag", None), "table_name", None))
                if refused is not None:
                    raise refused from e
            raise self._operational(e) from e
        except sa_exc.SQLAlchemyError as e:
            raise self._operational(e) from e

    _side_exists_sql = "SELECT to_regclass({p}) IS NOT NULL"

    def _side_begin(self, cur: Any, exclusive: str | None) -> None:
        # psycopg opens the transaction at the first statement (READ COMMITTED: after the
        # lock, each statement sees what the previous holder committed).
        if exclusive:
            cur.execute(f"LOCK TABLE {exclusive} IN EXCLUSIVE MODE")

    def _create_engine(self) -> Engine:
        return create_engine(self.url.sqlalchemy(), pool_pre_ping=False,
                             connect_args={"connect_timeout": 10})

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

    def __init__(self, url: DatabaseURL, shown: str | None = None) -> None:
        super().__init__(url, shown)
        self._lits: tuple[Any, _PgLiterals] | None = None
        self._prepared_on: Any = None  # the connection holding our prepared statements
        self._prepare_tries = 0
        # (head seq, head hash, stream, stream seq, stream hash, active key) as of this
        # recorder's last append: a prediction, checked by the database, never trusted.
        self._predicted: tuple[int, str, str, int, str, str | None] | None = None
        self._skip_predictions = 0  # after a wrong prediction (other writers), read first

    def _append(
        self, conn: Any, job: Appending, expected: int | None, build: Builder
    ) -> list[StoredEvent]:
        from psycopg.errors import InvalidSqlStatementName

        # BEGIN and COMMIT are sent with the statements they enclose: autocommit mode (the
        # appenders' own connection is kept in it; a pooled one is switched for the append).
        pooled = not conn.autocommit
        if pooled:
            conn.autocommit = True
        try:
            try:
                return self._append_once(conn, job, expected, build)
            except InvalidSqlStatementName:
                # Our prepared statements are gone; the transaction was aborted before its
                # COMMIT, so nothing was written. Prepare them again (or do without).
                if conn.pgconn.transaction_status:
                    conn.rollback()
                self._prepared_on = None
                self._prepare(conn)
                return self._append_once(conn, job, expected, build)
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
        self, conn: Any, job: Appending, expected: int | None, build: Builder
    ) -> list[StoredEvent]:
        stream = job.stream
        lit = self._literals(conn)
        prepared = conn is self._prepared_on
        head = self._prediction(stream, expected)
        if head is not None:
            # No conflict_at: the INSERT checks the positions itself (a unique violation on
            # the events here is not another writer's append, which finds the INSERT empty).
            job.conflict_at = None
            _, rows, new_seals, new_keys = self._plan(head, job, expected, build)
            went_in = self._insert(conn, lit, rows, new_seals, new_keys, head, prepared)
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
        spos, rows, new_seals, new_keys = self._plan(head, job, expected, build)
        job.conflict_at = spos
        self._insert(conn, lit, rows, new_seals, new_keys, None, prepared)
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
        starts = conn.execute(text("SELECT to_regclass(:i) IS NOT NULL"),
                              {"i": STREAM_STARTS_INDEX}).scalar()
        return found == len(names) and bool(starts)

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

