"""The interface every target dialect implements.

A dialect is everything that differs between the backends on the target side, and nothing
else: the caller (the migrator, the changelog, health checks, fingerprints, targets) says
what it wants done and the dialect says how, on a DBAPI connection it opened. Drivers are
imported when first used, so that choosing a dialect (configuration checks do) stays cheap.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import TargetError

if TYPE_CHECKING:
    from ledger import DatabaseURL as URL

    from ..fingerprint import Fingerprint
    from ..targets import Target

@dataclass(frozen=True)
class Held:
    """A target lock this process holds. ``alive`` says whether it still is: a PostgreSQL
    session lock ends with its connection, when the server restarts under it."""

    release: Callable[[], None]
    alive: Callable[[], bool] = lambda: True
    #: the connection the lock lives on when it is a session's (PostgreSQL) and that
    #: connection was the caller's: it must stay open while the lock is held
    conn: Any = None


def first_line(e: BaseException) -> str:
    """The first line of an error's text (a driver's message may run over several)."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


@dataclass(frozen=True)
class ClusterScope:
    """The server cluster a database lives in: its system identifier (None when the server
    does not tell this user) and every database of it that accepts connections."""

    system_identifier: str | None
    databases: tuple[str, ...]

    def describe(self) -> str:
        return f"{self.system_identifier or '(system identifier not readable)'}: databases " \
            + ", ".join(self.databases)


