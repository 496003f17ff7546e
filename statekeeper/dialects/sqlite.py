"""SQLite targets: a file, the stdlib driver, a lock file beside it.

Connections run in autocommit mode (``isolation_level=None``) with an explicit
``BEGIN IMMEDIATE``: the write lock is taken when the work starts, not at the first write, and
a migration and its changelog row commit together (SQLite DDL is transactional).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import sqlite3
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError, LockHeld, MigrationError, TargetError
from .base import Dialect, Held

if TYPE_CHECKING:
    from ..fingerprint import Fingerprint
    from ..targets import Target

LOCK_FILE_SUFFIX = ".statekeeper-lock"


class SqliteDialect(Dialect):
    name = "sqlite"
    schemes = ("sqlite",)
    backup_methods = ("sqlite",)
    nested_comments = False
    in_a_file = True
    integer_type = "INTEGER"

    # -- the target URL ----------------------------------------------------------------------
    def file_path(self, target: Target) -> Path | None:
        return Path(target.url.database) if target.url.database else None

    def identity(self, target: Target) -> str:
        return str(target.sqlite_path.resolve())

    # -- connections and transactions -----------------------------------------------------
    def connect(self, target: Target, *, autocommit: bool = False) -> Any:
        path = target.sqlite_path
        if not path.exists():
            raise ConfigError(f"target {target.shown}: database file {path} does not exist")
        with self.errors(f"target {target.shown}"):
            conn = sqlite3.connect(
                path, timeout=30, isolation_level=None if autocommit else "DEFERRED"
            )
        conn.execute("PRAGMA busy_timeout=30000")
        return conn

    def driver_error(self) -> tuple[type[BaseException], ...]:
        return (sqlite3.Error,)

    def migration_autocommit(self, transactional: bool) -> bool:
        return True  # transactions are begun explicitly

    def begin(self, conn: Any) -> None:
        conn.execute("BEGIN IMMEDIATE")

    def end(self, conn: Any) -> None:
        conn.execute("COMMIT")

    def commit(self, conn: Any, migration_id: str, what: str) -> None:
        try:
            self.end(conn)
        except sqlite3.Error as e:
            raise MigrationError(migration_id, str(e)) from e

    def rollback(self, conn: Any) -> None:
        with contextlib.suppress(Exception):
            if conn.in_transaction:
                conn.execute("ROLLBACK")

    def release(self, conn: Any) -> None:
        self.rollback(conn)

    # -- migration texts --------------------------------------------------------------------
    def statement_starts(self, text: str) -> list[tuple[int, bool]]:
        from ..sqltext import sqlite_inner_semicolons, sqlite_statements

        starts = [(s, False) for s, _e in sqlite_statements(text)]
        return starts + [(s, True) for s in sqlite_inner_semicolons(text)]

    def execute(self, conn: Any, migration_id: str, text: str, offset: int,
                transactional: bool) -> tuple[tuple[str, str, int], ...]:
        # Statement by statement, on SQLite's own boundaries: the failing one is known exactly.
        from ..sqltext import skip_space_and_comments, sqlite_statements

        for start, end in sqlite_statements(text):
            try:
                cur = conn.execute(text[start:end])
                for _row in cur:  # step a trailing SELECT to its end
                    pass
                cur.close()
            except sqlite3.Error as e:
                pos = offset + skip_space_and_comments(text, start, nested=False) + 1
                raise MigrationError(migration_id, str(e), pos) from e
            if transactional and not conn.in_transaction:
                raise MigrationError(migration_id, "the migration ended its transaction itself "
                                     "(COMMIT/END in the file); it may be partly applied",
                                     offset + skip_space_and_comments(text, start,
                                                                      nested=False) + 1)
        return ()  # SQLite raises no notices

    # -- our own tables ---------------------------------------------------------------------
    def tables_exist(self, conn: Any, schema: str, names: tuple[str, ...]) -> bool:
        marks = ", ".join("?" for _ in names)
        row = conn.execute(
            f"SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name IN ({marks})",
            names,
        ).fetchone()
        return bool(row[0] == len(names))

    def run(self, conn: Any, schema: str, query: str, params: Any = None,
            **tables: str) -> Any:
        return conn.execute(query.replace("%s", "?").format(**tables), params or ())

    # -- the target lock --------------------------------------------------------------------
    def lock(self, target: Target, label: str, since: str, conn: Any = None) -> Held:
        """``flock`` on ``<database>.statekeeper-lock`` beside the database file, released by
        the kernel when the process dies; the holder writes who it is into the file."""
        db = target.sqlite_path
        if not db.exists():
            raise ConfigError(f"target {target.shown}: database file {db} does not exist")
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
                f"migrations on {target.shown} are locked by another process: {who}"
            ) from None
        except OSError as e:
            os.close(fd)
            raise TargetError(f"cannot lock {path}: {e.strerror or e}") from e
        info = {"label": label, "pid": os.getpid(), "host": socket.gethostname(),
                "since": since}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode("utf-8"), 0)

        def release() -> None:
            try:
                os.ftruncate(fd, 0)
                fcntl.flock(fd, fcntl.LOCK_UN)
            finally:
                os.close(fd)

        return Held(release)  # a flock lasts as long as the process

    # -- reading ----------------------------------------------------------------------------
    def fingerprint(self, target: Target, conn: Any = None) -> Fingerprint:
        from .sqlite_fingerprint import sqlite_fingerprint

        own = conn is None
        if own:
            conn = self.connect(target, autocommit=True)
        try:
            with self.errors(f"fingerprint of {target.shown}"):
                return sqlite_fingerprint(conn)
        finally:
            if own:
                conn.close()

    def health_query(self, target: Target, sql: str, timeout_ms: int) -> Any:
        conn = self.connect(target, autocommit=True)
        deadline = time.monotonic() + timeout_ms / 1000
        try:
            # SQLite runs in this process: the progress handler aborts the statement once the
            # deadline passes, and the busy timeout stops a wait on another writer's lock at
            # the same deadline.
            conn.execute(f"PRAGMA busy_timeout = {int(timeout_ms)}")
            conn.set_progress_handler(lambda: int(time.monotonic() > deadline), 1000)
            try:
                return conn.execute(sql).fetchone()
            except sqlite3.OperationalError as e:
                # "interrupted" from the progress handler; "database is locked" once
                # busy_timeout ran out (its sleeps may end a hair before our clock says so)
                if time.monotonic() >= deadline - 0.05:
                    raise TimeoutError() from e
                raise
        finally:
            conn.close()
