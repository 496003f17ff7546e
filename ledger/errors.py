"""The one exception tree of the ``ledger`` package.

::

    LedgerError
     ├── ConfigurationError        bad URL, unreadable or unsafe key file, malformed file
     │    └── KeyFileError
     ├── StreamConflict             optimistic concurrency: the stream moved on
     ├── IntegrityViolation         verification failed; carries ``seq`` and ``reason``
     └── OperationalError           the database failed (driver errors, translated once)
          └── LedgerUnreachable     no connection: closed port, bad host, refused login,
                                    a SQLite file that cannot be opened or created

Every error raised by the package is one of these; driver exceptions are chained with
``raise ... from e`` so the cause is kept for debugging but never leaks as the message.
"""

from __future__ import annotations


class LedgerError(Exception):
    """Base of every error the ledger raises."""


class ConfigurationError(LedgerError):
    """Bad input: a URL, a key file, a checkpoint or export file that cannot be used."""


class KeyFileError(ConfigurationError):
    """A private or public key file that is missing, malformed or unsafely readable."""


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
