"""The one exception tree of the ``statekeeper`` package, and the exit code each maps to.

::

    StatekeeperError
     ├── ConfigError              exit 2  bad statekeeper.toml, flag, path or URL
     ├── TargetError              exit 1  the target database refused or failed an operation
     │    ├── MigrationError              a migration failed (id, position, server message)
     │    ├── ValidationError     exit 2  an applied migration was edited or removed
     │    └── IrreversibleError   exit 2  rollback to a tag crosses a migration with no down part
     ├── BackupError              exit 1  a backup or restore failed
     │    ├── BackupNotFound      exit 2  no complete backup with that id
     │    ├── WrongDatabase       exit 2  a restore into another database than the one backed up
     │    ├── RestoreMismatch     exit 3  restored, but the fingerprint differs from the backup's
     │    ├── RestoreIncomplete   exit 3  a cluster restore stopped half-way (server may be down)
     │    └── BackupCorrupt       exit 4  an artifact does not match its manifest
     ├── NeedsAttention           exit 3  a run is failed or in an unknown state: a human decides
     ├── IntegrityError           exit 4  the ledger or a run's history does not verify
     └── LockHeld                 exit 5  another run or process holds the target

Ledger errors (:mod:`ledger.errors`) pass through unchanged; the CLI maps them as well
(integrity violation 4, configuration 2, stream conflict 5, operational errors 3).
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_ATTENTION = 3
EXIT_INTEGRITY = 4
EXIT_LOCKED = 5


class StatekeeperError(Exception):
    exit_code = EXIT_FAILED


class ConfigError(StatekeeperError):
    exit_code = EXIT_USAGE


class TargetError(StatekeeperError):
    exit_code = EXIT_FAILED


class MigrationError(TargetError):
    """A migration failed; the database is as it was before that migration (PostgreSQL)."""

    def __init__(self, migration_id: str, message: str, position: int | None = None) -> None:
        where = f" at character {position}" if position else ""
        super().__init__(f"migration {migration_id} failed{where}: {message}")
        self.migration_id = migration_id
        self.position = position
        self.server_message = message


class ValidationError(TargetError):
    exit_code = EXIT_USAGE


class IrreversibleError(TargetError):
    exit_code = EXIT_USAGE


class BackupError(StatekeeperError):
    exit_code = EXIT_FAILED


class BackupNotFound(BackupError):
    exit_code = EXIT_USAGE


class WrongDatabase(BackupError):
    exit_code = EXIT_USAGE


class RestoreMismatch(BackupError):
    exit_code = EXIT_ATTENTION

    def __init__(self, message: str, lines: list[str]) -> None:
        super().__init__(message)
        self.lines = lines  # the differences, table by table


class RestoreIncomplete(BackupError):
    exit_code = EXIT_ATTENTION


class BackupCorrupt(BackupError):
    exit_code = EXIT_INTEGRITY


class NeedsAttention(StatekeeperError):
    exit_code = EXIT_ATTENTION


class IntegrityError(StatekeeperError):
    exit_code = EXIT_INTEGRITY


class LockHeld(StatekeeperError):
    exit_code = EXIT_LOCKED
