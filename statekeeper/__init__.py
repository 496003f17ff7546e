"""statekeeper: safe, resumable, audited upgrades of database-backed applications.

The public API is what this module exports; the verbs live in :mod:`statekeeper.command`.
"""

__version__ = "0.1.0"

from .config import Config, load_config
from .errors import (
    BackupCorrupt,
    BackupError,
    BackupNotFound,
    ConfigError,
    IntegrityError,
    IrreversibleError,
    LockHeld,
    MigrationError,
    NeedsAttention,
    RestoreIncomplete,
    RestoreMismatch,
    StatekeeperError,
    TargetError,
    ValidationError,
    WrongDatabase,
)

__all__ = [
    "BackupCorrupt",
    "BackupError",
    "BackupNotFound",
    "Config",
    "ConfigError",
    "IntegrityError",
    "IrreversibleError",
    "LockHeld",
    "MigrationError",
    "NeedsAttention",
    "RestoreIncomplete",
    "RestoreMismatch",
    "StatekeeperError",
    "TargetError",
    "ValidationError",
    "WrongDatabase",
    "__version__",
    "load_config",
]
