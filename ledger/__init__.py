"""A generic signed, hash-chained, append-only event store (SQLite and PostgreSQL).

Knows nothing of upgrades. The public API is what this module exports.
"""

from .chain import Head, KeyRecord, Seal, StoredEvent
from .checkpoint import Checkpoint, parse_checkpoint
from .errors import (
    ConfigurationError,
    IntegrityViolation,
    KeyFileError,
    LedgerError,
    LedgerUnreachable,
    OperationalError,
    StreamConflict,
)
from .export import ExportResult, ExportVerifyResult, export, verify_export
from .keys import PublicKey, Signer, generate_key_file, load_public_key, load_signer
from .store import Ledger, NewEvent, VerifyResult, format_time, parse_time
from .url import normalize_url, redact

__all__ = [
    "Checkpoint",
    "ConfigurationError",
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
    "export",
    "format_time",
    "generate_key_file",
    "load_public_key",
    "load_signer",
    "normalize_url",
    "parse_checkpoint",
    "parse_time",
    "redact",
    "verify_export",
]
