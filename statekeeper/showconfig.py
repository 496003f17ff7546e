"""``statekeeper config show``: the effective configuration, each value with its origin (a
flag, an environment variable, statekeeper.toml or the default), secrets masked.

What is shown of a value from the file is the value as written: a ``${VAR}`` reference stays a
reference, never its value. Passwords are masked wherever they sit: in a URL's user-info, in a
query parameter such as ``?password=``, and in any value whose key names a secret (``password``,
``secret``, ``token``); a value made only of ``${VAR}`` references is shown, being a name.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

from .config import DEFAULT_LEDGER_URL, SCHEMA, Config
from .errors import StatekeeperError
from .masking import _keep, _secret_name, mask_url

__all__ = ["Entry", "effective", "mask", "mask_url"]

_ALWAYS = ("target.url", "migrations.dir")  # required by an upgrade: "not set" says so
_PATH_KEYS = {"ledger.key", "migrations.dir", "backup.dir", "backup.pgbackrest_config",
              "migrations.changelog", "migrations.properties"}


@dataclass(frozen=True)
class Entry:
    name: str  # "section.key"
    value: Any  # as written (file) or as given (flag, variable), masked; None: not set
    origin: str  # "flag", "env", "file", "default" or "unset"
    source: str | None  # the flag, the variable or the file; None for a default
    resolved: str | None = None  # a path key's absolute path

    def to_dict(self) -> dict[str, Any]:
        return {"value": self.value, "origin": self.origin, "source": self.source,
                "resolved": self.resolved}


def mask(value: Any, key: str = "") -> Any:
    """A value of the configuration fit to print: URLs and secret keys masked, at any depth."""
    if isinstance(value, dict):
        return {k: mask(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [mask(v, key) for v in value]
    if isinstance(value, str):
        if _secret_name(key):
            return _keep(value)
        return mask_url(value) if "://" in value else value
    return value


def _defaults(cfg: Config) -> dict[str, Any]:
    from .durations import format_ms
    from .health import DEFAULT_INTERVAL_MS, DEFAULT_RETRIES, DEFAULT_TIMEOUT_MS

    out: dict[str, Any] = {
        "ledger.url": DEFAULT_LEDGER_URL,
        "ledger.key": str(cfg.key_path()),
        "backup.dir": str(cfg.backup_dir()),
        "backup.enabled": True,
        "backup.cluster_databases": [],
        "backup.jobs": 1,
        "upgrade.application": cfg.base_dir.name,
        "upgrade.require_ticket": False,
        "health.checks": [],
        "health.retries": DEFAULT_RETRIES,
        "health.interval": format_ms(DEFAULT_INTERVAL_MS),
        "health.timeout": format_ms(DEFAULT_TIMEOUT_MS),
    }
    if cfg.migrations_tool == "liquibase":  # the files tool's configurations stay as shown
        out.update({"migrations.liquibase": "liquibase", "migrations.changelog": str(
            cfg.changelog)})
    if cfg.target_url:
        with contextlib.suppress(StatekeeperError):  # the target's backend decides
            out["backup.method"] = cfg.backup_method()
    return out


def _resolved(cfg: Config, name: str) -> str | None:
    if name not in _PATH_KEYS:
        return None
    path = {"ledger.key": cfg.ledger.key, "migrations.dir": cfg.migrations_dir,
            "backup.dir": cfg.backup.dir,
            "backup.pgbackrest_config": cfg.backup.pgbackrest_config,
            "migrations.changelog": cfg.changelog,
            "migrations.properties": cfg.liquibase_properties}[name]
    return None if path is None else str(path)


def _given(cfg: Config, name: str) -> str:
    """A flag's or a variable's value as the configuration holds it."""
    if name == "ledger.url":
        return cfg.ledger.url
    if name == "target.url":
        return cfg.target_url or ""
    return _resolved(cfg, name) or ""


def effective(cfg: Config) -> list[Entry]:
    """Every key that is set (by a flag, the environment or the file) or has a default, in the
    order of the schema; ``target.url`` and ``migrations.dir`` also when not set."""
    defaults = _defaults(cfg)
    out = []
    for section, keys in SCHEMA.items():
        for key in keys:
            name = f"{section}.{key}"
            origin = cfg.origins.get(name)
            if origin is not None and origin[0] == "file":
                value = cfg.written[name]
                out.append(Entry(name, mask(value, key), "file", origin[1],
                                 _resolved(cfg, name)))
            elif origin is not None:
                out.append(Entry(name, mask(_given(cfg, name), key), origin[0], origin[1],
                                 _resolved(cfg, name)))
            elif name in defaults:
                out.append(Entry(name, mask(defaults[name], key), "default", None))
            elif name in _ALWAYS:
                out.append(Entry(name, None, "unset", None))
    return out
