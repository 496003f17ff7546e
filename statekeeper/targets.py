"""The target database (the application's): URL handling, raw DBAPI connections, and the
environment that client tools (pg_dump, pg_restore, psql, pgbackrest) need.

Targets use psycopg 3 and sqlite3 directly: migrations hand whole SQL files to the server, which
needs the simple query protocol, not an ORM. Dialect quirks are keyed by ``backend``.
"""

from __future__ import annotations

import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from sqlalchemy.engine import URL

from ledger import ConfigurationError, normalize_url, redact

from .dialects import Dialect, dialect_for
from .errors import ConfigError, TargetError

# Connection keywords that are secrets: never on a child's command line.
SECRET_PARAMS = frozenset({
    "password", "sslpassword", "scram_client_key", "scram_server_key", "oauth_client_secret",
})


@dataclass(frozen=True)
class Target:
    url: URL
    display: str

    @classmethod
    def from_url(cls, url: str, base_dir: Path | None = None) -> Target:
        try:
            u = normalize_url(url, base_dir, what="target URL")
        except ConfigurationError as e:
            raise ConfigError(str(e)) from e
        t = cls(u, redact(u))
        if t.backend == "postgresql":
            try:
                t.conninfo()
            except psycopg.ProgrammingError as e:  # a query parameter libpq does not know
                raise ConfigError(f"target URL {t.display!r}: {first_line(e)}") from e
        return t

    @property
    def backend(self) -> str:
        return str(self.url.get_backend_name())

    @property
    def dialect(self) -> Dialect:
        return dialect_for(self.backend)

    @property
    def sqlite_path(self) -> Path:
        if self.backend != "sqlite" or not self.url.database:
            raise TargetError(f"target {self.display} is not a SQLite database")
        return Path(self.url.database)

    @property
    def database(self) -> str:
        return str(self.url.database)

    def conn_params(self) -> dict[str, str]:
        """libpq keywords for what the URL says, and nothing it does not: a host, port or user
        left out is left to libpq (PGHOST, PGPORT, PGUSER, PGSERVICE, the socket directory),
        exactly as psql resolves it. Our own connection and the client programs both start
        from this, so they reach the same server."""
        u = self.url
        params: dict[str, str] = {"dbname": str(u.database)}
        if u.host:
            params["host"] = u.host
        if u.port:
            params["port"] = str(u.port)
        if u.username:
            params["user"] = u.username
        if u.password:
            params["password"] = str(u.password)
        params.update({k: str(v) for k, v in u.query.items()})
        if "connect_timeout" not in params and not os.environ.get("PGCONNECT_TIMEOUT"):
            params["connect_timeout"] = "10"
        return params

    def conninfo(self) -> str:
        """libpq keyword string for psycopg (password included: never log this)."""
        return str(psycopg.conninfo.make_conninfo(**self.conn_params()))

    def client_conninfo(self) -> str:
        """The same connection for pg_dump/psql ``--dbname``, with every secret left out: the
        password goes through the environment (:meth:`libpq_env`), never a command line."""
        params = {k: v for k, v in self.conn_params().items() if k not in SECRET_PARAMS}
        return str(psycopg.conninfo.make_conninfo(**params))

    def libpq_env(self) -> dict[str, str]:
        """Environment for pg_dump/pg_restore/psql: ours (libpq reads the same PG* variables
        for our own connection), plus the password."""
        env = dict(os.environ)
        password = self.conn_params().get("password")
        if password:
            env["PGPASSWORD"] = password
        return env

    def endpoint(self, conn: Any = None) -> tuple[str, int]:
        """(host, port) that libpq actually connected to (a socket directory for a Unix
        socket): what a URL without host or port resolved to. Opens a connection unless
        given one (a psycopg connection to this target)."""
        if conn is not None:
            return str(conn.info.host), int(conn.info.port)
        c = self.connect(autocommit=True)
        try:
            return str(c.info.host), int(c.info.port)
        finally:
            c.close()

    def connect(self, *, autocommit: bool = False) -> Any:
        """A DBAPI connection: psycopg 3 for PostgreSQL, sqlite3 for SQLite."""
        if self.backend == "postgresql":
            try:
                return psycopg.connect(self.conninfo(), autocommit=autocommit, connect_timeout=10)
            except psycopg.Error as e:
                raise TargetError(f"target {self.display}: {first_line(e)}") from e
        path = self.sqlite_path
        if not path.exists():
            raise ConfigError(f"target {self.display}: database file {path} does not exist")
        try:
            conn = sqlite3.connect(
                path, timeout=30, isolation_level=None if autocommit else "DEFERRED"
            )
        except sqlite3.Error as e:
            raise TargetError(f"target {self.display}: {e}") from e
        conn.execute("PRAGMA busy_timeout=30000")
        return conn


def first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
