"""The recorder interface and what every backend shares: the tables, the statements of the
append path, the append under the chain-head lock, the streaming reads.

A backend (``sqlite.py``, ``postgres.py``) is a :class:`Recorder` subclass that supplies the
hooks at the end of the class: how to connect, how to take the chain-head lock, how to forbid
UPDATE/DELETE/TRUNCATE, the append itself on the driver connection, the URLs it accepts, and
:meth:`Recorder.translate`, the one place its driver's errors become :mod:`ledger.errors`.
"""

from __future__ import annotations

import base64
import contextlib
import operator
import os
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Connection,
    Engine,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    bindparam,
    event,
    literal_column,
    select,
)
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import URL

from ..chain import KeyRecord, Seal, StoredEvent, stored_event
from ..errors import (
    ConfigurationError,
    IntegrityViolation,
    LedgerError,
    OperationalError,
    StreamConflict,
)
from ..url import redact

metadata = MetaData()


class SeqType(BigInteger):
    """The type of the ``seq`` keys: a 64-bit integer, which a backend may spell its own way
    in DDL (SQLite: see ledger/recorders/sqlite.py)."""

    inherit_cache = True


_SEQ = SeqType()

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
    # No index on recorded_at (ledgers made before issue 15 have one, unused): nothing reads
    # by time, and every index is one more B-tree page written on every commit.
)

# Where each stream starts (its first event), read from the events themselves: "the latest
# run", "the last N runs", "every run" without a pass over every event. Partial, so an
# append writes it only for a stream's first event (1 in ~25 of a run's events). Derived by
# the database from the append-only rows: nothing can edit it without editing the events.
STREAM_STARTS_INDEX = "ledger_events_stream_starts"
_SQL_STREAM_STARTS_INDEX = (
    f"CREATE INDEX IF NOT EXISTS {STREAM_STARTS_INDEX} ON ledger_events (stream, seq) "
    "WHERE stream_seq = 1"
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
    "h.closes, {tip_seal}, "
    "CASE WHEN h.type = 'ledger.key_rotated' THEN h.payload END "
    "FROM (SELECT 1 AS one) AS x "
    "LEFT JOIN (SELECT seq, hash, closes, type, payload{head_cols} FROM ledger_events "
    "ORDER BY seq DESC LIMIT 1) AS h ON TRUE{seal_join}"
)
# Where the head's seal is: the seal table (layout 1), or the head's own row (layout 2,
# SQLite: see ledger/recorders/sqlite.py).
_HEAD_SEAL_TABLE = {
    "tip_seal": "s.first_seq, s.key_id, s.signature", "head_cols": "",
    "seal_join": " LEFT JOIN ledger_seals AS s ON s.seq = h.seq",
}
_HEAD_SEAL_IN_ROW = {
    "tip_seal": "h.seal_first, h.seal_key_id, h.seal_signature",
    "head_cols": ", seal_first, seal_key_id, seal_signature", "seal_join": "",
}
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
# returns the rows to insert: events, seals, keys. It runs once per attempt, on the head the
# recorder read under the chain-head lock or, on PostgreSQL, on the head it predicted from its
# own last append (then the INSERTs are conditional, checked under the lock, on that head
# still being the head: if it is not, nothing is written and the builder runs again on the
# head read). Either way what it returns is committed only on the head it was given.
Builder = Callable[
    [int, str, int, str, str | None, Tip],
    tuple[list[StoredEvent], list[Seal], list[KeyRecord]],
]


class Appending:
    """How far an append has got: what a driver's refusal of one of its INSERTs means.

    ``rows``: the events being inserted (a seal in the way names them). ``conflict_at``: the
    stream position read under the lock, where a unique violation on the events means another
    writer took the next position (None on PostgreSQL's predicted path, whose INSERT checks
    the positions itself). ``table``: the table being inserted into, where the driver does not
    say which one refused (SQLite)."""

    __slots__ = ("conflict_at", "rows", "stream", "table")

    def __init__(self, stream: str) -> None:
        self.stream = stream
        self.rows: list[StoredEvent] | None = None
        self.conflict_at: int | None = None
        self.table: str | None = None

    def refused(self, table: str | None) -> LedgerError | None:
        """The ledger error an integrity error on ``table`` means, or None (operational)."""
        if table == "ledger_events" and self.conflict_at is not None:
            return StreamConflict(self.stream, self.conflict_at, self.conflict_at + 1)
        if table == "ledger_seals" and self.rows:
            return seal_in_the_way(self.rows)
        return None

