"""Tracked SQL migrations on the target database: load, validate, apply, tag, roll back, lock.

* :mod:`.fileformat`: what a migration file says (:class:`Migration`, directives, checksums,
  tag names, the natural file order), checked when the files are loaded.
* :mod:`.changelog`: what is applied, in ``statekeeper_changelog`` and ``statekeeper_tags``
  in the target database.
* :mod:`.lock`: the target lock, one holder across processes and hosts.
* :mod:`.migrator`: :class:`Migrator`, which does the work under the lock.

What differs between SQLite and PostgreSQL is the target's dialect
(:mod:`statekeeper.dialects`), not this package's. Library only: nothing here prints or exits;
errors are :mod:`statekeeper.errors`.
"""

from __future__ import annotations

from .changelog import CHANGELOG_TABLE, TAGS_TABLE, AppliedMigration, MigrationStatus, Tag
from .fileformat import (
    DIRECTIVES,
    DOWN_MARKER,
    NO_TRANSACTION_MARKER,
    Migration,
    check_tag_name,
    checksum_of,
    find_transaction_control,
    load_migrations,
    natural_key,
    parse_migration,
    read_migration,
)
from .migrator import BaselinePlan, Migrator

__all__ = [
    "CHANGELOG_TABLE",
    "DIRECTIVES",
    "DOWN_MARKER",
    "NO_TRANSACTION_MARKER",
    "TAGS_TABLE",
    "AppliedMigration",
    "BaselinePlan",
    "Migration",
    "MigrationStatus",
    "Migrator",
    "Tag",
    "check_tag_name",
    "checksum_of",
    "find_transaction_control",
    "load_migrations",
    "natural_key",
    "parse_migration",
    "read_migration",
]