class Dialect:
    """One backend's ways. Instances are stateless singletons from the registry."""

    #: SQLAlchemy backend name, the registry key
    name: str = ""
    #: URL schemes (the part before ``+driver``) that name this backend
    schemes: tuple[str, ...] = ()
    #: backup methods that can back up and restore this kind of target; the first is the default
    backup_methods: tuple[str, ...] = ()
    #: is the database a file (its URL has a path and no host: ``sqlite:///app.db``)?
    in_a_file: bool = False
    #: the JDBC subprotocol Liquibase reaches this backend by (``jdbc:<it>://``); None: the
    #: Liquibase driver cannot drive it
    jdbc: str | None = None
    #: do block comments nest? (the lexing of migration texts: PostgreSQL yes, SQLite no)
    nested_comments: bool = True
    #: is the target lock a session's (it can live on the run's one connection)?
    session_lock: bool = False

    @property
    def default_backup_method(self) -> str:
        return self.backup_methods[0]

    def __repr__(self) -> str:
        return f"<{type(self).__name__}>"

    # -- the target URL ----------------------------------------------------------------------
    def check_target(self, target: Target) -> None:
        """Refuse (ConfigError) what the URL says that no connection could use."""

    def file_path(self, target: Target) -> Path | None:
        """The database file, for a backend that keeps the database in one."""
        return None

    def identity(self, target: Target) -> str:
        """What names this database, recorded in a backup so that it is restored only there."""
        return str(target.url.database)

    def url_error(self, url: URL) -> Exception | None:
        """The driver's error for a URL it will not connect with, found before it is used."""
        return None

    # libpq's view of the target (pg_dump, pg_restore, psql, pgbackrest): PostgreSQL only
    def conn_params(self, target: Target) -> dict[str, str]:
        raise TargetError(f"target {target.shown} is not a PostgreSQL database")

    def conninfo(self, target: Target) -> str:
        raise TargetError(f"target {target.shown} is not a PostgreSQL database")

    def client_conninfo(self, target: Target) -> str:
        raise TargetError(f"target {target.shown} is not a PostgreSQL database")

    def libpq_env(self, target: Target) -> dict[str, str]:
        raise TargetError(f"target {target.shown} is not a PostgreSQL database")

    def endpoint(self, target: Target, conn: Any = None) -> tuple[str, int]:
        raise TargetError(f"target {target.shown} is not a PostgreSQL database")

    # -- connections and transactions -----------------------------------------------------
    def connect(self, target: Target, *, autocommit: bool = False) -> Any:
        """A DBAPI connection to the target; TargetError (ConfigError for a database file that
        is not there) when there is none."""
        raise NotImplementedError

    def driver_error(self) -> tuple[type[BaseException], ...]:
        """The driver's error classes: what :meth:`errors` translates."""
        raise NotImplementedError

    @contextlib.contextmanager
    def errors(self, prefix: str) -> Iterator[None]:
        """The one translation of a driver error: ``TargetError("<prefix>: <first line>")``,
        chained to the driver's error."""
        try:
            yield
        except self.driver_error() as e:
            raise TargetError(f"{prefix}: {first_line(e)}") from e

    def cluster_of(self, target: Target) -> ClusterScope | None:
        """The cluster the target's database lives in; None where a database is its own
        scope (a file)."""
        return None

    def label_session(self, conn: Any, label: str) -> None:
        """Name the session after the process that holds it, where the server shows it."""

    def migration_autocommit(self, transactional: bool) -> bool:
        """The connection mode a migration (and our own writes) runs in: ``transactional``
        work then happens between :meth:`begin` and :meth:`commit`."""
        raise NotImplementedError

    def begin(self, conn: Any) -> None:
        raise NotImplementedError

    def commit(self, conn: Any, migration_id: str, what: str) -> None:
        """End what :meth:`begin` opened; MigrationError if the server refuses the commit,
        TargetError if the connection failed while committing (the outcome is unknown)."""
        raise NotImplementedError

    def end(self, conn: Any) -> None:
        """Commit what :meth:`begin` opened (driver errors are the caller's to translate)."""
        raise NotImplementedError

    def rollback(self, conn: Any) -> None:
        """Roll back whatever is open; never raises."""
        raise NotImplementedError

    def release(self, conn: Any) -> None:
        """Before a connection of ours is closed: nothing left open."""

    def reset_session(self, conn: Any, label: str) -> None:
        """After a migration ran on a connection that outlives it (the run's one
        connection): what its text set for the session (``SET``, a role, temporary tables,
        prepared statements, ``LISTEN``) is undone, as if the next one had a connection of
        its own; the lock held on it stays. Never raises (a broken connection is found by the
        lock's ``alive``)."""

    # -- migration texts --------------------------------------------------------------------
    def statement_starts(self, text: str) -> list[tuple[int, bool]]:
        """Where each statement of ``text`` starts, and whether the start is inside a body
        (a trigger or ``BEGIN ATOMIC`` body, parentheses): for transaction-control checks."""
        raise NotImplementedError

    def has_sql(self, text: str) -> bool:
        from ..sqltext import skip_space_and_comments

        return skip_space_and_comments(text, 0, nested=self.nested_comments) < len(text)

    def execute(self, conn: Any, migration_id: str, text: str, offset: int,
                transactional: bool) -> tuple[tuple[str, str, int], ...]:
        """Run a migration text on an open connection, one statement at a time (in the open
        transaction when ``transactional``; else each statement on its own), stopping at the
        first that fails: MigrationError with its position in the file (``offset`` is where
        ``text`` starts) and what else the server said. The caller rolls back and places the
        error in the file (:meth:`MigrationError.locate`). Returns the notices and warnings
        the server raised, ``(severity, message, file position)`` (none on SQLite)."""
        raise NotImplementedError

    # -- our own tables ---------------------------------------------------------------------
    #: the integer type of our bookkeeping tables' columns
    integer_type: str = "bigint"

    def own_schema(self, conn: Any, table: str, display: str) -> str:
        """The schema our tables live (or will live) in; ``""`` for a backend without."""
        return ""

    def tables_exist(self, conn: Any, schema: str, names: tuple[str, ...]) -> bool:
        raise NotImplementedError

    def run(self, conn: Any, schema: str, query: str, params: Any = None,
            **tables: str) -> Any:
        """Run one of our own statements: ``%s`` parameters, ``{name}`` fields naming our
        tables (``tables``: field -> table name, qualified with ``schema`` where needed)."""
        raise NotImplementedError

    @contextlib.contextmanager
    def created_concurrently(self) -> Iterator[None]:
        """Around a ``CREATE TABLE IF NOT EXISTS``: another process creating the same table at
        the same moment is fine."""
        yield

    # -- the target lock --------------------------------------------------------------------
    def lock(self, target: Target, label: str, since: str, conn: Any = None) -> Held:
        """Take the target's migration lock (``label`` names this process to a second holder,
        ``since`` is now); LockHeld naming the holder if another has it. ``conn``: an open
        autocommit connection of the caller's to take a session lock on (the run's one
        connection), left open at release; None: a connection of the lock's own."""
        raise NotImplementedError

    # -- reading ----------------------------------------------------------------------------
    def fingerprint(self, target: Target, conn: Any = None) -> Fingerprint:
        """``conn``: an open autocommit connection of the caller's to read on (left as it was
        found, no transaction open); None: one of its own."""
        raise NotImplementedError

    def health_query(self, target: Target, sql: str, timeout_ms: int) -> Any:
        """The first row of a health check's query (None for no row), run within
        ``timeout_ms``; ``TimeoutError`` when the limit stopped it, driver errors as they are."""
        raise NotImplementedError
