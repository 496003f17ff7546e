"""The recorder interface and what every backend shares: the statements (SQL text, with the
driver's placeholder), the append under the chain-head lock, the streaming reads.

A backend (``sqlite.py`` on the sqlite3 module, ``postgres.py`` on SQLAlchemy's pool and
psycopg, through ``engine.py``) is a :class:`Recorder` subclass that supplies the hooks at
the end of the class: its connections, the schema, the append itself on the driver
connection, the URLs it accepts, and :meth:`Recorder.translate`, the one place its driver's
errors become :mod:`ledger.errors`. Nothing here imports SQLAlchemy.
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

from ..chain import KeyRecord, Seal, StoredEvent, stored_event
from ..errors import (
    ConfigurationError,
    ConstraintViolation,
    IntegrityViolation,
    LedgerError,
    LedgerUnreachable,
    OperationalError,
    StreamConflict,
)
from ..url import DatabaseURL, redact

# Where each stream starts (its first event), read from the events themselves: "the latest
# run", "the last N runs", "every run" without a pass over every event. Partial, so an
# append writes it only for a stream's first event (1 in ~25 of a run's events). Derived by
# the database from the append-only rows: nothing can edit it without editing the events.
STREAM_STARTS_INDEX = "ledger_events_stream_starts"
_SQL_STREAM_STARTS_INDEX = (
    f"CREATE INDEX IF NOT EXISTS {STREAM_STARTS_INDEX} ON ledger_events (stream, seq) "
    "WHERE stream_seq = 1"
)

TABLES = ("ledger_events", "ledger_seals", "ledger_keys")
_EVENT_FIELDS: tuple[str, ...] = StoredEvent.__slots__
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
    #: The driver's placeholder in the statements (``{p}`` in the SQL text here).
    placeholder = "?"

    def __init__(self, url: DatabaseURL, shown: str | None = None) -> None:
        self.url = url
        self.display_url = shown if shown is not None else redact(url)
        self._open()
        self._driver_error, self._integrity_error = self._driver_errors()
        self._writer_lock = threading.Lock()
        self._writer_conn: Any = None  # the handle appends run on (see _new_writer)
        self._writer_pid = 0
        self._iter_sql: dict[tuple[bool, ...], tuple[str, list[str]]] = {}
        self._inherited: list[Any] = []
        p = self.placeholder
        self._sql = {name: sql.replace("{p}", p) for name, sql in _SQL_READS.items()}

    def _new_writer(self) -> Any:
        """Open the connection appends run on and keep it from one append to the next (a
        pool's checkout and reset cost more than an append's own statements). Another
        thread appending at the same moment gets a pooled one (see append)."""
        if self._writer_conn is not None:  # the parent's, in a forked child: never used
            self._inherited.append(self._writer_conn)  # here, nor closed (GC would close it)
        self._writer_conn = None
        handle = self._writer_checkout()
        self._writer_opened(self._dbapi(handle))
        self._writer_conn = handle
        self._writer_pid = os.getpid()
        return handle

    def _operational(self, e: Exception) -> OperationalError:
        """A driver's error as the ledger reports it: on one line, after the URL without its
        password."""
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        return OperationalError(f"ledger {self.display_url}: {msg}")

    def _rows(self, name: str, args: tuple[Any, ...] = (), sql: str | None = None) -> list[Any]:
        """All rows of one of the read statements (``_SQL_READS``), on a pooled connection."""
        with self.translate(), self._driver() as conn:
            cur = conn.cursor()
            try:
                cur.execute(sql if sql is not None else self._sql[name], args)
                return list(cur.fetchall())
            finally:
                cur.close()

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
                handle = self._writer_conn
                if handle is None or self._writer_pid != os.getpid():
                    handle = self._new_writer()
                try:
                    return self._append(self._dbapi(handle), job, expected, build)
                except self._driver_error as e:
                    if self._writer_broken(handle, e):
                        self._writer_conn = None
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
        rows = self._rows("head")
        return (rows[0][0], rows[0][1]) if rows else (0, "0" * 64)

    def stream_position(self, stream: str) -> int:
        rows = self._rows("stream_position", (stream,))
        return int(rows[0][0]) if rows else 0

    def list_keys(self) -> list[KeyRecord]:
        return [KeyRecord(r[0], r[1]) for r in self._rows("keys")]

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
        b64 = base64.b64decode
        make = stored_event
        with self.translate(), self._driver() as conn:
            cached = self._iter_sql.get(shape)
            if cached is None:
                cached = self._iter_sql[shape] = self._compile_iter(conn, *shape)
            sql, names = cached
            values: dict[str, Any] = {"start": start, "stop": stop, "stream": stream}
            if stream_prefix is not None:
                values["prefix"] = _like_prefix(stream_prefix)
            args = tuple(values[k] for k in names)
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
        self, conn: Any, with_seals: bool, stop: bool, stream: bool, prefix: bool
    ) -> tuple[str, list[str]]:
        """The SELECT of one shape of ``iter_events``, made once per recorder: its SQL and
        its parameters' names in order."""
        p = self.placeholder
        cols = ", ".join(f"e.{c}" for c in _EVENT_FIELDS)
        src = "ledger_events AS e"
        if with_seals:
            if self._seals_in_rows(conn):
                cols += ", e.seal_key_id, e.seal_signature, e.seal_first"
            else:
                cols += ", s.key_id, s.signature, s.first_seq"
                src += " LEFT JOIN ledger_seals AS s ON s.seq = e.seq"
        where, names = [f"e.seq >= {p}"], ["start"]
        if stop:
            where.append(f"e.seq <= {p}")
            names.append("stop")
        if stream:
            where.append(f"e.stream = {p}")
            names.append("stream")
        if prefix:
            where.append(f"e.stream LIKE {p} ESCAPE '/'")
            names.append("prefix")
        # One stream's events come in stream_seq order, the same as seq order for any stream
        # the appender wrote (the verifier checks both), so that the (stream, stream_seq)
        # index serves the read: ordering by seq made it a scan of the whole table.
        order = "e.stream_seq" if stream else "e.seq"
        return f"SELECT {cols} FROM {src} WHERE {' AND '.join(where)} ORDER BY {order}", names

    def orphan_seal(self, after: int = 0) -> int | None:
        """The first seal after ``after`` that belongs to no event (a seal cannot float free)."""
        rows = self._rows("orphan_seal", (after,))
        return int(rows[0][0]) if rows else None

    def stream_head(self, stream: str, at_most: int) -> tuple[int, str] | None:
        """(stream_seq, hash) of the stream's last event at or before seq ``at_most``."""
        rows = self._rows("stream_head", (stream, at_most))
        return (int(rows[0][0]), str(rows[0][1])) if rows else None

    def stream_starts(
        self, prefix: str, *, upto: int | None = None, after: int = 0, last: int | None = None
    ) -> list[tuple[str, int]]:
        """(stream, seq of its first event) of every stream under ``prefix`` that started
        after seq ``after`` and at or before ``upto``, in seq order; ``last``: only the last
        that many. Served by the partial index of stream starts."""
        p = self.placeholder
        # stream_seq = 1 as a literal: a partial index is used only for the predicate it names,
        # never for a bound parameter.
        sql = "SELECT stream, seq FROM ledger_events WHERE stream_seq = 1"
        args: list[Any] = []
        if prefix:
            if self.binary_ranges:  # a range the partial index serves (exact in BINARY)
                sql += f" AND stream >= {p} AND stream < {p}"
                args += [prefix, prefix[:-1] + chr(ord(prefix[-1]) + 1)]
            else:  # a linguistic collation may sort '/' anywhere: no range, LIKE
                sql += f" AND stream LIKE {p} ESCAPE '/'"
                args.append(_like_prefix(prefix))
        if last is not None:
            # The last few: walking back from the head finds them after a few runs' events.
            if upto is not None:
                sql += f" AND seq <= {p}"
                args.append(upto)
            sql += f" AND seq > {p} ORDER BY seq DESC LIMIT {p}"
            args += [after, last]
        rows = [(str(r[0]), int(r[1])) for r in self._rows("", tuple(args), sql)]
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
        p = self.placeholder
        out: dict[str, int] = {}
        for i in range(0, len(names), 500):
            part = names[i:i + 500]
            sql = (f"SELECT stream, max(stream_seq) FROM ledger_events WHERE stream IN "
                   f"({', '.join([p] * len(part))}) AND seq <= {p} GROUP BY stream")
            for s, pos in self._rows("", (*part, upto), sql):
                out[str(s)] = int(pos)
        return out

    def streams(self, prefix: str = "") -> list[tuple[str, int, str, str]]:
        """(stream, events, first recorded_at, last recorded_at) for streams under ``prefix``."""
        return [(r[0], r[1], r[2], r[3]) for r in self._rows("streams", (_like_prefix(prefix),))]

    def dispose(self) -> None:
        with self._writer_lock:
            handle, self._writer_conn = self._writer_conn, None
            if handle is not None and self._writer_pid == os.getpid():
                with contextlib.suppress(Exception):  # a broken connection is dropped anyway
                    self._writer_closing(self._dbapi(handle))
                self._writer_release(handle)
        self._close()

    # -- backend hooks -----------------------------------------------------------------------
    @abstractmethod
    def translate(
        self, job: Appending | None = None, *, connecting: bool = False
    ) -> contextlib.AbstractContextManager[None]:
        """The one place this backend's driver errors become ledger errors, chained (``raise
        ... from e``): while ``connecting``, :class:`LedgerUnreachable`; an integrity error
        of ``job``'s INSERTs, what :meth:`Appending.refused` says; anything else,
        :class:`OperationalError` (see :meth:`_operational`)."""

    @classmethod
    @abstractmethod
    def normalize_url(
        cls, u: DatabaseURL, base_dir: Path | None, what: str, shown: str
    ) -> DatabaseURL:
        """``u`` (one of :attr:`schemes`) checked and in the form the recorder opens;
        ``shown`` is how messages show the URL."""

    @classmethod
    def database_file(cls, u: Any) -> Path | None:
        """The file a normalised URL of this backend names; None for a server database."""
        return None

    @abstractmethod
    def ensure_schema(self) -> None:
        """Create what is missing of the tables, triggers and indexes, under the chain-head
        lock; refuse a format this version cannot read."""

    @abstractmethod
    def exists(self) -> bool:
        """Whether the ledger's tables are there (refusing a format this cannot read)."""

    # -- side tables: other code's bookkeeping in the ledger's database --------------------
    @contextlib.contextmanager
    def side_transaction(self, *, exclusive: str | None = None) -> Iterator[SideTransaction]:
        """One transaction on a pooled connection of the ledger's database, for the tables
        other code keeps there (statekeeper's lease and run index): never the ledger's own.
        Committed when the block ends, rolled back if it raises. ``exclusive``: a table whose
        other writers wait until this transaction ends, taken before the first statement
        (SQLite: the database's write lock at BEGIN; PostgreSQL: a table lock that readers
        pass). A key or constraint refusing a row raises :class:`ConstraintViolation`, any
        other driver error :class:`OperationalError`, both chained."""
        with self.translate(), self._driver() as conn:
            cur = conn.cursor()
            try:
                try:
                    self._side_begin(cur, exclusive)
                    yield SideTransaction(cur, self.placeholder)
                    conn.commit()
                except self._integrity_error as e:
                    raise ConstraintViolation(str(self._operational(e))) from e
            finally:
                cur.close()

    def ensure_side_tables(self, tables: dict[str, str]) -> None:
        """Create those of ``tables`` (name -> CREATE TABLE statement) that are missing. A
        table already there costs no DDL (a role without CREATE rights may use it); two
        processes creating one at once: the loser finds it made."""
        for attempt in (1, 2):
            try:
                with self.side_transaction() as tx:
                    for name, ddl in tables.items():
                        if not tx.execute(self._side_exists_sql, (name,))[0][0]:
                            tx.execute(ddl)
                return
            except LedgerUnreachable:
                raise  # nothing raced: the database is not there
            except (ConstraintViolation, OperationalError):
                if attempt == 2:
                    raise

    #: A statement with one placeholder (a table name) whose one value is true if it exists.
    _side_exists_sql = ""

    @abstractmethod
    def _side_begin(self, cur: Any, exclusive: str | None) -> None:
        """Open a side transaction on ``cur``, holding ``exclusive``'s write lock if given."""

    @abstractmethod
    def _open(self) -> None:
        """Set up the backend's connections (none need be opened yet)."""

    @abstractmethod
    def _driver_errors(self) -> tuple[type[Exception], type[Exception]]:
        """The driver's (Error, IntegrityError)."""

    @abstractmethod
    def _driver(self) -> contextlib.AbstractContextManager[Any]:
        """A pooled driver connection for one read or one append from a second thread;
        returned clean (rolled back) afterwards, discarded if the driver says it is broken."""

    @abstractmethod
    def _writer_checkout(self) -> Any:
        """A handle on a connection of the appenders' own, kept between appends."""

    def _dbapi(self, handle: Any) -> Any:
        """The driver connection of a writer handle."""
        return handle

    @abstractmethod
    def _writer_broken(self, handle: Any, e: Exception) -> bool:
        """After ``e`` on the writer: whether its connection is gone (then discarded)."""

    @abstractmethod
    def _writer_release(self, handle: Any) -> None:
        """Close the writer's connection (or give it back)."""

    @abstractmethod
    def _close(self) -> None:
        """Close every pooled connection."""

    def _seals_in_rows(self, conn: Any) -> bool:
        """Whether the seals are stored in the event rows (SQLite layout 2)."""
        return False

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


