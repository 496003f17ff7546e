"""``statekeeper.toml``: loading, ``${ENV}`` interpolation and validation up front.

Every message names the file and the key. Relative paths are resolved against the directory of
the file that holds them. A missing file is fine (the embedded defaults apply) unless it was
named explicitly with ``--config`` or ``STATEKEEPER_CONFIG``.
"""

from __future__ import annotations

import json
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, unquote, unquote_plus

from .errors import ConfigError

if TYPE_CHECKING:
    from .release import ReleaseConfig

CONFIG_NAME = "statekeeper.toml"
DEFAULT_LEDGER_URL = "sqlite:///.statekeeper/ledger.db"
DEFAULT_KEY = ".statekeeper/signing-key.pem"
DEFAULT_BACKUP_DIR = ".statekeeper/backups"
BACKUP_METHODS = ("pg_dump", "pgbackrest", "sqlite")

# ``${NAME}``; ``$${`` is a literal ``${`` (for a shell's ``${VAR:-x}`` in a command); any other
# ``${`` is refused rather than left in place, so a typo never becomes a literal password.
_REF = re.compile(r"\$\$\{|\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$\{")

# Keys whose value is a database URL: a variable inside one is percent-encoded for its position.
URL_KEYS = {("ledger", "url"), ("target", "url")}

# section -> key -> accepted type(s); anything else in the file is refused (typos must not pass
# silently), and tests/test_config_schema.py shows that every key here changes behaviour.
SCHEMA: dict[str, dict[str, type | tuple[type, ...]]] = {
    "ledger": {"url": str, "key": str},
    "target": {"url": str},
    # tool, liquibase, changelog, properties: read by statekeeper/migrations/driver.py
    "migrations": {"dir": str, "tool": str, "liquibase": str, "changelog": str,
                   "properties": str},
    "backup": {
        "method": str, "dir": str, "stanza": str, "stop_command": str, "start_command": str,
        "pgbackrest_config": str, "enabled": bool, "cluster_databases": list,
        # retention, read by statekeeper/retention.py (statekeeper backup prune)
        "keep": int, "keep_days": int,
        # pg_dump: more than 1 takes the directory format with parallel dump and restore
        "jobs": int,
    },
    # require_ticket: read by statekeeper/why.py (--ticket mandatory on every change).
    # require_rehearsal: read by statekeeper/upgrade.py (start refuses an unrehearsed plan).
    "upgrade": {"application": str, "require_ticket": bool, "require_rehearsal": bool},
    # Read and range-checked by statekeeper/health.py.
    # Durations are numbers of seconds or text such as "500ms" (health.py decides).
    "health": {"checks": list, "retries": int, "interval": (int, float, str),
               "timeout": (int, float, str), "deadline": (int, float, str)},
    # Read and checked by statekeeper/release.py; rehearsal_stop/rehearsal_start are what
    # statekeeper/rehearse.py runs instead of stop/start (which act on the live service).
    "deploy": {"releases_dir": str, "current_link": str, "config_files": list,
               "config_from": str, "stop": str, "start": str, "timeout": (int, float, str),
               "command": list, "rehearsal_stop": str, "rehearsal_start": str},
}

# Sections the design names but nothing implements yet: refused, not silently ignored.
UNSUPPORTED: dict[str, str] = {}

_TYPE_NAMES = {str: "string", bool: "boolean", int: "integer", float: "float", list: "array",
               dict: "table"}


def _type_name(t: type | tuple[type, ...]) -> str:
    if isinstance(t, tuple):
        names = ["number" if x is float and int in t else _type_name(x) for x in t if
                 not (x is int and float in t)]
        return " or ".join(names)
    return _TYPE_NAMES.get(t, t.__name__)


def _key(name: str) -> str:
    """A TOML key as the user would write it, on one line whatever it contains."""
    return name if re.fullmatch(r"[A-Za-z0-9_-]+", name) else json.dumps(name)


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
    #: the other databases of the target's cluster that the operator accepts a whole-cluster
    #: restore rewinds with it (pgbackrest): any other one makes preflight refuse
    cluster_databases: tuple[str, ...] = ()
    #: retention (``statekeeper backup prune``): the newest ``keep`` backups are kept, and
    #: every backup younger than ``keep_days`` days; None: that rule is not set
    keep: int | None = None
    keep_days: int | None = None
    #: pg_dump: 1 is one custom-format file, restored in one transaction; more is the
    #: directory format, dumped and restored by that many parallel processes
    jobs: int = 1


