"""The target database (the application's): its URL, raw DBAPI connections, and the
environment that client tools (pg_dump, pg_restore, psql, pgbackrest) need.

Targets use psycopg 3 and sqlite3 directly: migrations hand whole SQL files to the server, which
needs the simple query protocol, not an ORM. What differs between the backends is the target's
:class:`~statekeeper.dialects.Dialect`; a Target only says which one.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ledger import ConfigurationError, database_url, redact

from .dialects import Dialect, dialect_for
from .dialects.base import first_line
from .dialects.postgres import SECRET_PARAMS
from .errors import ConfigError, TargetError

if TYPE_CHECKING:
    from ledger import DatabaseURL as URL

__all__ = ["SECRET_PARAMS", "Target", "first_line"]
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Target:
    """``display`` is the key recorded in plans, leases and operations and compared on
    ``resume``/``rollback`` (the normalized URL, redacted: the same database however it was
    written); ``shown`` is what messages say (the URL as the user gave it, redacted)."""

    url: URL
    display: str
    shown: str

    @classmethod
    def from_url(cls, url: str, base_dir: Path | None = None) -> Target:
        try:
            u = database_url(url, base_dir, what="target URL")
        except ConfigurationError as e:
            raise ConfigError(str(e)) from e
        t = cls(u, redact(u), redact(url))
        t.dialect.check_target(t)
        return t

    @property
    def backend(self) -> str:
        """The SQLAlchemy backend name (``sqlite``, ``postgresql``): a name to record; what
        differs between backends is asked of :attr:`dialect`."""
        return str(self.url.get_backend_name())

    @property
    def dialect(self) -> Dialect:
        return dialect_for(self.backend)

    @property
    def sqlite_path(self) -> Path:
        path = self.dialect.file_path(self)
        if path is None:
            raise TargetError(f"target {self.shown} is not a SQLite database")
        return path

    @property
    def database(self) -> str:
        return str(self.url.database)

    @property
    def identity(self) -> str:
        """What names this database (a SQLite file's resolved path, a PostgreSQL database's
        name): a backup is restored only where it was taken."""
        return self.dialect.identity(self)

    def conn_params(self) -> dict[str, str]:
        """libpq keywords for what the URL says (PostgreSQL only)."""
        return self.dialect.conn_params(self)

    def conninfo(self) -> str:
        """libpq keyword string for psycopg (password included: never log this)."""
        return self.dialect.conninfo(self)

    def client_conninfo(self) -> str:
        """The same connection for pg_dump/psql ``--dbname``, with every secret left out: the
        password goes through the environment (:meth:`libpq_env`), never a command line."""
        return self.dialect.client_conninfo(self)

    def libpq_env(self) -> dict[str, str]:
        """Environment for pg_dump/pg_restore/psql: ours (libpq reads the same PG* variables
        for our own connection), plus the password."""
        return self.dialect.libpq_env(self)

    def client_url(self) -> str:
        """The URL an operator's command is given (``STATEKEEPER_DATABASE_URL``): the backend's
        own scheme, without SQLAlchemy's driver name, so that psql or the application takes
        it as it is. Password included: never log it."""
        return str(self.url.set(drivername=self.backend).render_as_string(hide_password=False))

    def endpoint(self, conn: Any = None) -> tuple[str, int]:
        """(host, port) that libpq actually connected to (a socket directory for a Unix
        socket): what a URL without host or port resolved to. Opens a connection unless
        given one (a psycopg connection to this target)."""
        return self.dialect.endpoint(self, conn)

    def connect(self, *, autocommit: bool = False) -> Any:
        """A DBAPI connection: psycopg 3 for PostgreSQL, sqlite3 for SQLite."""
        log.debug("connecting to %s", self.display)
        t0 = time.monotonic()
        try:
            conn = self.dialect.connect(self, autocommit=autocommit)
        except TargetError as e:
            log.info("connection to %s failed after %.0f ms: %s", self.display,
                     (time.monotonic() - t0) * 1000, e)
            raise
        log.debug("connected to %s in %.0f ms", self.display, (time.monotonic() - t0) * 1000)
        return conn
