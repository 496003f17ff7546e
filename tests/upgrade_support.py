"""Builds real upgrade projects for tests: a statekeeper.toml, a seeded target database
(SQLite file or a fresh PostgreSQL database), migrations, and helpers to run the real CLI."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

SEED_SQL = [
    "CREATE TABLE users (id INTEGER PRIMARY KEY, email TEXT NOT NULL UNIQUE, name TEXT NOT NULL)",
    "CREATE TABLE positions (id INTEGER PRIMARY KEY, user_id INTEGER NOT NULL REFERENCES users(id),"
    " symbol TEXT NOT NULL, qty INTEGER NOT NULL)",
    "CREATE TABLE settings (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "INSERT INTO users (id, email, name) VALUES (1, 'ada@example.com', 'Ada'),"
    " (2, 'bob@example.com', 'Bob'), (3, 'cy@example.com', 'Cy')",
    "INSERT INTO positions (id, user_id, symbol, qty) VALUES (1, 1, 'AAPL', 10), (2, 1, 'SAP', 5),"
    " (3, 2, 'NVDA', 7), (4, 3, 'BMW', 1)",
    "INSERT INTO settings (key, value) VALUES ('fee_bps', '5'), ('max_leverage', '4')",
]

# Deliberately NOT idempotent: applying one twice changes data (or fails), so "at most once"
# shows in the fingerprint.
GOOD = {
    "001_bump_qty.sql": "UPDATE positions SET qty = qty + 1000;\n"
    "-- statekeeper:down\nUPDATE positions SET qty = qty - 1000;\n",
    "002_orders.sql": "CREATE TABLE orders (id INTEGER PRIMARY KEY, user_id INTEGER NOT NULL,"
    " qty INTEGER NOT NULL);\n"
    "INSERT INTO settings (key, value) VALUES ('orders', 'on');\n"
    "-- statekeeper:down\nDROP TABLE orders;\n"
    "DELETE FROM settings WHERE key = 'orders';\n",
    "003_user_status.sql": "ALTER TABLE users ADD COLUMN status TEXT NOT NULL DEFAULT 'active';\n"
    "-- statekeeper:down\nALTER TABLE users DROP COLUMN status;\n",
}
FAILING_003 = (
    "ALTER TABLE users ADD COLUMN status TEXT NOT NULL DEFAULT 'active';\n"
    "UPDATE users SET status = 'x' WHERE no_such_column = 1;\n"
    "-- statekeeper:down\nALTER TABLE users DROP COLUMN status;\n"
)
IRREVERSIBLE_002 = (
    "CREATE TABLE orders (id INTEGER PRIMARY KEY, user_id INTEGER NOT NULL,"
    " qty INTEGER NOT NULL);\n"
    "INSERT INTO settings (key, value) VALUES ('orders', 'on');\n"
)

SCENARIOS: dict[str, dict[str, str]] = {
    # three good, reversible migrations: the upgrade completes
    "forward": dict(GOOD),
    # the third fails; the first two are reverted with their down parts
    "revert": {**GOOD, "003_user_status.sql": FAILING_003},
    # the second has no down part, the third fails: the backup is restored
    "restore": {**GOOD, "002_orders.sql": IRREVERSIBLE_002, "003_user_status.sql": FAILING_003},
}

HEALTH = """
[health]
checks = [
  { name = "users readable", sql = "SELECT count(*) FROM users", expect = "3" },
  { name = "positions readable", sql = "SELECT count(*) FROM positions", expect = "4" },
]
"""


@dataclass
class Project:
    dir: Path
    target_url: str
    backend: str
    port: int = 0  # the test application's, in a project with a release

    @property
    def config(self) -> Path:
        return self.dir / "statekeeper.toml"

    def cli(
        self, *args: str, failpoint: str | None = None, timeout: float = 120, check: bool = False,
        prefix: tuple[str, ...] = (), env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """The real CLI in a child process; ``prefix`` runs it under a wrapper (setpriv)."""
        env = dict(os.environ, **(env or {}))
        env.pop("STATEKEEPER_FAILPOINT", None)
        if failpoint:
            env["STATEKEEPER_FAILPOINT"] = failpoint
        env["PYTHONPATH"] = str(ROOT)
        p = subprocess.run(
            [*prefix, sys.executable, "-m", "cli", "--config", str(self.config), *args],
            cwd=self.dir,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and p.returncode != 0:
            raise AssertionError(
                f"statekeeper {' '.join(args)} -> {p.returncode}\n{p.stdout}\n{p.stderr}"
            )
        return p

    def cli_json(self, *args: str) -> Any:
        p = self.cli(*args, "--json", check=True)
        return json.loads(p.stdout)

    def settings(self) -> Any:
        from statekeeper.command import Settings

        return Settings.load(str(self.config))

    def applied_ids(self) -> list[str]:
        from statekeeper import command

        statuses, _tags = command.migrate_status(self.settings())
        return [m.id for m in statuses if m.applied]

    def target(self) -> Any:
        from statekeeper.targets import Target

        return Target.from_url(self.target_url)

    def fingerprint(self) -> Any:
        from statekeeper.fingerprint import fingerprint

        return fingerprint(self.target())

    def apply_sql_directly(self, files: dict[str, str]) -> None:
        """Apply up parts without statekeeper (to build a reference database)."""
        t = self.target()
        conn = t.connect(autocommit=True)
        try:
            for name in sorted(files):
                up = files[name].split("-- statekeeper:down")[0]
                if self.backend == "sqlite":
                    conn.executescript(up)
                else:
                    conn.execute(up)
        finally:
            conn.close()


def seed(backend: str, target_url: str) -> None:
    from statekeeper.targets import Target

    t = Target.from_url(target_url)
    if backend == "sqlite":
        conn = sqlite3.connect(t.sqlite_path)
        with conn:
            for s in SEED_SQL:
                conn.execute(s)
        conn.close()
    else:
        conn = t.connect(autocommit=True)
        for s in SEED_SQL:
            conn.execute(s)
        conn.close()


def seeded_db(tmp_path: Path, backend: str, name: str, request: Any) -> str:
    """A seeded target database (SQLite file or fresh PostgreSQL database); its URL.
    ``request`` is the pytest request, which brings the pg_cluster fixture when needed."""
    if backend == "sqlite":
        (tmp_path / f"{name}.db").touch()
        url = f"sqlite:///{tmp_path / name}.db"
    else:
        cluster = request.getfixturevalue("pg_cluster")
        url = cluster.url(cluster.createdb(name))
    seed(backend, url)
    return url


def make_project(
    base: Path,
    backend: str,
    target_url: str,
    migrations: dict[str, str],
    backup: bool = True,
    extra: str = "",
    ledger_url: str = "sqlite:///.statekeeper/ledger.db",
    key: str = ".statekeeper/key.pem",
    health: str = HEALTH,
    tag: str | None = "v2.5",
) -> Project:
    """A project on ``target_url``; ``ledger_url``/``key`` let several projects (targets)
    share one ledger. ``tag``: the tag of the schema as seeded (None: an empty changelog)."""
    base.mkdir(parents=True, exist_ok=True)
    mig = base / "migrations"
    mig.mkdir()
    for name, text in migrations.items():
        (mig / name).write_text(text)
    method = "sqlite" if backend == "sqlite" else "pg_dump"
    (base / "statekeeper.toml").write_text(
        f'[ledger]\nurl = "{ledger_url}"\nkey = "{key}"\n\n'
        f'[target]\nurl = "{target_url}"\n\n[migrations]\ndir = "migrations"\n\n'
        f'[backup]\nmethod = "{method}"\ndir = "backups"\nenabled = {str(backup).lower()}\n'
        + health
        + extra
    )
    p = Project(base, target_url, backend)
    from statekeeper import command

    command.init(str(p.config), None, None, None, "migrations")
    if tag is not None:
        command.migrate_tag(p.settings(), tag)
    return p


def make_release_project(base: Path, backend: str, target_url: str, migrations: dict[str, str],
                         request: Any, *, healthy: bool = True, commands: str = "",
                         backup: bool = True, extra_checks: str = "",
                         ledger_url: str = "sqlite:///.statekeeper/ledger.db") -> Project:
    """A project with the release side: the test application (tests/release_app.py) at v2.5,
    running, and v2.6 beside it; [deploy] with stop/start, the configuration file and
    ``commands``; an HTTP health check on the application. The server is stopped at the end
    of the test, whatever happened."""
    from tests.release_app import deploy_toml, health_toml, start_app, stop_app, write_app

    base.mkdir(parents=True, exist_ok=True)
    port = write_app(base, target_url, v26_healthy=healthy)
    request.addfinalizer(lambda: stop_app(base))
    p = make_project(base, backend, target_url, migrations, backup=backup,
                     health=health_toml(port, extra_checks), extra=deploy_toml(commands=commands),
                     ledger_url=ledger_url)
    p.port = port
    start_app(base)
    return p