@dataclass
class Config:
    path: Path | None
    base_dir: Path
    ledger: LedgerConfig = field(default_factory=LedgerConfig)
    target_url: str | None = None
    migrations_dir: Path | None = None
    #: ``[migrations] tool``: "files" (the SQL-file directory) or "liquibase"
    migrations_tool: str = "files"
    #: the Liquibase command (as written: a name on PATH, or a path) and its files
    liquibase: str = "liquibase"
    changelog: Path | None = None
    liquibase_properties: Path | None = None
    backup: BackupConfig = field(default_factory=BackupConfig)
    raw: dict[str, dict[str, Any]] = field(default_factory=dict)
    release: ReleaseConfig | None = None
    #: "section.key" -> where its value came from: ``("file", path)``, ``("env", VARIABLE)``
    #: or ``("flag", --option)`` (:mod:`statekeeper.settings` adds the flags); absent: default
    origins: dict[str, tuple[str, str]] = field(default_factory=dict)
    #: "section.key" -> the value as written in the file (``${VAR}`` references kept)
    written: dict[str, Any] = field(default_factory=dict)
    #: where command health checks run (default ``base_dir``): a rehearsal keeps its runs'
    #: files in a scratch ``base_dir`` but runs the project's commands where production does
    commands_dir: Path | None = None

    @property
    def command_cwd(self) -> Path:
        return self.commands_dir or self.base_dir

    @property
    def source(self) -> str:
        return str(self.path) if self.path else "(defaults)"

    def origin(self, name: str) -> str:
        """Where the value of ``name`` ("section.key") came from, for a message."""
        kind, source = self.origins.get(name, ("default", ""))
        if kind == "env":
            return f"environment variable {source}"
        if kind == "flag":
            return source
        section, key = name.split(".", 1)
        return f"{self.source}: [{section}] {key}"

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
                f"{self.origin('migrations.dir')} {self.migrations_dir} is not a directory"
            )
        return self.migrations_dir

    def backup_method(self) -> str:
        """The configured method, or the default for the target's backend."""
        if self.backup.method:
            return self.backup.method
        from .dialects import dialect_for_url

        url = self.require_target()
        dialect = dialect_for_url(url)
        if dialect is None:  # not through load_config, which refuses it: the same one line
            _check_url(url, url, f"{self.source}: [target] url", self.base_dir)
            raise ConfigError(f"{self.source}: [target] url: no target dialect for it")
        return dialect.default_backup_method

    def backup_dir(self) -> Path:
        return self.backup.dir or (self.base_dir / DEFAULT_BACKUP_DIR)


def find_config(explicit: str | None, env: Mapping[str, str], cwd: Path) -> tuple[Path, bool]:
    """Return (path, must_exist)."""
    if explicit:
        return Path(explicit).expanduser().absolute(), True
    if env.get("STATEKEEPER_CONFIG"):
        return Path(env["STATEKEEPER_CONFIG"]).expanduser().absolute(), True
    return cwd / CONFIG_NAME, False


class _Ref(str):
    """The name of an environment variable referenced as ``${NAME}``."""


def _tokens(value: str, where: str) -> list[str]:
    """Literal text and :class:`_Ref` names, in order."""
    out: list[str] = []
    pos = 0
    for m in _REF.finditer(value):
        out.append(value[pos:m.start()])
        if m.group(0) == "$${":
            out.append("${")
        elif m.group(1) is None:
            raise ConfigError(
                f"{where}: malformed ${{...}} reference at character {m.start() + 1} "
                "(write ${NAME}, NAME of letters, digits and _; $${ for a literal ${)"
            )
        else:
            out.append(_Ref(m.group(1)))
        pos = m.end()
    out.append(value[pos:])
    return [t for t in out if t or isinstance(t, _Ref)]


def _lookup(name: str, where: str, env: Mapping[str, str]) -> str:
    if name not in env:
        raise ConfigError(f"{where}: environment variable {name} is not set")
    return env[name]


_HOST_FORBIDDEN = re.compile(r"[@/?#%\s\x00-\x1f\x7f]")


