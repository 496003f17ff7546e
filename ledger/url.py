"""Database URLs as operators write them, normalised for SQLAlchemy; passwords never shown."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from .errors import ConfigurationError

_PG_SCHEMES = {"postgresql", "postgres", "postgresql+psycopg", "postgresql+psycopg3"}


def normalize_url(
    url: str, base_dir: Path | None = None, *, what: str = "URL", shown: str | None = None
) -> URL:
    """Accept ``sqlite:///path``, libpq ``postgresql://user@host:port/db`` and SQLAlchemy's
    ``postgresql+psycopg://...``. A relative SQLite path is resolved against ``base_dir``.

    Messages show ``shown`` (say, the URL as written, with its ``${VAR}`` references) or else
    the URL without its password: a URL too broken to parse may hold a secret anywhere."""
    if not isinstance(url, str) or not url.strip():
        raise ConfigurationError(f"{what} is empty")
    disp = redact(url) if shown is None else shown
    try:
        u = make_url(url.strip())
    except (ArgumentError, ValueError) as e:  # ValueError: a port that is not a number
        raise ConfigurationError(f"{what} {disp!r} is not a database URL") from e
    parts = [u.username, u.password, u.host, u.database, *u.query]
    parts += [x for v in u.query.values() for x in ((v,) if isinstance(v, str) else v)]
    if "\0" in url or any(p and "\0" in str(p) for p in parts):
        # libpq and SQLite end a string at a NUL: what follows it would silently vanish
        raise ConfigurationError(f"{what} {disp!r} contains a NUL byte")
    scheme = u.drivername
    if scheme in _PG_SCHEMES:
        if not u.database:
            raise ConfigurationError(f"{what} {disp!r} names no database")
        repeated = sorted(k for k, v in u.query.items() if not isinstance(v, str))
        if repeated:
            # libpq would take one of them; which one must not be a guess.
            raise ConfigurationError(
                f"{what} {disp!r}: parameter {repeated[0]!r} is given more than once"
            )
        return u.set(drivername="postgresql+psycopg")
    if scheme in {"sqlite", "sqlite+pysqlite"}:
        db = u.database
        if not db or db == ":memory:":
            raise ConfigurationError(f"{what} {disp!r} needs a file path (sqlite:///path)")
        try:
            path = Path(db).expanduser()
        except RuntimeError as e:  # ~user of a user that does not exist
            raise ConfigurationError(f"{what} {disp!r}: {e}") from e
        if not path.is_absolute() and base_dir is not None:
            path = base_dir / path
        return u.set(drivername="sqlite", database=str(path))
    raise ConfigurationError(
        f"{what} {disp!r}: unsupported scheme {scheme!r} (use sqlite:///path or "
        "postgresql://user@host:port/db)"
    )


def redact(url: str | URL) -> str:
    """Return the URL with any password replaced by ``***``."""
    try:
        u = url if isinstance(url, URL) else make_url(url)
    except (ArgumentError, ValueError):
        # Not parseable: show only the scheme so a password can never slip through.
        text = str(url)
        return text.split("://", 1)[0] + "://***" if "://" in text else "***"
    if u.query and any(_secret(k) for k in u.query):
        u = u.set(query={k: ("***" if _secret(k) else v) for k, v in u.query.items()})
    return u.render_as_string(hide_password=True)


def _secret(param: str) -> bool:
    # password, sslpassword, scram_client_key, scram_server_key, oauth_client_secret
    return any(w in param.lower() for w in ("password", "secret", "scram"))


def sqlite_path(u: URL) -> Path | None:
    return Path(u.database) if u.get_backend_name() == "sqlite" and u.database else None
