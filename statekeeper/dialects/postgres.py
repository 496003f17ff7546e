"""PostgreSQL targets: psycopg 3, advisory locks, client tools."""

from __future__ import annotations

from .base import Dialect


class PostgresDialect(Dialect):
    name = "postgresql"
    backup_methods = ("pg_dump", "pgbackrest")
