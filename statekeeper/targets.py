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

from .errors import ConfigError, TargetError


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
        return cls(u, redact(u))

    @property
    def backend(self) -> str:
        return str(self.url.get_backend_name())

    @property
    def sqlite_path(self) -> Path:
        if self.backend != "sqlite" or not self.url.database:
            raise TargetError(f"target {self.display} is not a SQLite database")
        return Path(self.url.database)

    @property
    def database(self) -> str:
        return str(self.url.database)

    def conninfo(self) -> str:
        """libpq keyword string for psycopg (password included: never log this)."""
        parts = {
            "host": self.url.host or "localhost",
            "port": str(self.url.port or 5432),
            "dbname": self.url.database,
            "user": self.url.username,
            "password": self.url.password,
        }
        parts.update({k: str(v) for k, v in self.url.query.items()})
        return psycopg.conninfo.make_conninfo(**{k: v for k, v in parts.items() if v})

    def libpq_env(self) -> dict[str, str]:
        """Environment for pg_dump/pg_restore/psql: the password travels here, not on argv."""
        env = dict(os.environ)
        env.update({
            "PGHOST": self.url.host or "localhost",
            "PGPORT": str(self.url.port or 5432),
            "PGDATABASE": self.database,
        })
        if self.url.username:
            env["PGUSER"] = self.url.username
        if self.url.password:
            env["PGPASSWORD"] = str(self.url.password)
        return env

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