def interpolate_url(value: str, where: str, env: Mapping[str, str]) -> str:
    """``${NAME}`` inside a URL: the variable's value is one component, taken literally.

    In the user name, password, database or a query parameter it is percent-encoded, so a
    password with ``@``, ``/``, ``#``, ``%``, ``:`` or a space stays a password (the URL parser
    decodes it again). In the host or port, where nothing is decoded, a character that would
    change the URL's structure is refused. A value that is the whole URL (``"${DATABASE_URL}"``)
    or a URL whose ``://`` itself comes from a variable is taken as it is. Messages name the
    variable, never its value.
    """
    toks = _tokens(value, where)
    refs = [(i, t) for i, t in enumerate(toks) if isinstance(t, _Ref)]
    if len(toks) == 1 and refs:
        return _lookup(toks[0], where, env)
    # Where each variable sits is decided by the literal text around it, never by values.
    skeleton = ""
    at: dict[int, int] = {}
    for i, t in enumerate(toks):
        if isinstance(t, _Ref):
            at[i] = len(skeleton)
            skeleton += "\0"
        else:
            skeleton += t.replace("\0", " ")
    sep = skeleton.find("://")
    out: list[str] = []
    for i, t in enumerate(toks):
        if not isinstance(t, _Ref):
            out.append(t)
            continue
        v = _lookup(t, where, env)
        if sep < 0:
            out.append(v)
            continue
        pos = at[i]
        auth = sep + 3
        ends = [j for j in (skeleton.find("/", auth), skeleton.find("?", auth)) if j >= 0]
        auth_end = min(ends) if ends else len(skeleton)
        userinfo_end = skeleton.rfind("@", auth, auth_end)
        if pos < sep:
            if not re.fullmatch(r"[A-Za-z][A-Za-z0-9+.-]*", v):
                raise ConfigError(f"{where}: ${{{t}}} is used as the URL scheme but is not one")
            out.append(v)
        elif pos < auth_end and pos > userinfo_end:
            if _names_a_file(skeleton):
                # no host in a SQLite URL: "sqlite://${DB_PATH}" with DB_PATH=/abs/app.db
                out.append(v)
                continue
            if _HOST_FORBIDDEN.search(v):
                raise ConfigError(
                    f"{where}: ${{{t}}} is used in the URL's host or port and must not contain "
                    "'@', '/', '?', '#', '%', spaces or control characters"
                )
            out.append(v)
        else:
            out.append(quote(v, safe=""))
    return "".join(out)


def _interpolate(value: Any, where: str, env: Mapping[str, str]) -> Any:
    if isinstance(value, str):
        return "".join(
            _lookup(t, where, env) if isinstance(t, _Ref) else t for t in _tokens(value, where)
        )
    if isinstance(value, list):
        return [_interpolate(v, where, env) for v in value]
    if isinstance(value, dict):
        return {k: _interpolate(v, f"{where}.{_key(k)}", env) for k, v in value.items()}
    return value


def load_config(
    explicit: str | None = None,
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    flags: frozenset[tuple[str, str]] = frozenset(),
) -> Config:
    """The file's configuration (or the defaults) with the ``STATEKEEPER_*`` variables of
    :data:`ENV_KEYS` applied over it: environment > statekeeper.toml > defaults (the flags,
    above them all, are applied by :class:`statekeeper.settings.Settings`; ``flags`` names the
    keys they set). A key set by a variable or a flag is not interpolated from the file: its
    ``${VAR}`` need not be set."""
    env = os.environ if env is None else env
    cwd = cwd or Path.cwd()
    overridden = flags | {k for var, k in ENV_KEYS.items() if var in env}
    cfg = _load_file(explicit, env, cwd, overridden)
    for var, (section, key) in ENV_KEYS.items():
        if var in env:
            override(cfg, section, key, env[var], ("env", var), cwd)
    return cfg


#: The environment variables that override a key of the file (relative paths in them are
#: relative to the working directory, as a flag's are); the flags override them in turn.
ENV_KEYS: dict[str, tuple[str, str]] = {
    "STATEKEEPER_LEDGER_URL": ("ledger", "url"),
    "STATEKEEPER_LEDGER_KEY": ("ledger", "key"),
    "STATEKEEPER_TARGET_URL": ("target", "url"),
    "STATEKEEPER_MIGRATIONS_DIR": ("migrations", "dir"),
}
#: The flags that override the same keys (``--target`` on the commands that take it).
FLAG_KEYS: dict[str, tuple[str, str]] = {
    "--ledger": ("ledger", "url"), "--key": ("ledger", "key"), "--target": ("target", "url"),
    "--dir": ("migrations", "dir"),
}


