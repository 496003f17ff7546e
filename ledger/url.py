"""Database URLs as operators write them; passwords never shown.

Parsed here, without SQLAlchemy (a SQLite ledger never loads it), into a
:class:`DatabaseURL`: the same components, the same parse and the same rendering as
SQLAlchemy's ``URL`` (its RFC-1738 pattern, its quoting), and :meth:`DatabaseURL.sqlalchemy`
for the code that hands a URL to SQLAlchemy (the PostgreSQL recorder, the statekeeper side).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, NamedTuple
from urllib.parse import parse_qsl, quote, quote_plus, unquote

from .errors import ConfigurationError

# SQLAlchemy's own pattern (sqlalchemy/engine/url.py, _parse_url), so that a URL means the
# same here as wherever SQLAlchemy parses it.
_PATTERN = re.compile(
    r"""
        (?P<name>[\w\+]+)://
        (?:
            (?P<username>[^:/]*)
            (?::(?P<password>[^@]*))?
        @)?
        (?:
            (?:
                \[(?P<ipv6host>[^/\?]+)\] |
                (?P<ipv4host>[^/:\?]+)
            )?
            (?::(?P<port>[^/\?]*))?
        )?
        (?:/(?P<database>[^\?]*))?
        (?:\?(?P<query>.*))?
    """,
    re.X,
)


class DatabaseURL(NamedTuple):
    """A parsed database URL; the attributes and methods are those of SQLAlchemy's ``URL``
    that the ledger and statekeeper use."""

    drivername: str
    username: str | None = None
    password: str | None = None
    host: str | None = None
    port: int | None = None
    database: str | None = None
    query: Mapping[str, str | tuple[str, ...]] = {}

    def get_backend_name(self) -> str:
        return self.drivername.split("+")[0]

    def get_driver_name(self) -> str | None:
        return self.drivername.split("+")[1] if "+" in self.drivername else None

    def set(self, **kw: Any) -> DatabaseURL:
        if "query" in kw:
            kw["query"] = _frozen_query(kw["query"])
        return self._replace(**kw)

    def render_as_string(self, hide_password: bool = True) -> str:
        s = self.drivername + "://"
        if self.username is not None:
            s += quote(self.username, safe=" +")
            if self.password is not None:
                s += ":" + ("***" if hide_password else quote(str(self.password), safe=" +"))
            s += "@"
        if self.host is not None:
            s += f"[{self.host}]" if ":" in self.host else self.host
        if self.port is not None:
            s += ":" + str(self.port)
        if self.database is not None:
            s += "/" + quote(self.database, safe=" +/")
        if self.query:
            s += "?" + "&".join(
                f"{quote_plus(k)}={quote_plus(v)}"
                for k in sorted(self.query)
                for v in _values(self.query[k])
            )
        return s

    def __str__(self) -> str:
        return self.render_as_string()

    def sqlalchemy(self) -> Any:
        """The same URL as SQLAlchemy's ``URL`` (imports SQLAlchemy)."""
        from sqlalchemy.engine import URL

        return URL.create(self.drivername, self.username, self.password, self.host,
                          self.port, self.database, self.query)


def _values(v: str | tuple[str, ...] | list[str]) -> tuple[str, ...]:
    return (v,) if isinstance(v, str) else tuple(v)


def _frozen_query(q: Mapping[str, Any]) -> dict[str, str | tuple[str, ...]]:
    return {k: (v if isinstance(v, str) else tuple(v)) for k, v in q.items()}


def as_database_url(u: Any) -> DatabaseURL:
    """``u`` (a DatabaseURL, or SQLAlchemy's URL) as a DatabaseURL."""
    if isinstance(u, DatabaseURL):
        return u
    return DatabaseURL(u.drivername, u.username, u.password, u.host, u.port, u.database,
                       _frozen_query(u.query))


def make_url(text: str) -> DatabaseURL:
    """Parse ``text`` as SQLAlchemy's ``make_url`` would; ValueError if it is not a URL."""
    m = _PATTERN.match(text)
    if m is None:
        raise ValueError("not a database URL")
    c = m.groupdict()
    query: dict[str, str | tuple[str, ...]] = {}
    if c["query"] is not None:
        for k, v in parse_qsl(c["query"]):
            old = query.get(k)
            query[k] = v if old is None else (*_values(old), v)
    user, password, database = (
        unquote(x) if x is not None else None for x in (c["username"], c["password"],
                                                       c["database"])
    )
    # ValueError: a port that is not a number (or empty: "h:/db", as SQLAlchemy says)
    port = int(c["port"]) if c["port"] is not None else None
    return DatabaseURL(c["name"], user, password, c["ipv4host"] or c["ipv6host"], port,
                       database, query)


def parse_url(
    url: str, *, what: str = "URL", shown: str | None = None
) -> tuple[DatabaseURL, str]:
    """Parse a database URL as an operator wrote it; return it and how messages show it:
    ``shown`` (say, the URL as written, with its ``${VAR}`` references) or else the URL
    without its password (a URL too broken to parse may hold a secret anywhere). What each
    backend accepts is its recorder's to check (``ledger.recorders.normalize_url``)."""
    if not isinstance(url, str) or not url.strip():
        raise ConfigurationError(f"{what} is empty")
    disp = redact(url) if shown is None else shown
    try:
        u = make_url(url.strip())
    except ValueError as e:
        raise ConfigurationError(f"{what} {disp!r} is not a database URL") from e
    if _ambiguous(u):
        raise ConfigurationError(
            f"{what} {disp!r}: an '@' in its user name or password must be written %40 (as "
            "written, part of the password would be taken for the host)")
    parts = [u.username, u.password, u.host, u.database, *u.query]
    parts += [x for v in u.query.values() for x in _values(v)]
    if "\0" in url or any(p and "\0" in str(p) for p in parts):
        # libpq and SQLite end a string at a NUL: what follows it would silently vanish
        raise ConfigurationError(f"{what} {disp!r} contains a NUL byte")
    return u, disp


def redact(url: Any) -> str:
    """Return the URL (text, a DatabaseURL or SQLAlchemy's URL) with any password replaced
    by ``***``."""
    try:
        u = make_url(url) if isinstance(url, str) else as_database_url(url)
    except ValueError:
        # Not parseable: show only the scheme so a password can never slip through.
        text = str(url)
        return text.split("://", 1)[0] + "://***" if "://" in text else "***"
    if _ambiguous(u):  # where the password ends cannot be told: nothing after the scheme
        return f"{u.drivername}://***"
    if u.query and any(_secret(k) for k in u.query):
        u = u.set(query={k: ("***" if _secret(k) else v) for k, v in u.query.items()})
    return u.render_as_string(hide_password=True)


def _ambiguous(u: DatabaseURL) -> bool:
    """An unencoded '@' in the password: the parser took what follows the first '@' for the
    host, so "redacting the password" would show the rest of it (and resolve it in DNS)."""
    return bool(u.host and "@" in u.host)


def _secret(param: str) -> bool:
    # password, sslpassword, scram_client_key, scram_server_key, oauth_client_secret
    return any(w in param.lower() for w in ("password", "secret", "scram"))
