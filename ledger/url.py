"""Database URLs as operators write them, parsed for SQLAlchemy; passwords never shown."""

from __future__ import annotations

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from .errors import ConfigurationError


def parse_url(url: str, *, what: str = "URL", shown: str | None = None) -> tuple[URL, str]:
    """Parse a database URL as an operator wrote it; return it and how messages show it:
    ``shown`` (say, the URL as written, with its ``${VAR}`` references) or else the URL
    without its password (a URL too broken to parse may hold a secret anywhere). What each
    backend accepts is its recorder's to check (``ledger.recorders.normalize_url``)."""
    if not isinstance(url, str) or not url.strip():
        raise ConfigurationError(f"{what} is empty")
    disp = redact(url) if shown is None else shown
    try:
        u = make_url(url.strip())
    except (ArgumentError, ValueError) as e:  # ValueError: a port that is not a number
        raise ConfigurationError(f"{what} {disp!r} is not a database URL") from e
    if _ambiguous(u):
        raise ConfigurationError(
            f"{what} {disp!r}: an '@' in its user name or password must be written %40 (as "
            "written, part of the password would be taken for the host)")
    parts = [u.username, u.password, u.host, u.database, *u.query]
    parts += [x for v in u.query.values() for x in ((v,) if isinstance(v, str) else v)]
    if "\0" in url or any(p and "\0" in str(p) for p in parts):
        # libpq and SQLite end a string at a NUL: what follows it would silently vanish
        raise ConfigurationError(f"{what} {disp!r} contains a NUL byte")
    return u, disp


def redact(url: str | URL) -> str:
    """Return the URL with any password replaced by ``***``."""
    try:
        u = url if isinstance(url, URL) else make_url(url)
    except (ArgumentError, ValueError):
        # Not parseable: show only the scheme so a password can never slip through.
        text = str(url)
        return text.split("://", 1)[0] + "://***" if "://" in text else "***"
    if _ambiguous(u):  # where the password ends cannot be told: nothing after the scheme
        return f"{u.drivername}://***"
    if u.query and any(_secret(k) for k in u.query):
        u = u.set(query={k: ("***" if _secret(k) else v) for k, v in u.query.items()})
    return u.render_as_string(hide_password=True)


def _ambiguous(u: URL) -> bool:
    """An unencoded '@' in the password: the parser took what follows the first '@' for the
    host, so "redacting the password" would show the rest of it (and resolve it in DNS)."""
    return bool(u.host and "@" in u.host)


def _secret(param: str) -> bool:
    # password, sslpassword, scram_client_key, scram_server_key, oauth_client_secret
    return any(w in param.lower() for w in ("password", "secret", "scram"))
