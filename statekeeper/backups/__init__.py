"""Verified backups and restores of the target database.

Three methods, chosen by ``[backup] method`` (the target's dialect names the ones that can
serve it, the first being the default):

* ``pg_dump`` (default for PostgreSQL): a custom-format dump taken in the same snapshot as the
  fingerprint; restore drops every user schema and replays the dump in ONE transaction, so a
  failed restore leaves the database as it was and objects created after the backup vanish.
* ``pgbackrest``: a real pgBackRest backup plus a named restore point taken right after it;
  restore is a point-in-time restore of the whole cluster to that restore point.
* ``sqlite``: the online backup API; restore replaces the file atomically.

Modules: :mod:`.model` (the manifest, the method protocol, ids), :mod:`.manager` (the backup
directory and the checks around a method), one module per method, and :mod:`.pgtools` (the
PostgreSQL client tools both PostgreSQL methods use). Importing this package loads no database
driver: a method is imported when it first runs.

This package is a library: it never prints or exits; it returns values or raises typed errors.
"""

from .manager import BackupManager, manager_for
from .model import (
    MANIFEST_NAME,
    METHODS,
    Created,
    Hook,
    Manifest,
    Method,
    MethodOptions,
    RestoreResult,
    check_backup_id,
    sha256_file,
)

__all__ = [
    "MANIFEST_NAME",
    "METHODS",
    "BackupManager",
    "Created",
    "Hook",
    "Manifest",
    "Method",
    "MethodOptions",
    "RestoreResult",
    "check_backup_id",
    "manager_for",
    "sha256_file",
]
