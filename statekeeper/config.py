"""``statekeeper.toml``: loading, ``${ENV}`` interpolation and validation up front.

Every message names the file and the key. Relative paths are resolved against the directory of
the file that holds them. A missing file is fine (the embedded defaults apply) unless it was
named explicitly with ``--config`` or ``STATEKEEPER_CONFIG``.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError

CONFIG_NAME = "statekeeper.toml"
DEFAULT_LEDGER_URL = "sqlite:///.statekeeper/ledger.db"
DEFAULT_KEY = ".statekeeper/signing-key.pem"
DEFAULT_BACKUP_DIR = ".statekeeper/backups"
BACKUP_METHODS = ("pg_dump", "pgbackrest", "sqlite")

_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")

# section -> key -> type; anything else in the file is refused (typos must not pass silently).
SCHEMA: dict[str, dict[str, type]] = {
    "ledger": {"url": str, "key": str},
    "target": {"url": str},
    "migrations": {"dir": str},
    "backup": {
        "method": str, "dir": str, "stanza": str, "stop_command": str, "start_command": str,
        "pgbackrest_config": str, "enabled": bool,
    },
    "upgrade": {"application": str},
    "deploy": {
        "releases_dir": str, "source": str, "config_files": list, "restart_command": str,
        "commands": list,
    },
    "health": {"checks": list, "retries": int, "interval": int, "timeout": int},
}


@dataclass
class LedgerConfig:
    url: str = DEFAULT_LEDGER_URL
    key: Path | None = None


@dataclass
class BackupConfig:
    method: str | None = None
    dir: Path | None = None
    stanza: str | None = None
    stop_command: str | None = None
    start_command: str | None = None
    pgbackrest_config: Path | None = None
    enabled: bool = True


@dataclass
class Config:
    path: Path | None
    base_dir: Path
    ledger: LedgerConfig = field(default_factory=LedgerConfig)
    target_url: str | None = None
    migrations_dir: Path | None = None
    backup: BackupConfig = field(default_factory=BackupConfig)
    raw: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def source(self) -> str:
        return str(self.path) if self.path else "(defaults)"

    def key_path(self) -> Path:
        return self.ledger.key or (self.base_dir / DEFAULT_KEY)

    def require_target(self) -> str:
        if not self.target_url:
            raise ConfigError(f"{self.source}: [target] url is not set")
        return self.target_url

    def require_migrations_dir(self) -> Path:
        if self.migrations_dir is None:
            raise ConfigError(f"{self.source}: [migrations] dir is not set")
        if not self.migrations_dir.is_dir():
            raise ConfigError(
                f"{self.source}: [migrations] dir {self.migrations_dir} is not a directory"
            )
        return self.migrations_dir

    def backup_method(self) -> str:
        """The configured method, or the default for the target's backend."""
        if self.backup.method:
            return self.backup.method
        url = self.require_target()
        return "sqlite" if url.startswith("sqlite") else "pg_dump"

    def backup_dir(self) -> Path:
        return self.backup.dir or (self.base_dir / DEFAULT_BACKUP_DIR)


def find_config(explicit: str | None, env: Mapping[str, str], cwd: Path) -> tuple[Path, bool]:
    """Return (path, must_exist)."""
    if explicit:
        return Path(explicit).expanduser().absolute(), True
    if env.get("STATEKEEPER_CONFIG"):
        return Path(env["STATEKEEPER_CONFIG"]).expanduser().absolute(), True
    return cwd / CONFIG_NAME, False


def _interpolate(value: Any, where: str, env: Mapping[str, str]) -> Any:
    if isinstance(value, str):
        def sub(m: re.Match[str]) -> str:
            name = m.group(1)
            if name not in env:
                raise ConfigError(f"{where}: environment variable {name} is not set")
            return env[name]

        return _ENV.sub(sub, value)
    if isinstance(value, list):
        return [_interpolate(v, where, env) for v in value]
    if isinstance(value, dict):
        return {k: _interpolate(v, f"{where}.{k}", env) for k, v in value.items()}
    return value


def load_config(
    explicit: str | None = None,
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> Config:
    env = os.environ if env is None else env
    cwd = cwd or Path.cwd()
    path, must_exist = find_config(explicit, env, cwd)
    if not path.exists():
        if must_exist:
            raise ConfigError(f"{path}: configuration file not found")
        return Config(path=None, base_dir=cwd)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from e
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read: {e}") from e
    base = path.parent
    raw: dict[str, dict[str, Any]] = {}
    for section, body in data.items():
        if section not in SCHEMA:
            raise ConfigError(f"{path}: unknown section [{section}] (known: {', '.join(SCHEMA)})")
        if not isinstance(body, dict):
            raise ConfigError(f"{path}: [{section}] must be a table")
        raw[section] = {}
        for key, value in body.items():
            expected = SCHEMA[section].get(key)
            if expected is None:
                raise ConfigError(
                    f"{path}: unknown key [{section}] {key} "
                    f"(known: {', '.join(SCHEMA[section])})"
                )
            if (expected is int and isinstance(value, bool)) or not isinstance(value, expected):
                raise ConfigError(
                    f"{path}: [{section}] {key} must be a {expected.__name__}, "
                    f"not {type(value).__name__}"
                )
            raw[section][key] = _interpolate(value, f"{path}: [{section}] {key}", env)

    def p(section: str, key: str) -> Path | None:
        v = raw.get(section, {}).get(key)
        if v is None:
            return None
        if not v:
            raise ConfigError(f"{path}: [{section}] {key} is empty")
        q = Path(v).expanduser()
        return q if q.is_absolute() else base / q

    cfg = Config(path=path, base_dir=base, raw=raw)
    cfg.ledger = LedgerConfig(url=raw.get("ledger", {}).get("url", DEFAULT_LEDGER_URL),
                              key=p("ledger", "key"))
    cfg.target_url = raw.get("target", {}).get("url")
    cfg.migrations_dir = p("migrations", "dir")
    b = raw.get("backup", {})
    method = b.get("method")
    if method is not None and method not in BACKUP_METHODS:
        raise ConfigError(
            f"{path}: [backup] method {method!r} is not one of {', '.join(BACKUP_METHODS)}"
        )
    cfg.backup = BackupConfig(
        method=method, dir=p("backup", "dir"), stanza=b.get("stanza"),
        stop_command=b.get("stop_command"), start_command=b.get("start_command"),
        pgbackrest_config=p("backup", "pgbackrest_config"), enabled=b.get("enabled", True),
    )
    return cfg