def override(cfg: Config, section: str, key: str, value: str, origin: tuple[str, str],
             cwd: Path) -> None:
    """Set one key from a flag or a variable (``origin``: ``("env", NAME)`` or ``("flag",
    --NAME)``), checked as the file's value would be, errors naming the flag or variable. A
    relative path (a SQLite file in a URL) is relative to ``cwd`` and made absolute here."""
    what = origin[1] if origin[0] == "flag" else f"environment variable {origin[1]}"
    if origin[0] == "flag" and (section, key) in URL_KEYS:
        what += " URL"
    unset = "leave it out" if origin[0] == "flag" else "unset it"
    check_given(value, what, f"{unset} to use [{section}] {key}")
    name = f"{section}.{key}"
    if (section, key) in URL_KEYS:
        url = absolute_url(check_url(value, what, cwd), cwd, what)
        if section == "ledger":
            cfg.ledger.url = url
        else:
            cfg.target_url = url
    else:
        try:
            path = cwd / Path(value).expanduser()  # unchanged when absolute
        except RuntimeError as e:  # ~user of a user that does not exist
            raise ConfigError(f"{what}: {e}") from e
        if name == "ledger.key":
            cfg.ledger.key = path
        elif name == "migrations.dir":
            cfg.migrations_dir = path
        else:  # pragma: no cover - ENV_KEYS and FLAG_KEYS name only the four above
            raise ValueError(name)
    cfg.origins[name] = origin
    cfg.written.pop(name, None)


def check_given(value: str, what: str, instead: str) -> None:
    """A flag's or a variable's value: neither empty (a script's unset variable) nor NUL."""
    if not value.strip():
        raise ConfigError(f"{what} is empty ({instead})")
    if "\0" in value:
        raise ConfigError(f"{what} contains a NUL byte")


def check_url(value: str, what: str, cwd: Path) -> str:
    """A database URL given with a flag or a variable, refused up front as one line naming
    ``what`` (``--target URL``) and showing the URL without its password."""
    return _check_url(value, value, what, cwd)


def absolute_url(url: str, cwd: Path, what: str) -> str:
    """A database URL given with a flag or a variable: a relative SQLite path in it is made
    relative to ``cwd`` (only paths written in statekeeper.toml are relative to that file)."""
    import ledger

    u = ledger.database_url(url, cwd, what=what)
    if ledger.database_file(u) is None:  # a server's URL: nothing relative in it
        return url
    return str(u.render_as_string(hide_password=False))


