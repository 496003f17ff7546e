"""SQLite targets: a file, the stdlib driver, a lock file beside it."""

from __future__ import annotations

from .base import Dialect


class SqliteDialect(Dialect):
    name = "sqlite"
    backup_methods = ("sqlite",)