class SideTransaction:
    """The statements of one :meth:`Recorder.side_transaction`: SQL text with ``{p}`` for the
    driver's placeholder, values passed apart."""

    __slots__ = ("_cur", "_p")

    def __init__(self, cur: Any, placeholder: str) -> None:
        self._cur = cur
        self._p = placeholder

    def execute(self, sql: str, args: tuple[Any, ...] | list[Any] = ()) -> list[tuple[Any, ...]]:
        """Run one statement; its rows (none for a statement that returns none)."""
        cur = self._cur
        cur.execute(sql.replace("{p}", self._p), tuple(args))
        return [tuple(r) for r in cur.fetchall()] if cur.description else []

    def executemany(self, sql: str, rows: list[tuple[Any, ...]]) -> None:
        if rows:
            self._cur.executemany(sql.replace("{p}", self._p), rows)


def _like_prefix(prefix: str) -> str:
    """A LIKE pattern (ESCAPE '/') matching the strings that start with ``prefix``."""
    return prefix.replace("/", "//").replace("%", "/%").replace("_", "/_") + "%"


# The reads every backend runs as they are (``{p}``: the driver's placeholder).
_SQL_READS = {
    "head": "SELECT seq, hash FROM ledger_events ORDER BY seq DESC LIMIT 1",
    "stream_position": "SELECT stream_seq FROM ledger_events WHERE stream = {p} "
    "ORDER BY stream_seq DESC LIMIT 1",
    "keys": "SELECT key_id, public_key FROM ledger_keys ORDER BY added_seq",
    "orphan_seal": "SELECT s.seq FROM ledger_seals AS s WHERE s.seq > {p} AND NOT EXISTS "
    "(SELECT 1 FROM ledger_events AS e WHERE e.seq = s.seq) ORDER BY s.seq LIMIT 1",
    "stream_head": "SELECT stream_seq, hash FROM ledger_events WHERE stream = {p} "
    "AND seq <= {p} ORDER BY stream_seq DESC LIMIT 1",
    "streams": "SELECT stream, count(*), min(recorded_at), max(recorded_at) FROM ledger_events "
    "WHERE stream LIKE {p} ESCAPE '/' GROUP BY stream ORDER BY min(seq)",
}


def seal_in_the_way(rows: list[StoredEvent]) -> IntegrityViolation:
    """A seal row already stored where this append's seal goes: INSERTed by someone else."""
    return IntegrityViolation(
        rows[0].seq, "bad seal", f"a seal for seq {rows[-1].seq} is already stored, though no "
        "append wrote that event: refusing to append (run 'statekeeper ledger verify')",
    )


def format_1_refused(shown: str) -> ConfigurationError:
    """A format-1 ledger (seals without extents): its seals cannot tell an event slipped in at
    the head from a genuine one, so nothing here may read or extend it."""
    return ConfigurationError(
        f"ledger {shown}: format 1 (statekeeper 0.1, seals without extents) is not supported: "
        "export it with statekeeper 0.1 for the record and start a new ledger "
        "(docs/architecture.md, 'Ledger format')"
    )


def driver_reason(e: BaseException, url: DatabaseURL | None) -> str:
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