def _load_file(explicit: str | None, env: Mapping[str, str], cwd: Path,
               overridden: frozenset[tuple[str, str]]) -> Config:
    path, must_exist = find_config(explicit, env, cwd)
    try:
        exists = path.exists()
    except (OSError, ValueError) as e:  # a NUL byte in the name, a name too long
        raise ConfigError(f"{str(path)!r}: cannot read: {e}") from e
    if not exists:
        if must_exist:
            raise ConfigError(f"{path}: configuration file not found")
        return Config(path=None, base_dir=cwd)
    try:
        # utf-8-sig: editors on Windows write a byte order mark, which tomllib refuses.
        data = tomllib.loads(path.read_bytes().decode("utf-8-sig"))
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {_one_line(e)}") from e
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 (byte {e.start + 1})") from e
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror or e}") from e
    base = path.parent
    raw: dict[str, dict[str, Any]] = {}
    written: dict[str, Any] = {}
    for section, body in data.items():
        if section in UNSUPPORTED:
            raise ConfigError(
                f"{path}: [{section}] is not accepted: {UNSUPPORTED[section]} (remove the section)"
            )
        if section not in SCHEMA:
            raise ConfigError(
                f"{path}: unknown section [{_key(section)}] (known: {', '.join(SCHEMA)})"
            )
        if not isinstance(body, dict):
            raise ConfigError(f"{path}: [{section}] must be a table")
        raw[section] = {}
        for key, value in body.items():
            expected = SCHEMA[section].get(key)
            if expected is None:
                raise ConfigError(
                    f"{path}: unknown key [{section}] {_key(key)} "
                    f"(known: {', '.join(SCHEMA[section])})"
                )
            # bool is an int to Python, not to TOML: `retries = true` is a type error.
            wrong_bool = isinstance(value, bool) and expected is not bool
            if wrong_bool or not isinstance(value, expected):
                got = _TYPE_NAMES.get(type(value), type(value).__name__)
                want = _type_name(expected)
                article = "an" if want[0] in "aeiou" else "a"
                raise ConfigError(
                    f"{path}: [{section}] {key} must be {article} {want}, not {got}"
                )
            where = f"{path}: [{section}] {key}"
            written[f"{section}.{key}"] = value
            if (section, key) in overridden:
                continue
            if (section, key) in URL_KEYS:
                raw[section][key] = _check_url(
                    interpolate_url(str(value), where, env), str(value), where, base, env
                )
            else:
                raw[section][key] = _interpolate(value, where, env)

    def p(section: str, key: str) -> Path | None:
        v = raw.get(section, {}).get(key)
        if v is None:
            return None
        if not v.strip():
            raise ConfigError(f"{path}: [{section}] {key} is empty")
        if "\0" in v:
            raise ConfigError(f"{path}: [{section}] {key} contains a NUL byte")
        try:
            q = Path(v).expanduser()
        except RuntimeError as e:  # ~user of a user that does not exist
            raise ConfigError(f"{path}: [{section}] {key}: {e}") from e
        return q if q.is_absolute() else base / q

    from .health import validate_health

    # Checked here, so that every command refuses a bad [health] as the docs say, not only
    # the ones that run checks.
    validate_health(raw.get("health", {}), str(path))
    from .release import validate_deploy

    cfg = Config(path=path, base_dir=base, raw=raw, written=written,
                 origins={k: ("file", str(path)) for k in written})
    # the section as written as well: commands are recorded with ${VAR}, never its value
    cfg.release = validate_deploy(raw.get("deploy"), data.get("deploy", {}), str(path), base)
    cfg.ledger = LedgerConfig(url=raw.get("ledger", {}).get("url", DEFAULT_LEDGER_URL),
                              key=p("ledger", "key"))
    cfg.target_url = raw.get("target", {}).get("url")
    cfg.migrations_dir = p("migrations", "dir")
    _liquibase_keys(cfg, raw.get("migrations", {}), path, p)
    b = raw.get("backup", {})
    method = b.get("method")
    if method is not None and method not in BACKUP_METHODS:
        shown = data["backup"]["method"]  # as written: the value may come from the environment
        raise ConfigError(
            f"{path}: [backup] method {shown!r} is not one of {', '.join(BACKUP_METHODS)}"
        )
    cfg.backup = BackupConfig(
        method=method, dir=p("backup", "dir"), stanza=b.get("stanza"),
        stop_command=b.get("stop_command"), start_command=b.get("start_command"),
        pgbackrest_config=p("backup", "pgbackrest_config"), enabled=b.get("enabled", True),
        cluster_databases=_names(b.get("cluster_databases", []), f"{path}: [backup] "
                                 "cluster_databases"),
        keep=_in_range(b, "keep", 1, None, path),
        keep_days=_in_range(b, "keep_days", 0, 36500, path),
        jobs=_in_range(b, "jobs", 1, MAX_JOBS, path) or 1,
    )
    return cfg


MIGRATION_TOOLS = ("files", "liquibase")
#: [backup] jobs: each is a connection to the target (pg_dump -j opens one more)
MAX_JOBS = 64


def _liquibase_keys(cfg: Config, m: Mapping[str, Any], path: Path,
                    p: Callable[[str, str], Path | None]) -> None:
    """``[migrations] tool`` and the Liquibase driver's keys (which only that tool reads)."""
    tool = m.get("tool", "files")
    if tool not in MIGRATION_TOOLS:
        raise ConfigError(f"{path}: [migrations] tool {tool!r} is not one of "
                          f"{', '.join(MIGRATION_TOOLS)}")
    cfg.migrations_tool = tool
    command = m.get("liquibase", "liquibase")
    if not command.strip():
        raise ConfigError(f"{path}: [migrations] liquibase is empty")
    cfg.liquibase = command
    cfg.changelog = p("migrations", "changelog") or (
        cfg.base_dir / "db.changelog.xml" if tool == "liquibase" else None)
    cfg.liquibase_properties = p("migrations", "properties")


