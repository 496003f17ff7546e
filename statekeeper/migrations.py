"""Tracked SQL migrations on the target database: load, validate, apply, tag, roll back, lock.

A migrations directory holds ``.sql`` files applied in natural file-name order (``2_x`` before
``10_y``); the id of a migration is its file name without ``.sql``. A line
``-- statekeeper:down`` splits a file into its up part (above) and its down part (below); a
first line ``-- statekeeper:no-transaction`` runs it outside a transaction. Directives match
in any case; a comment line whose first word is ``statekeeper`` but that is not exactly a
directive is refused, as are NUL bytes, invalid UTF-8 and (in a transactional file) statements
that begin or end a transaction: all when the files are loaded, before anything runs.

What is applied is recorded in the target database, in ``statekeeper_changelog`` (one row per
applied migration, with the sha256 of its up part) and ``statekeeper_tags``. On PostgreSQL a
migration and its changelog row commit in one transaction; on SQLite likewise (SQLite DDL is
transactional). The applied migrations are always a prefix of the directory in file order:
``validate`` refuses an applied file that changed or disappeared, and a pending file that sorts
before an applied one.

Library only: nothing here prints or exits; errors are :mod:`statekeeper.errors`.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import socket
import sqlite3
import time
import unicodedata
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql as pgsql
from psycopg.pq import ExecStatus, TransactionStatus

from .errors import (
    ConfigError,
    IrreversibleError,
    LockHeld,
    MigrationError,
    TargetError,
    ValidationError,
)
from .sqltext import (
    is_transaction_control,
    leading_words,
    pg_scan,
    pg_statements,
    skip_space_and_comments,
    sqlite_inner_semicolons,
    sqlite_statements,
)
from .targets import Target, first_line

CHANGELOG_TABLE = "statekeeper_changelog"
TAGS_TABLE = "statekeeper_tags"
DOWN_MARKER = "-- statekeeper:down"
NO_TRANSACTION_MARKER = "-- statekeeper:no-transaction"
DIRECTIVES = (DOWN_MARKER, NO_TRANSACTION_MARKER)
#: PostgreSQL advisory lock key (two int4: ``pg_locks.classid``, ``objid``; ``objsubid`` 2).
ADVISORY_LOCK_KEY = (int.from_bytes(b"stkp", "big"), 1)
LOCK_FILE_SUFFIX = ".statekeeper-lock"

_TAG_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/@+-]{0,199}")
_DIGITS = re.compile(r"(\d+)")

Clock = Callable[[], datetime]
Hook = Callable[[], None]


def utc_now() -> datetime:
    return datetime.now(UTC)


def format_ts(t: datetime) -> str:
    """UTC, microseconds, ``Z``: the text stored in the changelog (same form as the ledger)."""
    if t.tzinfo is None:
        t = t.replace(tzinfo=UTC)
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def natural_key(name: str) -> tuple[Any, ...]:
    """Sort key that orders digit runs by value: ``2_x`` < ``10_x``; ties broken by the name."""
    parts: list[tuple[int, int, str]] = []
    for chunk in _DIGITS.split(name):
        if not chunk:
            continue
        if chunk.isdigit():
            parts.append((0, int(chunk), ""))
        else:
            parts.append((1, 0, chunk.casefold()))
    return (tuple(parts), name)


def _has_sql(text: str, backend: str) -> bool:
    return skip_space_and_comments(text, 0, nested=backend != "sqlite") < len(text)


# -- files -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Migration:
    """One migration file. ``up``/``down`` are the exact texts sent to the server; positions
    in errors count characters from the start of the file (``down_offset`` is where ``down``
    starts)."""

    id: str
    path: Path
    up: str
    down: str | None
    checksum: str
    no_transaction: bool = False
    down_offset: int = 0

    @property
    def reversible(self) -> bool:
        return self.down is not None


def check_tag_name(name: object, what: str = "tag name") -> str:
    """``name`` if it is a valid tag name, else ConfigError naming ``what`` (the same rule for
    ``migrate tag`` and for ``--to``/``--from``, which become tags)."""
    if not isinstance(name, str) or not _TAG_NAME.fullmatch(name):
        raise ConfigError(
            f"{what} {name!r} is not valid (letters, digits and . _ : / @ + -, "
            f"starting with a letter or digit, at most 200 characters)"
        )
    return name


def checksum_of(up: str) -> str:
    return hashlib.sha256(up.encode("utf-8")).hexdigest()


def _squash(s: str) -> str:
    """Letters and digits only, compatibility-normalised and case-folded: what a directive
    line reads as to a human (``-- Statekeeper : Down``, fullwidth letters, a Kelvin sign)."""
    return "".join(c for c in unicodedata.normalize("NFKC", s).casefold() if c.isalnum())


_KNOWN = {_squash(d): d for d in DIRECTIVES}


def _lstrip_blank(s: str) -> str:
    """``s`` without leading white space and invisible format characters (a zero-width
    space, a stray byte-order mark)."""
    i = 0
    while i < len(s) and (s[i].isspace() or unicodedata.category(s[i]) == "Cf"):
        i += 1
    return s[i:]


def _directive(line: str) -> str | None:
    """The directive a line is, ``None`` if it is an ordinary line; ConfigError (without the
    file name) for a line that looks meant as a directive but is not exactly one."""
    if "--" not in line and "/*" not in line:  # most lines: no comment, so no directive
        return None
    if line.isascii() and line.rstrip(" \t").lower() in DIRECTIVES:
        return line.rstrip(" \t").lower()
    # A comment whose first word is "statekeeper" is reserved: a near miss must not be taken
    # for a comment, which would silently make a migration irreversible or transactional.
    body = _lstrip_blank(line)
    if not body.startswith(("--", "/*")):
        return None
    body = _lstrip_blank(body.lstrip("-/*"))
    word = unicodedata.normalize("NFKC", body[:24]).casefold()
    if not word.startswith("statekeeper") or word[11:12].isalnum() or word[11:12] == "_":
        return None
    shown = line.rstrip(" \t")
    shown = repr(shown if len(shown) <= 60 else shown[:57] + "...")
    squashed = _squash(line)
    if squashed in _KNOWN:
        raise ConfigError(f"malformed directive {shown}: write it exactly as "
                          f"{_KNOWN[squashed]!r}, at the start of its line")
    for key, d in _KNOWN.items():
        if squashed.startswith(key):
            raise ConfigError(f"malformed directive {shown}: nothing may follow {d!r} on "
                              f"its line")
    raise ConfigError(
        f"unknown directive {shown} (known: {', '.join(DIRECTIVES)}; a comment whose first "
        f"word is 'statekeeper' is reserved for directives)"
    )


#: The first words of every statement is_transaction_control accepts.
_TXN_WORDS = ("begin", "commit", "end", "abort", "rollback", "start", "prepare")
_txn_checked: dict[tuple[str, bytes], tuple[int, str] | None] = {}


def find_transaction_control(text: str, backend: str) -> tuple[int, str] | None:
    """The first statement of ``text`` that begins or ends a transaction: its 0-based position
    and its first words (upper-cased), or ``None``. Statements are found with the backend's
    lexing, so ``BEGIN`` in a function body, string or comment is not one."""
    # Lexing is Python, character by character: a multi-megabyte data migration takes seconds,
    # and the files are loaded several times per command. Most files contain none of the
    # words at all, and a text already checked is not lexed again.
    lowered = text.lower()
    if not any(w in lowered for w in _TXN_WORDS):
        return None
    key = (backend, hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest())
    if key in _txn_checked:
        return _txn_checked[key]
    sqlite = backend == "sqlite"
    # Statement starts, and as a backstop every other place a statement starts after a ";"
    # (inside parentheses, a BEGIN ATOMIC or trigger body): no transaction control is valid
    # there, so a mistake in tracking depth cannot hide a COMMIT that PostgreSQL would run.
    # END is the one word that may follow such a ";", inside a body: it closes the body.
    starts: list[tuple[int, bool]]
    if sqlite:
        starts = [(s, False) for s, _e in sqlite_statements(text)]
        starts += [(s, True) for s in sqlite_inner_semicolons(text)]
    else:
        spans, inner = pg_scan(text)
        starts = [(s, False) for s, _e in spans] + inner
    found: tuple[int, str] | None = None
    for start, in_body in starts:
        s = skip_space_and_comments(text, start, nested=not sqlite)
        words = leading_words(text, s, nested=not sqlite)
        legal = in_body and words[:1] == ["end"]
        if is_transaction_control(words) and not legal and (found is None or s < found[0]):
            found = (s, " ".join(words).upper())
    if len(_txn_checked) >= 4096:
        _txn_checked.clear()
    _txn_checked[key] = found
    return found


def _transaction_control_message(words: str) -> str:
    return (f"{words} starts or ends a transaction: statekeeper runs each migration in a "
            f"transaction of its own (remove it, or make the first line "
            f"{NO_TRANSACTION_MARKER})")


def parse_migration(path: Path, text: str, backend: str = "postgresql") -> Migration:
    """Split one file's text (decoded, BOM dropped, newlines normalised to ``\\n``) into a
    :class:`Migration`; ConfigError naming the file for anything malformed. ``backend``
    (``postgresql`` or ``sqlite``) decides how statements are lexed for the
    transaction-control check."""
    if "\0" in text:  # read_migration refuses it with the byte offset; a direct caller too
        raise ConfigError(f"{path}: contains a NUL character at character {text.index(chr(0))}")
    if not text.strip():
        raise ConfigError(f"{path}: migration file is empty")
    # Only "\n" ends a line: str.splitlines would also split at \x0b, \x0c, \x1c-\x1e, \x85,
    # U+2028 and U+2029, which no editor shows as a line break.
    lines = text.split("\n")
    no_transaction = False
    down_at: int | None = None
    for n, line in enumerate(lines):
        try:
            name = _directive(line)
        except ConfigError as e:
            raise ConfigError(f"{path}: line {n + 1}: {e}") from None
        if name is None:
            continue
        if name == DOWN_MARKER:
            if down_at is not None:
                raise ConfigError(
                    f"{path}: line {n + 1}: a second {DOWN_MARKER} line "
                    f"(the first is on line {down_at + 1})"
                )
            down_at = n
        else:
            if n != 0:
                raise ConfigError(
                    f"{path}: line {n + 1}: {NO_TRANSACTION_MARKER} must be the first line"
                )
            no_transaction = True
    if down_at is None:
        up, down, down_offset = text, None, 0
    else:
        up = "".join(line + "\n" for line in lines[:down_at])
        down = "\n".join(lines[down_at + 1 :])
        down_offset = len(up) + len(lines[down_at]) + (down_at + 1 < len(lines))
    if not _has_sql(up, backend):
        raise ConfigError(f"{path}: the up part has no SQL")
    if not no_transaction:
        for part, offset in ((up, 0), (down, down_offset)):
            found = find_transaction_control(part, backend) if part is not None else None
            if found is not None:
                pos, words = found
                line_no = text.count("\n", 0, offset + pos) + 1
                raise ConfigError(
                    f"{path}: line {line_no}: {_transaction_control_message(words)}"
                )
    mid = path.name[: -len(".sql")]
    return Migration(mid, path, up, down, checksum_of(up), no_transaction, down_offset)


def _line_of(data: bytes, offset: int) -> int:
    head = data[:offset]
    return head.count(b"\n") + head.count(b"\r") - head.count(b"\r\n") + 1


def read_migration(path: Path, backend: str = "postgresql") -> Migration:
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read migration: {e.strerror or e}") from e
    # libpq sends a statement as a C string: everything after a NUL would silently never
    # reach PostgreSQL while the migration is recorded as applied.
    nul = data.find(b"\0")
    if nul >= 0:
        raise ConfigError(f"{path}: NUL byte at byte offset {nul} (line {_line_of(data, nul)}); "
                          f"a migration must be text")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text: invalid byte at byte offset {e.start} "
                          f"(line {_line_of(data, e.start)})") from e
    text = text.removeprefix("\ufeff").replace("\r\n", "\n").replace("\r", "\n")
    return parse_migration(path, text, backend)


def load_migrations(dir: Path, backend: str = "postgresql") -> list[Migration]:
    """Every ``*.sql`` file of ``dir`` (not hidden, not in subdirectories), natural order.
    ``backend``: the target's (``postgresql`` or ``sqlite``), for the statement lexing of the
    transaction-control check."""
    try:
        if not dir.exists():
            raise ConfigError(f"migrations directory {dir} does not exist")
        if not dir.is_dir():
            raise ConfigError(f"migrations directory {dir} is not a directory")
        paths = [
            p for p in dir.iterdir()
            if p.name.endswith(".sql") and not p.name.startswith(".") and p.is_file()
        ]
    except OSError as e:
        raise ConfigError(f"migrations directory {dir}: cannot list: {e.strerror or e}") from e
    paths.sort(key=lambda p: natural_key(p.name))
    return [read_migration(p, backend) for p in paths]


# -- records ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class AppliedMigration:
    """A row of ``statekeeper_changelog``. ``tag`` is the latest tag set while this was the
    last applied migration (all tags: :meth:`Migrator.tags`)."""

    id: str
    checksum: str
    applied_at: str
    execution_ms: int
    run_id: str | None
    tag: str | None


@dataclass(frozen=True)
class Tag:
    """A named schema state: the migrations applied up to and including ``migration_id``
    (``None``: none applied)."""

    name: str
    migration_id: str | None
    created_at: str
    run_id: str | None


@dataclass(frozen=True)
class MigrationStatus:
    """One row of :meth:`Migrator.status`. ``state``: ``applied``, ``pending``, ``edited``
    (applied, but the file's up part changed) or ``missing`` (applied, file gone)."""

    id: str
    state: str
    applied: bool
    checksum: str
    applied_at: str | None
    execution_ms: int | None
    run_id: str | None
    tag: str | None
    reversible: bool
    no_transaction: bool
    path: Path | None


@dataclass
class _LockState:
    depth: int = 0
    release: Callable[[], None] | None = None


class _CountingCursor(psycopg.Cursor[Any]):
    """Remembers how many statements of a multi-statement string completed before an error
    (psycopg internals; if they change, only the fallback error position is lost)."""

    failed_index: int | None = None

    def _check_results(self, results: list[Any]) -> None:
        self.failed_index = None
        for i, res in enumerate(results):
            if res.status == ExecStatus.FATAL_ERROR:
                self.failed_index = i
                break
        super()._check_results(results)


def _process_label(run_id: str | None) -> str:
    label = f"statekeeper pid={os.getpid()} host={socket.gethostname()}"
    if run_id:
        label += f" run={run_id}"
    return label[:63]


# -- the migrator ----------------------------------------------------------------------------
class Migrator:
    """Migrations of one directory on one target database. The PostgreSQL advisory lock (or
    the SQLite lock file) is held by :meth:`lock`, which the writing methods take themselves
    (reentrant per instance). Outside a lock every method opens and closes its own
    connections; inside one, reads share one connection for the lock's whole duration (an
    upgrade run holds the lock throughout and reads the changelog at every step)."""

    def __init__(self, target: Target, migrations_dir: Path, *, clock: Clock = utc_now) -> None:
        self.target = target
        self.migrations_dir = migrations_dir
        self.clock = clock
        self._lock = _LockState()
        self._run_label = _process_label(None)
        self._schema: str | None = None  # PostgreSQL schema holding the changelog
        self._session: Any = None  # the shared read connection while the lock is held

    @property
    def is_postgres(self) -> bool:
        return self.target.backend == "postgresql"

    # -- files ---------------------------------------------------------------------------
    def migrations(self) -> list[Migration]:
        return load_migrations(self.migrations_dir, self.target.backend)

    # -- connections ---------------------------------------------------------------------
    @contextlib.contextmanager
    def _connect(self, *, autocommit: bool) -> Iterator[Any]:
        if autocommit and self._lock.depth:
            yield self._shared()
            return
        conn = self.target.connect(autocommit=autocommit)
        try:
            if self.is_postgres:
                try:
                    conn.execute("SELECT set_config('application_name', %s, false)",
                                 [self._run_label])
                    if not autocommit:
                        conn.commit()
                except psycopg.Error as e:
                    raise TargetError(f"target {self.target.display}: {first_line(e)}") from e
            yield conn
        finally:
            with contextlib.suppress(Exception):
                if not self.is_postgres and conn.in_transaction:
                    conn.execute("ROLLBACK")
            conn.close()

    def _shared(self) -> Any:
        conn = self._session
        if conn is not None and (getattr(conn, "broken", False) or getattr(conn, "closed", False)):
            self.forget_connections()
            conn = None
        if conn is None:
            conn = self.target.connect(autocommit=True)
            if self.is_postgres:
                try:
                    conn.execute("SELECT set_config('application_name', %s, false)",
                                 [self._run_label])
                except psycopg.Error as e:
                    conn.close()
                    raise TargetError(f"target {self.target.display}: {first_line(e)}") from e
            self._session = conn
        return conn

    def forget_connections(self) -> None:
        """Drop the shared read connection (after the server restarted, e.g. a pgBackRest
        restore); the next read opens a new one."""
        conn, self._session = self._session, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()

    def _db_error(self, e: Exception) -> TargetError:
        return TargetError(f"target {self.target.display}: {first_line(e)}")

    def _table(self, name: str) -> Any:
        """The (qualified, quoted) name of one of our tables, for the current backend."""
        if self.is_postgres:
            assert self._schema is not None
            return pgsql.Identifier(self._schema, name)
        return pgsql.Identifier(name)  # only rendered via _q on SQLite

    def _q(self, conn: Any, query: str, params: Any = None) -> Any:
        """Run one of our own statements; ``{cl}``/``{tg}`` name the changelog/tags tables."""
        if self.is_postgres:
            composed = pgsql.SQL(query).format(
                cl=self._table(CHANGELOG_TABLE), tg=self._table(TAGS_TABLE)
            )
            return conn.execute(composed, params)
        text = query.replace("%s", "?").format(cl=CHANGELOG_TABLE, tg=TAGS_TABLE)
        return conn.execute(text, params or ())

    def _tables_exist(self, conn: Any) -> bool:
        """Do our tables exist? On PostgreSQL, also settle which schema they live in: the
        first schema of the search path that has the changelog, else ``current_schema()``."""
        if not self.is_postgres:
            row = conn.execute(
                "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name IN (?, ?)",
                (CHANGELOG_TABLE, TAGS_TABLE),
            ).fetchone()
            return bool(row[0] == 2)
        if self._schema is None:
            row = conn.execute(
                "SELECT n.nspname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE c.oid = to_regclass(%s)", [CHANGELOG_TABLE]
            ).fetchone()
            if row is None:
                row = conn.execute("SELECT current_schema()").fetchone()
                if row[0] is None:
                    raise ConfigError(
                        f"target {self.target.display}: no schema of the search_path exists "
                        f"to hold {CHANGELOG_TABLE}"
                    )
            self._schema = str(row[0])
        row = conn.execute(
            "SELECT to_regclass(%s) IS NOT NULL AND to_regclass(%s) IS NOT NULL",
            [pgsql.Identifier(self._schema, t).as_string(conn) for t in (CHANGELOG_TABLE,
                                                                         TAGS_TABLE)],
        ).fetchone()
        return bool(row[0])

    def _ensure_tables(self) -> None:
        with self._connect(autocommit=True) as conn:
            try:
                if self._tables_exist(conn):
                    return
                pg = self.is_postgres
                big = "bigint" if pg else "INTEGER"
                stmts = [
                    f"CREATE TABLE IF NOT EXISTS {{cl}} ("
                    f"id text PRIMARY KEY, seq {big} NOT NULL UNIQUE, checksum text NOT NULL, "
                    f"applied_at text NOT NULL, execution_ms {big} NOT NULL, "
                    f"run_id text, tag text)",
                    f"CREATE TABLE IF NOT EXISTS {{tg}} ("
                    f"name text PRIMARY KEY, seq {big} NOT NULL UNIQUE, migration_id text, "
                    f"created_at text NOT NULL, run_id text)",
                ]
                for s in stmts:
                    # created concurrently by another process: fine
                    with contextlib.suppress(psycopg.errors.UniqueViolation,
                                             psycopg.errors.DuplicateTable):
                        self._q(conn, s)
            except (psycopg.Error, sqlite3.Error) as e:
                raise self._db_error(e) from e

    # -- reading the changelog -----------------------------------------------------------
    def _read(self) -> tuple[list[AppliedMigration], list[Tag]]:
        """Changelog rows (in the order applied) and tags (in the order created); empty when
        the tables do not exist yet. Creates nothing."""
        with self._connect(autocommit=True) as conn:
            try:
                if not self._tables_exist(conn):
                    return [], []
                rows = self._q(
                    conn, "SELECT id, checksum, applied_at, execution_ms, run_id, tag "
                    "FROM {cl} ORDER BY seq"
                ).fetchall()
                tags = self._q(
                    conn, "SELECT name, migration_id, created_at, run_id FROM {tg} ORDER BY seq"
                ).fetchall()
            except (psycopg.Error, sqlite3.Error) as e:
                raise self._db_error(e) from e
        return (
            [AppliedMigration(r[0], r[1], r[2], int(r[3]), r[4], r[5]) for r in rows],
            [Tag(t[0], t[1], t[2], t[3]) for t in tags],
        )

    def applied(self) -> list[AppliedMigration]:
        """The changelog, in the order applied (creates the tables if missing)."""
        self._ensure_tables()
        return self._read()[0]

    def is_applied(self, migration_id: str) -> bool:
        """The probe after a crash: is this migration recorded as applied? (Read-only.)"""
        return any(r.id == migration_id for r in self._read()[0])

    def pending(self) -> list[Migration]:
        done = {r.id for r in self._read()[0]}
        return [m for m in self.migrations() if m.id not in done]

    def tags(self) -> list[Tag]:
        return self._read()[1]

    def last_tag(self) -> str | None:
        tags = self.tags()
        return tags[-1].name if tags else None

    def status(self) -> list[MigrationStatus]:
        """One row per migration file and per applied migration whose file is gone."""
        files = {m.id: m for m in self.migrations()}
        rows = {r.id: r for r in self._read()[0]}
        out: list[MigrationStatus] = []
        for mid in sorted(set(files) | set(rows), key=natural_key):
            m, r = files.get(mid), rows.get(mid)
            if r is None:
                assert m is not None
                out.append(MigrationStatus(mid, "pending", False, m.checksum, None, None, None,
                                           None, m.reversible, m.no_transaction, m.path))
                continue
            state = "missing" if m is None else ("edited" if m.checksum != r.checksum
                                                 else "applied")
            out.append(MigrationStatus(
                mid, state, True, r.checksum, r.applied_at, r.execution_ms, r.run_id, r.tag,
                m.reversible if m else False, m.no_transaction if m else False,
                m.path if m else None,
            ))
        return out

    # -- validation ----------------------------------------------------------------------
    def _check(
        self, migrations: list[Migration], applied: list[AppliedMigration], *, order: bool
    ) -> None:
        files = {m.id: m for m in migrations}
        for r in applied:
            m = files.get(r.id)
            if m is None:
                path = self.migrations_dir / f"{r.id}.sql"
                raise ValidationError(
                    f"migration {r.id} is applied but its file {path} is missing "
                    f"(restore the file; applied migrations must stay in the directory)"
                )
            if m.checksum != r.checksum:
                raise ValidationError(
                    f"migration {r.id} was edited after it was applied: the up part of "
                    f"{m.path} has sha256 {m.checksum[:12]}, the changelog recorded "
                    f"{r.checksum[:12]} (restore the file and put the change in a new migration)"
                )
        if not order or not applied:
            return
        done = {r.id for r in applied}
        last = max((i for i, m in enumerate(migrations) if m.id in done), default=-1)
        for m in migrations[:last]:
            if m.id not in done:
                raise ValidationError(
                    f"migration {m.id} ({m.path}) is not applied but sorts before applied "
                    f"migration {migrations[last].id}; rename it to sort after "
                    f"{migrations[last].id}"
                )

    def validate(self) -> list[AppliedMigration]:
        """Refuse (:class:`ValidationError`, naming the file) an applied migration whose file
        changed or disappeared, and a pending one that sorts before an applied one. Returns
        the applied migrations. Read-only."""
        applied = self._read()[0]
        self._check(self.migrations(), applied, order=True)
        return applied

    # -- lock ----------------------------------------------------------------------------
    @contextlib.contextmanager
    def lock(self, *, run_id: str | None = None) -> Iterator[None]:
        """Exclusive right to change this target's migrations, across processes and hosts.

        PostgreSQL: a session advisory lock (``pg_try_advisory_lock``, key
        :data:`ADVISORY_LOCK_KEY`) on a connection of its own, released when the block ends
        or the process dies. SQLite: ``flock`` on ``<database>.statekeeper-lock`` beside
        the database file (released by the kernel when the process dies). Another holder:
        :class:`LockHeld` naming it. Reentrant within one Migrator."""
        if self._lock.depth:
            self._lock.depth += 1
            try:
                yield
            finally:
                self._lock.depth -= 1
            return
        if run_id:
            self._run_label = _process_label(run_id)
        release = self._pg_lock() if self.is_postgres else self._file_lock()
        self._lock = _LockState(1, release)
        try:
            yield
        finally:
            self._lock = _LockState()
            self.forget_connections()
            release()

    def _pg_lock(self) -> Callable[[], None]:
        conn = self.target.connect(autocommit=True)
        k1, k2 = ADVISORY_LOCK_KEY
        try:
            conn.execute("SELECT set_config('application_name', %s, false)", [self._run_label])
            for _ in range(3):
                if conn.execute(f"SELECT pg_try_advisory_lock({k1}, {k2})").fetchone()[0]:
                    break
                holder = self._pg_holder(conn)
                if holder:
                    raise LockHeld(
                        f"migrations on {self.target.display} are locked by another "
                        f"process: {holder}"
                    )
                time.sleep(0.05)  # released between the two queries: try again
            else:
                raise LockHeld(f"migrations on {self.target.display} are locked by another "
                               "process (holder not visible)")
        except psycopg.Error as e:
            conn.close()
            raise self._db_error(e) from e
        except BaseException:
            conn.close()
            raise

        def release() -> None:
            with contextlib.suppress(psycopg.Error):
                conn.execute(f"SELECT pg_advisory_unlock({k1}, {k2})")
            conn.close()

        return release

    def _pg_holder(self, conn: Any) -> str | None:
        k1, k2 = ADVISORY_LOCK_KEY
        row = conn.execute(
            "SELECT l.pid, a.application_name, host(a.client_addr), a.client_hostname, "
            "a.backend_start, a.usename FROM pg_locks l "
            "LEFT JOIN pg_stat_activity a ON a.pid = l.pid "
            f"WHERE l.locktype = 'advisory' AND l.classid::bigint = {k1} "
            f"AND l.objid::bigint = {k2} AND l.objsubid = 2 AND l.granted "
            "AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())"
        ).fetchone()
        if not row:
            return None
        pid, app, addr, hostname, since, user = row
        where = [f"PostgreSQL backend pid {pid}"]
        if user:
            where.append(f"user {user}")
        if hostname or addr:
            where.append(f"client {hostname or addr}")
        if since:
            where.append(f"connected since {format_ts(since)}")
        who = app or "an unnamed session"
        return f"{who} ({', '.join(where)})"

    def _file_lock(self) -> Callable[[], None]:
        db = self.target.sqlite_path
        if not db.exists():
            raise ConfigError(f"target {self.target.display}: database file {db} does not exist")
        path = db.with_name(db.name + LOCK_FILE_SUFFIX)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)  # private, like all we write
        except OSError as e:
            raise TargetError(f"cannot open lock file {path}: {e.strerror or e}") from e
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = ""
            for _ in range(20):  # the holder writes its name right after taking the lock
                with contextlib.suppress(OSError):
                    holder = path.read_text(encoding="utf-8").strip()
                if holder:
                    break
                time.sleep(0.01)
            os.close(fd)
            try:
                info = json.loads(holder)
                who = f"{info['label']} (since {info['since']}; lock file {path})"
            except (ValueError, KeyError, TypeError):
                who = f"an unknown process (lock file {path})"
            raise LockHeld(
                f"migrations on {self.target.display} are locked by another process: {who}"
            ) from None
        except OSError as e:
            os.close(fd)
            raise TargetError(f"cannot lock {path}: {e.strerror or e}") from e
        info = {"label": self._run_label, "pid": os.getpid(), "host": socket.gethostname(),
                "since": format_ts(self.clock())}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode("utf-8"), 0)

        def release() -> None:
            try:
                os.ftruncate(fd, 0)
                fcntl.flock(fd, fcntl.LOCK_UN)
            finally:
                os.close(fd)

        return release

    # -- executing SQL -------------------------------------------------------------------
    def _execute(self, conn: Any, m: Migration, text: str, offset: int,
                 transactional: bool) -> None:
        """Run a migration text on an open connection; MigrationError on failure (the caller
        rolls back). ``offset``: where ``text`` starts in the file, for error positions."""
        if self.is_postgres:
            self._execute_pg(conn, m, text, offset, transactional)
        else:
            self._execute_sqlite(conn, m, text, offset, transactional)

    def _execute_pg(self, conn: Any, m: Migration, text: str, offset: int,
                    transactional: bool) -> None:
        cur = _CountingCursor(conn)
        try:
            cur.execute(text)  # whole text, simple query protocol (no parameters)
        except psycopg.Error as e:
            diag = e.diag
            message = diag.message_primary or first_line(e)
            pos: int | None = None
            if diag.statement_position:
                pos = int(diag.statement_position)
            elif cur.failed_index is not None:
                spans = pg_statements(text)
                if cur.failed_index < len(spans):
                    pos = spans[cur.failed_index][0] + 1
            raise MigrationError(m.id, message, offset + pos if pos else None) from e
        finally:
            cur.close()
        if transactional and conn.info.transaction_status != TransactionStatus.INTRANS:
            raise MigrationError(m.id, "the migration ended its transaction itself "
                                 "(COMMIT/ROLLBACK in the file); it may be partly applied")

    def _execute_sqlite(self, conn: sqlite3.Connection, m: Migration, text: str, offset: int,
                        transactional: bool) -> None:
        spans = sqlite_statements(text)
        for start, end in spans:
            try:
                cur = conn.execute(text[start:end])
                for _row in cur:  # step a trailing SELECT to its end
                    pass
                cur.close()
            except sqlite3.Error as e:
                pos = offset + skip_space_and_comments(text, start, nested=False) + 1
                raise MigrationError(m.id, str(e), pos) from e
            if transactional and not conn.in_transaction:
                raise MigrationError(m.id, "the migration ended its transaction itself "
                                     "(COMMIT/END in the file); it may be partly applied",
                                     offset + skip_space_and_comments(text, start,
                                                                      nested=False) + 1)

    def _begin(self, conn: Any) -> None:
        if not self.is_postgres:
            conn.execute("BEGIN IMMEDIATE")

    def _end(self, conn: Any) -> None:
        """Commit what _begin opened (SQLite runs in autocommit mode with explicit BEGIN)."""
        if self.is_postgres:
            conn.commit()
        else:
            conn.execute("COMMIT")

    def _commit(self, conn: Any, m: Migration, what: str) -> None:
        try:
            self._end(conn)
        except psycopg.Error as e:
            if e.sqlstate:  # the server refused the commit (deferred constraint, ...)
                raise MigrationError(m.id, e.diag.message_primary or first_line(e)) from e
            raise TargetError(
                f"migration {m.id}: the connection failed while committing its {what}; "
                f"whether it took effect is unknown: check `statekeeper migrate status` "
                f"({first_line(e)})"
            ) from e
        except sqlite3.Error as e:
            raise MigrationError(m.id, str(e)) from e

    def _rollback(self, conn: Any) -> None:
        with contextlib.suppress(Exception):
            if self.is_postgres:
                conn.rollback()
            elif conn.in_transaction:
                conn.execute("ROLLBACK")

    # -- applying --------------------------------------------------------------------------
    def apply(
        self, migration: Migration, run_id: str | None = None, *, hook: Hook | None = None
    ) -> AppliedMigration:
        """Apply one migration, which must be the next pending one. Already applied with the
        same checksum: the existing record is returned and nothing runs (safe to repeat).
        ``hook`` is called in the middle: after the SQL and the changelog row, before the
        commit (no-transaction migrations: after the SQL, before the row is written)."""
        with self.lock(run_id=run_id):
            migrations = self.migrations()
            self._ensure_tables()
            applied = self._read()[0]
            for r in applied:
                if r.id == migration.id and r.checksum == migration.checksum:
                    return r
            self._check(migrations, applied, order=True)
            done = {r.id for r in applied}
            pending = [m for m in migrations if m.id not in done]
            current = next((m for m in migrations if m.id == migration.id), None)
            if current is None:
                raise ConfigError(f"migration {migration.id} is not in {self.migrations_dir}")
            if current.checksum != migration.checksum:
                raise ValidationError(f"{current.path} changed since it was loaded")
            if pending[0].id != migration.id:
                raise ConfigError(
                    f"cannot apply {migration.id} before {pending[0].id} (file order)"
                )
            return self._apply(current, run_id, hook)

    def _apply(self, m: Migration, run_id: str | None, hook: Hook | None = None
               ) -> AppliedMigration:
        transactional = not m.no_transaction
        with self._connect(autocommit=not transactional or not self.is_postgres) as conn:
            try:
                if transactional:
                    self._begin(conn)
                t0 = time.monotonic()
                self._execute(conn, m, m.up, 0, transactional)
                ms = round((time.monotonic() - t0) * 1000)
                applied_at = format_ts(self.clock())
                if not transactional and hook is not None:
                    hook()
                if not transactional and not self.is_postgres:
                    self._begin(conn)
                try:
                    row = self._q(conn, "SELECT COALESCE(MAX(seq), 0) + 1 FROM {cl}").fetchone()
                    self._q(
                        conn, "INSERT INTO {cl} (id, seq, checksum, applied_at, execution_ms, "
                        "run_id, tag) VALUES (%s, %s, %s, %s, %s, %s, NULL)",
                        (m.id, int(row[0]), m.checksum, applied_at, ms, run_id),
                    )
                except (psycopg.Error, sqlite3.Error) as e:
                    ran = "" if transactional else " (it ran: it is not transactional)"
                    raise TargetError(
                        f"migration {m.id}: could not record it in {CHANGELOG_TABLE}{ran}: "
                        f"{first_line(e)}"
                    ) from e
                if transactional and hook is not None:
                    hook()
                if transactional or not self.is_postgres:
                    self._commit(conn, m, "up part")
            except BaseException:
                self._rollback(conn)
                raise
        return AppliedMigration(m.id, m.checksum, applied_at, ms, run_id, None)

    def up(
        self,
        run_id: str | None = None,
        target_id: str | None = None,
        on_applied: Callable[[AppliedMigration], None] | None = None,
    ) -> list[AppliedMigration]:
        """Validate, lock, and apply the pending migrations in order (up to and including
        ``target_id``). A failure raises :class:`MigrationError`; the migrations before it stay
        applied and recorded. ``on_applied`` is called after each one commits."""
        with self.lock(run_id=run_id):
            todo = self._plan_up(target_id, create=True)
            done: list[AppliedMigration] = []
            for m in todo:
                rec = self._apply(m, run_id)
                done.append(rec)
                if on_applied is not None:
                    on_applied(rec)
            return done

    def _plan_up(self, target_id: str | None, *, create: bool) -> list[Migration]:
        migrations = self.migrations()  # a bad file is refused before anything is written
        if create:
            self._ensure_tables()
        applied = self._read()[0]
        self._check(migrations, applied, order=True)
        done = {r.id for r in applied}
        todo = [m for m in migrations if m.id not in done]
        if target_id is not None:
            ids = [m.id for m in migrations]
            if target_id not in ids:
                raise ConfigError(f"unknown migration {target_id!r} (not in "
                                  f"{self.migrations_dir})")
            if target_id in done:
                return []
            todo = todo[: [m.id for m in todo].index(target_id) + 1]
        return todo

    # -- reverting ---------------------------------------------------------------------------
    def revert(
        self, id: str, run_id: str | None = None, *, hook: Hook | None = None
    ) -> AppliedMigration | None:
        """Run the down part of the last applied migration and delete its changelog row, in one
        transaction. Returns the removed record, or None when it was not applied (safe to
        repeat). ``hook`` is called in the middle, before the commit."""
        with self.lock(run_id=run_id):
            migrations = self.migrations()
            applied = self._read()[0]
            self._check(migrations, applied, order=False)
            rec = next((r for r in applied if r.id == id), None)
            if rec is None:
                if not any(m.id == id for m in migrations):
                    raise ConfigError(f"unknown migration {id!r}")
                return None
            last = max(applied, key=lambda r: natural_key(r.id))
            if last.id != id:
                raise ConfigError(
                    f"cannot revert {id}: {last.id} was applied after it; revert that first"
                )
            m = next(m for m in migrations if m.id == id)
            if not m.reversible:
                raise IrreversibleError(self._irreversible(m))
            self._revert(m, hook)
            return rec

    @staticmethod
    def _irreversible(m: Migration) -> str:
        return (f"migration {m.id} has no down part (no {DOWN_MARKER!r} line in {m.path}); "
                f"only restoring a backup can undo it")

    def _revert(self, m: Migration, hook: Hook | None = None) -> None:
        assert m.down is not None
        transactional = not m.no_transaction
        with self._connect(autocommit=not transactional or not self.is_postgres) as conn:
            try:
                if transactional:
                    self._begin(conn)
                self._execute(conn, m, m.down, m.down_offset, transactional)
                if not transactional and hook is not None:
                    hook()
                if not transactional and not self.is_postgres:
                    self._begin(conn)
                try:
                    self._q(conn, "DELETE FROM {cl} WHERE id = %s", (m.id,))
                    # A tag names a schema state; once that state is gone, so is its name
                    # (a rolled-back v2.6 must not remain the "last tag").
                    self._q(conn, "DELETE FROM {tg} WHERE migration_id = %s", (m.id,))
                except (psycopg.Error, sqlite3.Error) as e:
                    raise TargetError(
                        f"migration {m.id}: could not remove it from {CHANGELOG_TABLE}: "
                        f"{first_line(e)}"
                    ) from e
                if transactional and hook is not None:
                    hook()
                if transactional or not self.is_postgres:
                    self._commit(conn, m, "down part")
            except BaseException:
                self._rollback(conn)
                raise

    # -- tags ------------------------------------------------------------------------------
    def tag(self, name: str, run_id: str | None = None) -> Tag:
        """Name the current schema state (works with nothing applied). A name already used is
        refused, unless it is the same run tagging the same state again (a repeat)."""
        check_tag_name(name)
        with self.lock(run_id=run_id):
            self._ensure_tables()
            applied, tags = self._read()
            last = max((r.id for r in applied), key=natural_key, default=None)
            for t in tags:
                if t.name == name:
                    if run_id is not None and t.run_id == run_id and t.migration_id == last:
                        return t
                    at = t.migration_id or "no migrations applied"
                    raise ConfigError(
                        f"tag {name} already exists (created {t.created_at} at {at}); "
                        f"choose another name"
                    )
            new = Tag(name, last, format_ts(self.clock()), run_id)
            with self._connect(autocommit=not self.is_postgres) as conn:
                try:
                    self._begin(conn)
                    row = self._q(conn, "SELECT COALESCE(MAX(seq), 0) + 1 FROM {tg}").fetchone()
                    self._q(conn, "INSERT INTO {tg} (name, seq, migration_id, created_at, run_id)"
                            " VALUES (%s, %s, %s, %s, %s)",
                            (name, int(row[0]), new.migration_id, new.created_at, run_id))
                    if last is not None:
                        self._q(conn, "UPDATE {cl} SET tag = %s WHERE id = %s", (name, last))
                    self._end(conn)
                except (psycopg.Error, sqlite3.Error) as e:
                    self._rollback(conn)
                    raise self._db_error(e) from e
            return new

    def untag(self, name: str, run_id: str) -> bool:
        """Remove tag ``name`` if run ``run_id`` created it: a rolled-back run takes back the
        names it gave. True if removed; False if there is none (safe to repeat). A tag of that
        name made by someone else is left alone (False)."""
        with self.lock(run_id=run_id):
            if not self._read()[1]:
                return False
            with self._connect(autocommit=not self.is_postgres) as conn:
                try:
                    self._begin(conn)
                    cur = self._q(conn, "DELETE FROM {tg} WHERE name = %s AND run_id = %s",
                                  (name, run_id))
                    removed = bool(cur.rowcount and cur.rowcount > 0)
                    # the changelog row's tag column falls back to the newest tag left there
                    self._q(conn, "UPDATE {cl} SET tag = (SELECT t.name FROM {tg} t WHERE "
                            "t.migration_id = {cl}.id ORDER BY t.seq DESC LIMIT 1) "
                            "WHERE tag = %s", (name,))
                    self._end(conn)
                except (psycopg.Error, sqlite3.Error) as e:
                    self._rollback(conn)
                    raise self._db_error(e) from e
            return removed

    def plan_down_to_tag(self, tag: str) -> list[Migration]:
        """The migrations that rolling back to ``tag`` reverts, in the order it would revert
        them. Unknown tag: ConfigError; an edited or missing file: ValidationError; one without
        a down part on the way: IrreversibleError naming the first. Read-only."""
        migrations = self.migrations()
        applied, tags = self._read()
        t = next((t for t in tags if t.name == tag), None)
        if t is None:
            known = ", ".join(x.name for x in tags) or "none"
            raise ConfigError(f"unknown tag {tag!r} (known tags: {known})")
        self._check(migrations, applied, order=False)
        done = {r.id for r in applied}
        if t.migration_id is not None and t.migration_id not in done:
            raise ConfigError(
                f"the schema is behind tag {tag}: its last migration {t.migration_id} is not "
                f"applied (nothing to roll back; `migrate up` applies forward)"
            )
        floor = natural_key(t.migration_id) if t.migration_id is not None else None
        by_id = {m.id: m for m in migrations}
        plan = sorted(
            (by_id[r.id] for r in applied if floor is None or natural_key(r.id) > floor),
            key=lambda m: natural_key(m.id), reverse=True,
        )
        for m in plan:
            if not m.reversible:
                raise IrreversibleError(f"cannot roll back to tag {tag}: {self._irreversible(m)}")
        return plan

    def down_to_tag(
        self,
        tag: str,
        run_id: str | None = None,
        on_reverted: Callable[[Migration], None] | None = None,
    ) -> list[str]:
        """Revert, newest first, every migration applied after ``tag``; returns their ids.
        Nothing runs unless the whole way down is reversible. A failure raises
        :class:`MigrationError`; the migrations reverted before it stay reverted."""
        with self.lock(run_id=run_id):
            plan = self.plan_down_to_tag(tag)
            out: list[str] = []
            for m in plan:
                self._revert(m)
                out.append(m.id)
                if on_reverted is not None:
                    on_reverted(m)
            return out

    # -- dry run -----------------------------------------------------------------------------
    def sql(self, to_tag: str | None = None, *, target_id: str | None = None) -> str:
        """The SQL that ``up`` (or, with ``to_tag``, ``down_to_tag``) would run, in order, with
        nothing changed (not even the changelog table created)."""
        if to_tag is not None:
            plan, part = self.plan_down_to_tag(to_tag), "down"
        else:
            plan, part = self._plan_up(target_id, create=False), "up"
        chunks = []
        for m in plan:
            how = "outside a transaction" if m.no_transaction else "in one transaction"
            text = m.up if part == "up" else (m.down or "")
            record = ("recorded in" if part == "up" else "removed from") + f" {CHANGELOG_TABLE}"
            chunks.append(
                f"-- statekeeper: {m.id} ({part}, {how}; {record})\n"
                f"{text.rstrip()}\n"
            )
        return "\n".join(chunks)
