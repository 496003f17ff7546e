"""Storage of the ledger: the recorder registry, keyed by a URL's backend name.

Only this package knows SQL, and only its backend modules (:mod:`.sqlite`, :mod:`.postgres`)
know a backend's quirks: everything else that depends on the backend (which URLs are
accepted, whether a URL names a file, how the database is opened) asks the class registered
here for the URL's backend, so adding a backend is one module and one line below.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy.engine import URL

from ..errors import ConfigurationError
from ..url import parse_url, redact
from .base import Appending, Builder, Recorder, Tip, events, keys, metadata, seals
from .postgres import PostgresRecorder
from .sqlite import SQLiteRecorder

__all__ = [
    "RECORDERS",
    "Appending",
    "Builder",
    "PostgresRecorder",
    "Recorder",
    "SQLiteRecorder",
    "Tip",
    "database_file",
    "events",
    "keys",
    "metadata",
    "normalize_url",
    "recorder_class",
    "recorder_for",
    "seals",
]

RECORDERS: dict[str, type[Recorder]] = {
    cls.dialect_name: cls for cls in (SQLiteRecorder, PostgresRecorder)
}
# The schemes operators write (``postgres://``, ``sqlite+pysqlite://``...), per backend.
_BY_SCHEME: dict[str, type[Recorder]] = {
    scheme: cls for cls in RECORDERS.values() for scheme in cls.schemes
}


def normalize_url(
    url: str, base_dir: Path | None = None, *, what: str = "URL", shown: str | None = None
) -> URL:
    """Accept ``sqlite:///path``, libpq ``postgresql://user@host:port/db`` and SQLAlchemy's
    ``postgresql+psycopg://...``. A relative SQLite path is resolved against ``base_dir``.

    Messages show ``shown`` (say, the URL as written, with its ``${VAR}`` references) or else
    the URL without its password: a URL too broken to parse may hold a secret anywhere."""
    u, disp = parse_url(url, what=what, shown=shown)
    cls = _BY_SCHEME.get(u.drivername)
    if cls is None:
        raise ConfigurationError(
            f"{what} {disp!r}: unsupported scheme {u.drivername!r} (use sqlite:///path or "
            "postgresql://user@host:port/db)"
        )
    return cls.normalize_url(u, base_dir, what, disp)


def recorder_class(url: URL) -> type[Recorder]:
    """The recorder class for a URL as :func:`normalize_url` returns it."""
    cls = RECORDERS.get(url.get_backend_name())
    if cls is None:
        raise ConfigurationError(f"no ledger backend for {redact(url)!r}")
    return cls


def recorder_for(url: URL, shown: str | None = None) -> Recorder:
    """The recorder of a normalized URL; its messages show ``shown`` (the URL as the user
    gave it, redacted) or else the normalized URL redacted."""
    return recorder_class(url)(url, shown)


def database_file(url: str | URL, base_dir: Path | None = None) -> Path | None:
    """The file a ledger URL names (a SQLite ledger), None for a server database.

    ``url``: a URL as :func:`normalize_url` returns it, or a string it is given (a relative
    path resolved against ``base_dir``)."""
    u = normalize_url(url, base_dir) if isinstance(url, str) else url
    return recorder_class(u).database_file(u)