def _in_range(body: Mapping[str, Any], key: str, low: int, high: int | None,
              path: Path) -> int | None:
    """An integer of ``[backup]`` from ``low`` to ``high`` (None when absent)."""
    v = body.get(key)
    if v is not None and v < low:
        raise ConfigError(f"{path}: [backup] {key} must be at least {low}, not {v}")
    if v is not None and high is not None and v > high:
        raise ConfigError(f"{path}: [backup] {key} must be at most {high}, not {v}")
    return v


def initial_toml(ledger_url: str, key: str, target_url: str | None,
                   migrations_dir: str) -> str:
    """The statekeeper.toml ``init`` writes: values through a TOML writer (a backslash or a
    quote in a path or a URL stays what it was), and the optional sections as comments."""
    import tomli_w

    def table(name: str, values: dict[str, Any], comments: str = "") -> str:
        return tomli_w.dumps({name: values}) + comments + "\n"

    target = (table("target", {"url": target_url}) if target_url else
              '[target]\n# url = "postgresql://app:${APP_DB_PASSWORD}@localhost:5432/app"\n\n')
    return (
        "# statekeeper configuration; `statekeeper config show` prints what is in effect.\n"
        "# Precedence: flags > environment (STATEKEEPER_TARGET_URL, ...) > this file.\n\n"
        + table("ledger", {"url": ledger_url, "key": key})
        + target
        + table("migrations", {"dir": migrations_dir})
        + table("backup", {"dir": ".statekeeper/backups"},
                '# method = "pg_dump"   # or "pgbackrest", "sqlite" (default: the target\'s)\n')
        + "[upgrade]\n"
        '# application = "app"     # the name runs and reports use (default: this directory)\n'
        "# require_ticket = false  # true: every change needs --ticket\n\n"
        "# Health checks run after the migrations; without any, nothing verifies the upgrade.\n"
        "# [health]\n"
        "# checks = [\n"
        '#   { name = "users readable", sql = "SELECT count(*) FROM users" },\n'
        '#   { name = "api", http = "http://127.0.0.1:8080/health", status = 200 },\n'
        "# ]\n"
        "# retries = 2\n"
        '# interval = "1s"\n'
    )


def _names(value: list[Any], where: str) -> tuple[str, ...]:
    """A list of database names: non-empty text, each once."""
    if not all(isinstance(v, str) and v.strip() for v in value):
        raise ConfigError(f"{where} must be a list of database names (non-empty strings)")
    if len(set(value)) != len(value):
        raise ConfigError(f"{where} names a database twice")
    return tuple(value)


def _check_url(url: str, template: str, where: str, base: Path,
               env: Mapping[str, str] | None = None) -> str:
    """Refuse a URL that is not one, up front, naming the file and key. The message shows the
    URL as written (``${VAR}`` references, not their values, and no password): in a URL that
    does not parse, a value from the environment can sit anywhere."""
    from ledger import ConfigurationError, database_url, redact

    shown = redact(template)
    try:
        u = database_url(url, base, what=where, shown=shown)
    except ConfigurationError as e:
        raise ConfigError(_one_line(e)) from e
    if u.query:
        from .dialects import dialect_for

        # a parameter the driver does not know would only fail at the first connection
        err = dialect_for(u.get_backend_name()).url_error(u)
        if err is not None:
            said = _one_line(err)
            # the driver quotes the parameter: one made from an environment value (a password
            # in the wrong place) is not shown, nor any value the URL took from it
            for name in set(re.findall(r"\$\{(\w+)\}", template)):
                value = (env or {}).get(name, "")
                for form in {value, unquote(value), unquote_plus(value)} - {""}:
                    said = said.replace(form, "***")
            said = re.sub(r'"([^"]*)"', lambda m: m.group(0) if m.group(1) in template
                          else "(a name taken from the environment, not shown)", said)
            raise ConfigError(f"{where} {shown!r}: {said}") from err
    return url


def _names_a_file(url: str) -> bool:
    """Does the URL's scheme name a database kept in a file (no host: ``sqlite://${PATH}``)?"""
    from .dialects import dialect_for_url

    dialect = dialect_for_url(url)
    return dialect is not None and dialect.in_a_file


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__
