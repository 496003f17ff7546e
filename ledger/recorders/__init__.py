"""Storage of the ledger: the recorder registry, keyed by a URL's backend name.

Only this package knows SQL, and only its backend modules (:mod:`.sqlite`, :mod:`.postgres`)
know a backend's quirks: everything else that depends on the backend (which URLs are
accepted, whether a URL names a file, how the database is opened) asks the class registered
here for the URL's backend, so adding a backend is one module and one line below.

A backend's module is imported when a URL first names it: a SQLite ledger never loads the
PostgreSQL recorder, nor SQLAlchemy, which only that one (and :mod:`.tables`) uses.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ConfigurationError
from ..url import DatabaseURL, as_database_url, parse_url, redact
from .base import Appending, Builder, Recorder, Tip
from .urls import RULES

if TYPE_CHECKING:
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
    "database_url",
    "events",
    "keys",
    "metadata",
    "normalize_url",
    "recorder_class",
    "recorder_for",
    "seals",
]

# Backend name -> (module, class, the URL schemes operators write for it). The class's own
# ``dialect_name`` and ``schemes`` say the same (tests/test_ledger_recorder_contract.py).
_BACKENDS: dict[str, tuple[str, str, frozenset[str]]] = {
    "sqlite": (".sqlite", "SQLiteRecorder", frozenset({"sqlite", "sqlite+pysqlite"})),
    "postgresql": (".postgres", "PostgresRecorder", frozenset(
        {"postgresql", "postgres", "postgresql+psycopg", "postgresql+psycopg3"})),
}
_BY_SCHEME = {scheme: name for name, (_, _, schemes) in _BACKENDS.items() for scheme in schemes}


def _load(name: str) -> type[Recorder]:
    module, cls, _ = _BACKENDS[name]
    loaded: type[Recorder] = getattr(importlib.import_module(module, __name__), cls)
    return loaded


class _Registry(Mapping[str, type[Recorder]]):
    """RECORDERS: backend name -> recorder class, each imported when first looked up."""

    def __getitem__(self, name: str) -> type[Recorder]:
        if name not in _BACKENDS:
            raise KeyError(name)
        return _load(name)

    def __iter__(self) -> Iterator[str]:
        return iter(_BACKENDS)

    def __len__(self) -> int:
        return len(_BACKENDS)


RECORDERS: Mapping[str, type[Recorder]] = _Registry()


def database_url(
    url: str, base_dir: Path | None = None, *, what: str = "URL", shown: str | None = None
) -> DatabaseURL:
    """Accept ``sqlite:///path``, libpq ``postgresql://user@host:port/db`` and SQLAlchemy's
    ``postgresql+psycopg://...``. A relative SQLite path is resolved against ``base_dir``.

    Messages show ``shown`` (say, the URL as written, with its ``${VAR}`` references) or else
    the URL without its password: a URL too broken to parse may hold a secret anywhere."""
    u, disp = parse_url(url, what=what, shown=shown)
    name = _BY_SCHEME.get(u.drivername)
    if name is None:
        raise ConfigurationError(
            f"{what} {disp!r}: unsupported scheme {u.drivername!r} (use sqlite:///path or "
            "postgresql://user@host:port/db)"
        )
    return as_database_url(RULES[name][0](u, base_dir, what, disp))


def normalize_url(
    url: str, base_dir: Path | None = None, *, what: str = "URL", shown: str | None = None
) -> Any:
    """:func:`database_url` as SQLAlchemy's ``URL`` (imports SQLAlchemy), for callers that
    hand it to SQLAlchemy."""
    return database_url(url, base_dir, what=what, shown=shown).sqlalchemy()


def recorder_class(url: Any) -> type[Recorder]:
    """The recorder class for a URL as :func:`database_url` (or :func:`normalize_url`)
    returns it."""
    name = url.get_backend_name()
    if name not in _BACKENDS:
        raise ConfigurationError(f"no ledger backend for {redact(url)!r}")
    return _load(name)


def recorder_for(url: Any, shown: str | None = None) -> Recorder:
    """The recorder of a normalized URL; its messages show ``shown`` (the URL as the user
    gave it, redacted) or else the normalized URL redacted."""
    u = as_database_url(url)
    return recorder_class(u)(u, shown)


def database_file(url: Any, base_dir: Path | None = None) -> Path | None:
    """The file a ledger URL names (a SQLite ledger), None for a server database.

    ``url``: a URL as :func:`database_url` or :func:`normalize_url` returns it, or a string
    it is given (a relative path resolved against ``base_dir``)."""
    u = database_url(url, base_dir) if isinstance(url, str) else as_database_url(url)
    name = u.get_backend_name()
    if name not in RULES:
        raise ConfigurationError(f"no ledger backend for {redact(u)!r}")
    return RULES[name][1](u)


def __getattr__(name: str) -> Any:
    # The SQLAlchemy tables (the PostgreSQL recorder's, and the benchmarks'), loaded on use.
    if name in ("events", "keys", "metadata", "seals"):
        from . import tables

        return getattr(tables, name)
    if name in ("PostgresRecorder", "SQLiteRecorder"):
        return _load("sqlite" if name == "SQLiteRecorder" else "postgresql")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
