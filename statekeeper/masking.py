"""Masking secrets in text: a URL's password and secret query parameters, a value under a key
that names a secret. Shared by ``statekeeper config show`` (:mod:`statekeeper.showconfig`) and
the log redaction (:mod:`statekeeper.logs`); it imports nothing of statekeeper, so that both
(and the modules that log) can use it without an import cycle."""

from __future__ import annotations

import re

MASK = "***"
SECRET_WORDS = ("password", "passwd", "secret", "scram", "token")
_REFS_ONLY = re.compile(r"(?:\$\{[A-Za-z_][A-Za-z0-9_]*\})+")


def _secret_name(name: str) -> bool:
    return any(w in name.lower() for w in SECRET_WORDS)


def _keep(text: str) -> str:
    """A secret's text: kept when it is only ``${VAR}`` references (names), else masked."""
    return text if _REFS_ONLY.fullmatch(text) else MASK


def mask_url(text: str) -> str:
    """The URL as written with its password and secret query parameters masked; the rest of
    it (scheme, host, ``${VAR}`` references) untouched."""
    sep = text.find("://")
    if sep < 0:
        return text
    head, rest = text[:sep + 3], text[sep + 3:]
    q = rest.find("?")
    path, query = (rest, "") if q < 0 else (rest[:q], rest[q:])
    at = path.rfind("@")  # the last one: a password may hold an unencoded '@' or '/'
    if at >= 0:
        user, colon, password = path[:at].partition(":")
        if colon:
            path = f"{user}:{_keep(password)}{path[at:]}"
    query = re.sub(r"([?&;])([^=&;#]*)=([^&;#]*)",
                   lambda m: m.group(0) if not _secret_name(m.group(2))
                   else f"{m.group(1)}{m.group(2)}={_keep(m.group(3))}", query)
    return head + path + query
