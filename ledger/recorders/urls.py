"""Which URLs each backend accepts, in which form it opens them, and which name a file: the
part of a backend's quirks that checking a configuration needs. Here, apart from the
recorders, so that reading a configuration that names a PostgreSQL target (or ledger) loads
neither the PostgreSQL recorder nor SQLAlchemy; the recorder classes answer with these."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ..errors import ConfigurationError
from ..url import DatabaseURL


def sqlite_url(u: DatabaseURL, base_dir: Path | None, what: str, shown: str) -> DatabaseURL:
    db = u.database
    if not db or db == ":memory:":
        raise ConfigurationError(f"{what} {shown!r} needs a file path (sqlite:///path)")
    try:
        path = Path(db).expanduser()
    except RuntimeError as e:  # ~user of a user that does not exist
        raise ConfigurationError(f"{what} {shown!r}: {e}") from e
    if not path.is_absolute() and base_dir is not None:
        path = base_dir / path
    return u.set(drivername="sqlite", database=str(path))


def postgresql_url(u: DatabaseURL, base_dir: Path | None, what: str, shown: str
                   ) -> DatabaseURL:
    if not u.database:
        raise ConfigurationError(f"{what} {shown!r} names no database")
    repeated = sorted(k for k, v in u.query.items() if not isinstance(v, str))
    if repeated:
        # libpq would take one of them; which one must not be a guess.
        raise ConfigurationError(
            f"{what} {shown!r}: parameter {repeated[0]!r} is given more than once"
        )
    return u.set(drivername="postgresql+psycopg")


def sqlite_file(u: DatabaseURL) -> Path | None:
    return Path(u.database) if u.database else None


def no_file(u: DatabaseURL) -> Path | None:
    return None


#: backend name -> (normalize a URL of its schemes, the file a normalized URL names)
RULES: dict[str, tuple[Callable[[DatabaseURL, Path | None, str, str], DatabaseURL],
                       Callable[[DatabaseURL], Path | None]]] = {
    "sqlite": (sqlite_url, sqlite_file),
    "postgresql": (postgresql_url, no_file),
}
