"""A generic signed, hash-chained, append-only event store (SQLite and PostgreSQL).

Knows nothing of upgrades. The public API is what this module exports, each name imported
when it is first used (PEP 562): ``import ledger`` and ``import ledger.errors`` load neither
SQLAlchemy nor cryptography, so a caller can recognise the ledger's errors for free. Modules
inside the package import from the submodules, never from here.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .chain import Head, KeyRecord, Seal, StoredEvent
    from .checkpoint import Checkpoint, parse_checkpoint
    from .errors import (
        CanonicalError,
        ConfigurationError,
        ConstraintViolation,
        IntegrityViolation,
        KeyFileError,
        LedgerError,
        LedgerUnreachable,
        OperationalError,
        StreamConflict,
    )
    from .exports import ExportResult, ExportVerifyResult, export, verify_export
    from .keys import PublicKey, Signer, generate_key_file, load_public_key, load_signer
    from .recorders import database_file, database_url, normalize_url
    from .store import Ledger, NewEvent, VerifyResult, format_time
    from .url import DatabaseURL, redact

# Public name -> the submodule that defines it.
_EXPORTS = {
    "Head": "chain", "KeyRecord": "chain", "Seal": "chain", "StoredEvent": "chain",
    "Checkpoint": "checkpoint", "parse_checkpoint": "checkpoint",
    "CanonicalError": "errors", "ConfigurationError": "errors", "ConstraintViolation": "errors",
    "IntegrityViolation": "errors", "KeyFileError": "errors", "LedgerError": "errors",
    "LedgerUnreachable": "errors", "OperationalError": "errors", "StreamConflict": "errors",
    "ExportResult": "exports", "ExportVerifyResult": "exports", "export": "exports",
    "verify_export": "exports",
    "PublicKey": "keys", "Signer": "keys", "generate_key_file": "keys",
    "load_public_key": "keys", "load_signer": "keys",
    "database_file": "recorders", "database_url": "recorders", "normalize_url": "recorders",
    "Ledger": "store", "NewEvent": "store", "VerifyResult": "store", "format_time": "store",
    "DatabaseURL": "url", "redact": "url",
}

__all__ = [
    "CanonicalError",
    "Checkpoint",
    "ConfigurationError",
    "ConstraintViolation",
    "DatabaseURL",
    "ExportResult",
    "ExportVerifyResult",
    "Head",
    "IntegrityViolation",
    "KeyFileError",
    "KeyRecord",
    "Ledger",
    "LedgerError",
    "LedgerUnreachable",
    "NewEvent",
    "OperationalError",
    "PublicKey",
    "Seal",
    "Signer",
    "StoredEvent",
    "StreamConflict",
    "VerifyResult",
    "database_file",
    "database_url",
    "export",
    "format_time",
    "generate_key_file",
    "load_public_key",
    "load_signer",
    "normalize_url",
    "parse_checkpoint",
    "redact",
    "verify_export",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        # Not an export: let ``from ledger import canonical`` find the submodule.
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value  # once: later lookups do not come here
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
