"""Helpers shared by the backup and fingerprint tests (no tests here): data the tests write,
on both backends, and small SQL helpers."""

from __future__ import annotations

import os
import shutil
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from statekeeper.targets import Target
from tests.conftest import HAVE_PG

USERS = [(1, "ada", "ada@example.com"), (2, "bob", None), (3, "cy", "")]

SCHEMA_SQL = [
    "CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT NOT NULL, email TEXT UNIQUE)",
    "CREATE TABLE positions (id INTEGER PRIMARY KEY, user_id INTEGER NOT NULL "
    "REFERENCES users(id), symbol TEXT NOT NULL, qty NUMERIC(12,4) NOT NULL, price REAL)",
    "CREATE TABLE settings (key TEXT PRIMARY KEY, value TEXT)",
    "CREATE TABLE events_log (at TEXT, message TEXT)",  # no primary key
    "CREATE INDEX positions_symbol ON positions (symbol)",
    "CREATE VIEW big_positions AS SELECT id, symbol FROM positions WHERE qty > 100",
]

PG_EXTRA_SQL = [
    "CREATE SCHEMA trading",
    "CREATE TYPE trading.side AS ENUM ('buy', 'sell')",
    "CREATE TABLE trading.orders (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, "
    "side trading.side NOT NULL, placed_at timestamptz NOT NULL DEFAULT now(), "
    "meta jsonb, raw bytea)",
    "CREATE FUNCTION trading.touch() RETURNS trigger LANGUAGE plpgsql AS "
    "$$ BEGIN NEW.placed_at := now(); RETURN NEW; END $$",
    "CREATE TRIGGER orders_touch BEFORE UPDATE ON trading.orders FOR EACH ROW "
    "EXECUTE FUNCTION trading.touch()",
    "INSERT INTO trading.orders (side, placed_at, meta, raw) VALUES "
    "('buy', '2024-01-02 03:04:05.678+00', '{\"a\": [1, 2.5]}', '\\x00ff10'), "
    "('sell', '2024-06-30 23:59:59+02', NULL, NULL)",
    "SELECT lo_from_bytea(0, 'a large object')",
]


def connect(url: str) -> Any:
    t = Target.from_url(url)
    if t.backend == "sqlite" and not t.sqlite_path.exists():
        sqlite3.connect(t.sqlite_path).close()
    return t.connect(autocommit=True)


def execute(url: str, *statements: str) -> None:
    conn = connect(url)
    try:
        for s in statements:
            conn.execute(s)
    finally:
        conn.close()


def scalar(url: str, sql: str) -> Any:
    conn = connect(url)
    try:
        return conn.execute(sql).fetchone()[0]
    finally:
        conn.close()


def seed(url: str, positions: int = 120) -> Target:
    """users (3), positions (``positions``), settings (2), events_log (3, no primary key);
    on PostgreSQL also a second schema with an enum, identity, jsonb, bytea, a trigger and a
    large object."""
    t = Target.from_url(url)
    stmts = list(SCHEMA_SQL)
    for uid, name, email in USERS:
        e = "NULL" if email is None else f"'{email}'"
        stmts.append(f"INSERT INTO users VALUES ({uid}, '{name}', {e})")
    rows = ", ".join(
        f"({i}, {i % 3 + 1}, '{['AAPL', 'MSFT', 'EURUSD'][i % 3]}', {i * 1.25}, {i / 7})"
        for i in range(1, positions + 1)
    )
    stmts.append(f"INSERT INTO positions VALUES {rows}")
    stmts.append("INSERT INTO settings VALUES ('mode', 'live'), ('risk', NULL)")
    stmts.append("INSERT INTO events_log VALUES ('t1', 'start'), ('t2', 'tick'), ('t1', 'start')")
    if t.backend == "postgresql":
        stmts += PG_EXTRA_SQL
    execute(url, *stmts)
    return t


def damage(url: str) -> None:
    """What a failed upgrade might leave: a row inserted, two deleted, one changed, and a table
    a half-applied migration added."""
    execute(
        url,
        "INSERT INTO users VALUES (4, 'mallory', 'm@example.com')",
        "DELETE FROM positions WHERE id > 118",
        "UPDATE settings SET value = 'paper' WHERE key = 'mode'",
        "CREATE TABLE audit_tmp (id INTEGER PRIMARY KEY, note TEXT)",
        "INSERT INTO audit_tmp VALUES (1, 'half-done')",
    )


EXPECTED_DAMAGE = [
    "table audit_tmp exists only after (1 row)",
    "positions: 120 rows -> 118 rows",
    "settings: 2 rows, contents differ",
    "users: 3 rows -> 4 rows",
]


def flip_byte(path: Path, offset: int | None = None) -> None:
    data = bytearray(path.read_bytes())
    i = len(data) // 2 if offset is None else offset
    data[i] ^= 0xFF
    path.write_bytes(bytes(data))


# The marks of every pgBackRest test. Skipped only on a developer's machine without them;
# scripts/test installs pgbackrest, and under CI a missing one fails instead of passing silently.
PGBACKREST_MARKS = [
    pytest.mark.postgresql,
    pytest.mark.skipif(
        (not HAVE_PG or shutil.which("pgbackrest") is None) and not os.environ.get("CI"),
        reason="PostgreSQL server binaries or pgbackrest not installed (scripts/test installs "
        "pgbackrest)",
    ),
]


def pgbackrest_cluster(stanza: str = "sk", conf: dict[str, str] | None = None) -> Any:
    """A throwaway PostgreSQL cluster with WAL archiving into a fresh pgBackRest repository
    (config file, repo, logs and locks inside the cluster's own temporary directory, owned by
    postgres), its stanza created. Returns (cluster, pgbackrest config path, backup kwargs)."""
    import pwd

    from tests.pgcluster import PG_BIN, PgCluster, run_as_postgres

    cluster = PgCluster()
    root = cluster.root
    config = root / "pgbackrest.conf"
    pw = pwd.getpwnam("postgres") if os.geteuid() == 0 else None
    for d in ("repo", "log", "lock", "spool"):
        (root / d).mkdir()
        if pw:
            os.chown(root / d, pw.pw_uid, pw.pw_gid)
    config.write_text(
        "[global]\n"
        f"repo1-path={root / 'repo'}\n"
        f"log-path={root / 'log'}\n"
        f"lock-path={root / 'lock'}\n"
        f"spool-path={root / 'spool'}\n"
        "repo1-retention-full=2\n"
        "start-fast=y\n"
        "compress-type=lz4\n"
        "log-level-file=off\n"
        "process-max=2\n"
        f"\n[{stanza}]\n"
        f"pg1-path={cluster.data}\n"
        f"pg1-port={cluster.port}\n"
        f"pg1-socket-path={root}\n"
    )
    cluster.conf = {
        "wal_level": "replica",
        "archive_mode": "on",
        "archive_command": f"'pgbackrest --config={config} --stanza={stanza} archive-push %p'",
        "max_wal_senders": "3",
        **(conf or {}),
    }
    cluster.start()
    run_as_postgres(["pgbackrest", f"--config={config}", f"--stanza={stanza}",
                     "--log-level-console=error", "stanza-create"])
    as_pg = "runuser -u postgres -- " if os.geteuid() == 0 else ""
    ctl = f"{as_pg}{PG_BIN / 'pg_ctl'} -D {cluster.data}"
    kwargs = {
        "stanza": stanza,
        "pgbackrest_config": config,
        "stop_command": f"{ctl} stop -m fast -w -t 60",
        "start_command": f"{ctl} start -w -t 120 -l {root / 'server.log'}",
    }
    return cluster, config, kwargs
