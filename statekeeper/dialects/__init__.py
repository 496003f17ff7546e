"""Target-side dialects: what differs between a SQLite and a PostgreSQL target lives here and
nowhere else (alembic's ``DefaultImpl`` registry, keyed by the URL's backend name).

Outside this package no code asks which backend a target is (tests/test_dialect_seam.py greps
for it): it asks the target's :class:`Dialect`.
"""

from __future__ import annotations

from .base import Dialect

__all__ = ["Dialect", "dialect_for", "dialect_for_url", "names"]


def _load() -> dict[str, Dialect]:
    from .postgres import PostgresDialect
    from .sqlite import SqliteDialect

    return {d.name: d for d in (SqliteDialect(), PostgresDialect())}


_REGISTRY: dict[str, Dialect] | None = None


def _registry() -> dict[str, Dialect]:
    global _REGISTRY
    if _REGISTRY is None:
        _REGISTRY = _load()
    return _REGISTRY


def names() -> tuple[str, ...]:
    return tuple(_registry())


def dialect_for(backend: str) -> Dialect:
    """The dialect for a SQLAlchemy backend name (``sqlite``, ``postgresql``)."""
    try:
        return _registry()[backend]
    except KeyError:
        raise LookupError(f"no target dialect for backend {backend!r}") from None


def dialect_for_url(url: str) -> Dialect | None:
    """The dialect a URL's scheme names (``postgresql+psycopg://`` and ``postgres://`` are
    ``postgresql``), or None for a scheme no dialect serves."""
    scheme = url.split(":", 1)[0].split("+", 1)[0].lower()
    return next((d for d in _registry().values() if scheme in d.schemes), None)