class Recorder(ABC):
    """The storage of one ledger. The public methods are the interface the store uses (and
    tests/test_ledger_recorder_contract.py checks on every backend); a backend implements the
    hooks at the end."""

    #: The URL backend name this class is registered under (``ledger.recorders.RECORDERS``).
    dialect_name = ""
    #: The URL schemes (driver names) an operator may write for this backend.
    schemes: frozenset[str] = frozenset()
    #: Whether text compares byte by byte (SQLite's BINARY), so a prefix is a range.
    binary_ranges = False

    def __init__(self, url: URL, shown: str | None = None) -> None:
        self.url = url
        self.display_url = shown if shown is not None else redact(url)
        self.engine = self._create_engine()
        _no_pool_sharing_across_fork(self.engine)
        self._unreachable_on_connect()
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

    def _unreachable_on_connect(self) -> None:
        """Connecting is where an unreachable ledger shows (a closed port, a bad host, a
        refused login, a SQLite file that cannot be opened): one LedgerUnreachable on one
        line, raised for every command at the same place, instead of whatever a driver says
        mid-way."""

        @event.listens_for(self.engine, "do_connect")
        def _connect(dialect: Any, _record: Any, cargs: Any, cparams: Any) -> Any:
            with self.translate(connecting=True):
                return dialect.connect(*cargs, **cparams)

    def _operational(self, e: Exception) -> OperationalError:
        """A driver's or SQLAlchemy's error as the ledger reports it: on one line, after the
        URL without its password."""
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
            self._create_schema(conn)

    def _create_schema(self, conn: Connection) -> None:
        """Create what is missing of the tables, triggers and indexes (in the transaction
        that holds the chain-head lock); refuse a format this version cannot read."""
        metadata.create_all(conn, checkfirst=True)
        self._check_format(conn)
        self._install_triggers(conn)
        conn.exec_driver_sql(_SQL_STREAM_STARTS_INDEX)

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
        """Append what ``build`` returns to ``stream`` in one transaction, serialised with every
        other appender on the chain-head lock; return the events as stored.

        ``build`` is given the chain head, the stream head and the active key (read under the
        lock, or predicted: see :data:`Builder`) and hashes and seals; the rows are inserted
        and committed. ``expected``: the stream position the caller saw, or None."""
        job = Appending(stream)
        lock = self._writer_lock
        with self.translate(job):
            if not lock.acquire(blocking=False):  # another thread is appending: a pooled one
                with self._driver() as conn:
                    return self._append(conn, job, expected, build)
            try:
                raw = self._writer_conn
                if raw is None or self._writer_pid != os.getpid():
                    raw = self._new_writer()
                try:
                    return self._append(raw.driver_connection, job, expected, build)
                except self._driver_error as e:
                    if self.engine.dialect.is_disconnect(e, raw.driver_connection, None):  # type: ignore[arg-type]
                        self._writer_conn = None
                        raw.invalidate(e)
                    raise
            finally:
                lock.release()

    @staticmethod
    def _plan(
        head: tuple[Any, ...] | None, job: Appending, expected: int | None, build: Builder
    ) -> tuple[int, list[StoredEvent], list[Seal], list[KeyRecord]]:
        """Check ``expected`` against the head row (as _SQL_HEAD returns it) and build on it;
        ``job`` learns the rows."""
        head_seq, head_hash, spos, shash, active = head[:5] if head else (None,) * 5
        spos = spos or 0
        if expected is not None and spos != expected:
            raise StreamConflict(job.stream, expected, spos)
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
        job.rows = rows
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

    def stream_starts(
        self, prefix: str, *, upto: int | None = None, after: int = 0, last: int | None = None
    ) -> list[tuple[str, int]]:
        """(stream, seq of its first event) of every stream under ``prefix`` that started
        after seq ``after`` and at or before ``upto``, in seq order; ``last``: only the last
        that many. Served by the partial index of stream starts."""
        # stream_seq = 1 as a literal: a partial index is used only for the predicate it names,
        # never for a bound parameter.
        stmt = select(events.c.stream, events.c.seq).where(
            events.c.stream_seq == literal_column("1"))
        if prefix:
            if self.binary_ranges:  # a range the partial index serves (exact in BINARY)
                stmt = stmt.where(events.c.stream >= prefix,
                                  events.c.stream < prefix[:-1] + chr(ord(prefix[-1]) + 1))
            else:  # a linguistic collation may sort '/' anywhere: no range, LIKE
                stmt = stmt.where(events.c.stream.startswith(prefix, autoescape=True))
        if last is not None:
            # The last few: walking back from the head finds them after a few runs' events.
            if upto is not None:
                stmt = stmt.where(events.c.seq <= upto)
            stmt = stmt.where(events.c.seq > after).order_by(events.c.seq.desc()).limit(last)
        with self.translate(), self.engine.connect() as conn:
            rows = [(str(r[0]), int(r[1])) for r in conn.execute(stmt)]
        if last is not None:
            return rows[::-1]
        # All of them, from the partial index alone: a condition on seq in the statement
        # would make SQLite walk the rowid range instead (every event), so it is applied here.
        hi = upto if upto is not None else 1 << 62
        rows = [r for r in rows if after < r[1] <= hi]
        rows.sort(key=operator.itemgetter(1))
        return rows

    def stream_positions(self, names: list[str], upto: int) -> dict[str, int]:
        """Each named stream's last stream_seq at or before seq ``upto`` (absent: none)."""
        from sqlalchemy import func

        out: dict[str, int] = {}
        with self.translate(), self.engine.connect() as conn:
            for i in range(0, len(names), 500):
                for s, pos in conn.execute(
                    select(events.c.stream, func.max(events.c.stream_seq))
                    .where(events.c.stream.in_(names[i:i + 500]), events.c.seq <= upto)
                    .group_by(events.c.stream)
                ):
                    out[str(s)] = int(pos)
        return out

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

    # -- backend hooks -----------------------------------------------------------------------
    @abstractmethod
    def translate(
        self, job: Appending | None = None, *, connecting: bool = False
    ) -> contextlib.AbstractContextManager[None]:
        """The one place this backend's driver errors (and SQLAlchemy's) become ledger errors,
        chained (``raise ... from e``): while ``connecting``, :class:`LedgerUnreachable`; an
        integrity error of ``job``'s INSERTs, what :meth:`Appending.refused` says; anything
        else, :class:`OperationalError` (see :meth:`_operational`)."""

    @classmethod
    @abstractmethod
    def normalize_url(cls, u: URL, base_dir: Path | None, what: str, shown: str) -> URL:
        """``u`` (one of :attr:`schemes`) checked and in the form the engine is made from;
        ``shown`` is how messages show the URL."""

    @classmethod
    def database_file(cls, u: URL) -> Path | None:
        """The file a normalised URL of this backend names; None for a server database."""
        return None

    @abstractmethod
    def _create_engine(self) -> Engine: ...

    @abstractmethod
    def _lock_head(self, conn: Connection) -> None: ...

    @abstractmethod
    def _install_triggers(self, conn: Connection) -> None: ...

    def _schema_ready(self, conn: Connection) -> bool:
        """Whether tables and triggers are all in place, so that opening needs no DDL."""
        return False

    def _write(self) -> contextlib.AbstractContextManager[Connection]:
        return self.engine.begin()

    @abstractmethod
    def _append(
        self, conn: Any, job: Appending, expected: int | None, build: Builder
    ) -> list[StoredEvent]:
        """The append on the driver connection ``conn`` (see :meth:`append`); driver errors
        propagate, :meth:`translate` turns them into ledger errors."""

    def _writer_opened(self, conn: Any) -> None:  # noqa: B027 - optional hook
        """Set up the appenders' connection once."""

    def _writer_closing(self, conn: Any) -> None:  # noqa: B027 - optional hook
        """Undo _writer_opened before the connection goes back to the pool."""

    def _read_cursor(self, conn: Any, batch: int) -> Any:
        """A cursor that streams a long result (the driver's default for SQLite)."""
        return conn.cursor()

def seal_in_the_way(rows: list[StoredEvent]) -> IntegrityViolation:
    """A seal row already stored where this append's seal goes: INSERTed by someone else."""
    return IntegrityViolation(
        rows[0].seq, "bad seal", f"a seal for seq {rows[-1].seq} is already stored, though no "
        "append wrote that event: refusing to append (run 'statekeeper ledger verify')",
    )


def driver_reason(e: BaseException, url: URL | None) -> str:
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
