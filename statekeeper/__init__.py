"""statekeeper: safe, resumable, audited upgrades of database-backed applications.

The public API is what this module exports: the verbs (:mod:`statekeeper.command`, which the
CLI calls), the values they return (:class:`Run`, :class:`Plan`, :class:`Manifest`, ...) and
the one exception tree (:mod:`statekeeper.errors`). Importing it is cheap: the verbs and the
types that need the state machine or the backup package load on first access (PEP 562).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._version import __version__
from .config import Config, load_config
from .errors import (
    BackupCorrupt,
    BackupError,
    BackupNotFound,
    ConfigError,
    HistoryError,
    IllegalTransition,
    IntegrityError,
    IrreversibleError,
    LedgerUnavailable,
    LockHeld,
    MigrationError,
    NeedsAttention,
    OSFailure,
    RestoreIncomplete,
    RestoreMismatch,
    StatekeeperError,
    StreamConflict,
    TargetError,
    ValidationError,
    WrongDatabase,
)
from .plan import BackupPlan, Plan, PlannedMigration

if TYPE_CHECKING:
    from .backups import Manifest
    from .command import (
        backup_create,
        backup_list,
        backup_restore,
        backup_verify,
        history,
        init,
        keys_generate,
        keys_list,
        keys_rotate,
        ledger_append,
        ledger_checkpoint,
        ledger_export,
        ledger_verify,
        ledger_verify_export,
        migrate_down,
        migrate_sql,
        migrate_status,
        migrate_tag,
        migrate_up,
        migrate_validate,
        plan,
        resume,
        rollback,
        start,
        status,
    )
    from .replay import Run, StepRecord
    from .settings import Settings
    from .upgrade import Unreadable

# Loaded on first access (PEP 562): importing the package imports only the modules above, so
# a submodule's ``from . import x`` never finds the package half-initialised.
_LAZY: dict[str, str] = {
    "backup_create": "statekeeper.command",
    "backup_list": "statekeeper.command",
    "backup_restore": "statekeeper.command",
    "backup_verify": "statekeeper.command",
    "history": "statekeeper.command",
    "init": "statekeeper.command",
    "keys_generate": "statekeeper.command",
    "keys_list": "statekeeper.command",
    "keys_rotate": "statekeeper.command",
    "ledger_append": "statekeeper.command",
    "ledger_checkpoint": "statekeeper.command",
    "ledger_export": "statekeeper.command",
    "ledger_verify": "statekeeper.command",
    "ledger_verify_export": "statekeeper.command",
    "migrate_down": "statekeeper.command",
    "migrate_sql": "statekeeper.command",
    "migrate_status": "statekeeper.command",
    "migrate_tag": "statekeeper.command",
    "migrate_up": "statekeeper.command",
    "migrate_validate": "statekeeper.command",
    "plan": "statekeeper.command",
    "resume": "statekeeper.command",
    "rollback": "statekeeper.command",
    "start": "statekeeper.command",
    "status": "statekeeper.command",
    "Settings": "statekeeper.settings",
    "Manifest": "statekeeper.backups",
    "Run": "statekeeper.replay",
    "StepRecord": "statekeeper.replay",
    "Unreadable": "statekeeper.upgrade",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


__all__ = [
    "BackupCorrupt", "BackupError", "BackupNotFound", "BackupPlan", "Config", "ConfigError",
    "HistoryError", "IllegalTransition", "IntegrityError", "IrreversibleError",
    "LedgerUnavailable", "LockHeld", "Manifest", "MigrationError", "NeedsAttention",
    "OSFailure", "Plan", "PlannedMigration", "RestoreIncomplete", "RestoreMismatch", "Run",
    "Settings", "StatekeeperError", "StepRecord", "StreamConflict", "TargetError",
    "Unreadable", "ValidationError", "WrongDatabase", "__version__", "backup_create",
    "backup_list", "backup_restore", "backup_verify", "history", "init", "keys_generate",
    "keys_list", "keys_rotate", "ledger_append", "ledger_checkpoint", "ledger_export",
    "ledger_verify", "ledger_verify_export", "load_config", "migrate_down", "migrate_sql",
    "migrate_status", "migrate_tag", "migrate_up", "migrate_validate", "plan", "resume",
    "rollback", "start", "status",
]
