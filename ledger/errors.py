"""The one exception tree of the ``ledger`` package.

::

    LedgerError
     ├── ConfigurationError         bad URL, unreadable or unsafe key file, malformed file
     │    └── KeyFileError
     ├── CanonicalError             a value or text with no canonical JSON form
     │                              (raised by ledger.canonical; also a ValueError)
     ├── StreamConflict             optimistic concurrency: the stream moved on
     ├── IntegrityViolation         verification failed; carries ``seq`` and ``reason``
     └── OperationalError           the database failed (driver errors, translated once)
          ├── LedgerUnreachable     no connection: closed port, bad host, refused login,
          │                         a SQLite file that cannot be opened or created
          └── ConstraintViolation   a side table's key refused a row (another writer's)

Every error raised by the package is one of these; driver exceptions are chained with
``raise ... from e`` so the cause is kept for debugging but never leaks as the message. The
drivers' errors (sqlite3, psycopg, SQLAlchemy's) are translated in one place per backend: the
recorder's ``translate`` (ledger/recorders/sqlite.py, ledger/recorders/postgres.py).

This module imports nothing, and ``import ledger.errors`` neither SQLAlchemy nor cryptography:
a caller can recognise the ledger's errors without paying for the ledger.
"""

from __future__ import annotations


class LedgerError(Exception):
    """Base of every error the ledger raises."""


class ConfigurationError(LedgerError):
    """Bad input: a URL, a key file, a checkpoint or export file that cannot be used."""


class KeyFileError(ConfigurationError):
    """A private or public key file that is missing, malformed or unsafely readable."""


class CanonicalError(LedgerError, ValueError):
    """A value that has no canonical form (float, non-str key, lone surrogate, ...), or text
    that does not parse as the ledger's JSON (a float, a duplicate key). Also a ValueError:
    code that parses JSON catches that for both (``ledger.canonical`` raises it)."""


class StreamConflict(LedgerError):
    """An append expected a stream position that another writer already took."""

    def __init__(self, stream: str, expected: int, actual: int) -> None:
        super().__init__(
            f"stream {stream!r} is at position {actual}, expected {expected}: "
            "another writer appended first"
        )
        self.stream = stream
        self.expected = expected
        self.actual = actual


class IntegrityViolation(LedgerError):
    """Verification found the ledger (or an export) altered, truncated or unsealed."""

    def __init__(self, seq: int | None, reason: str, detail: str) -> None:
        where = f"seq {seq}" if seq is not None else "ledger"
        super().__init__(f"{where}: {reason}: {detail}")
        self.seq = seq
        self.reason = reason
        self.detail = detail


class OperationalError(LedgerError):
    """The database could not be reached or refused an operation."""


class LedgerUnreachable(OperationalError):
    """No connection to the ledger could be made. Raised once, where the ledger connects, with
    the location (password redacted) and the driver's reason on one line."""

    def __init__(self, where: str, reason: str) -> None:
        super().__init__(f"ledger unreachable: {where}: {reason}")
        self.where = where
        self.reason = reason


class ConstraintViolation(OperationalError):
    """A key or constraint of a side table (see ``Recorder.side_transaction``) refused a row:
    another writer inserted it first."""
