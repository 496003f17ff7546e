"""PostgreSQL client tools and server facts shared by the ``pg_dump`` and ``pgbackrest``
methods: where the programs are, the environment they run in, what their stderr means, which
server and database a backup was taken of."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import BackupError, ConfigError, TargetError, TargetUnreachable, WrongDatabase
from .model import OTHER_DATABASE_HINT, Manifest

if TYPE_CHECKING:
    from ..targets import Target


def client_env(target: Target) -> dict[str, str]:
    """The environment of pg_dump/psql; with ``--dbname=target.client_conninfo()`` they
    connect exactly where our own connection does."""
    env = target.libpq_env()
    env.setdefault("PGAPPNAME", "statekeeper-backup")
    return env


def pg_tool(name: str, pg_bin: Path | None = None) -> str:
    """Locate a PostgreSQL client program: ``pg_bin``, then $STATEKEEPER_PG_BIN, then PATH."""
    d = pg_bin or (Path(os.environ["STATEKEEPER_PG_BIN"])
                   if os.environ.get("STATEKEEPER_PG_BIN") else None)
    if d is not None:
        p = d / name
        if not os.access(p, os.X_OK):
            raise ConfigError(f"{name} not found in {d}")
        return str(p)
    found = shutil.which(name)
    if not found:
        raise ConfigError(
            f"{name} not found on PATH (install the PostgreSQL client programs, "
            "of the server's major version or newer)"
        )
    return found


def stderr_line(text: str) -> str:
    """The most telling line of a client program's stderr (the first error, without the
    program's prefix)."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for ln in lines:
        m = _ERROR.search(ln)
        if m:
            return m.group(1).strip() or ln
    return lines[-1] if lines else "(no message)"


_ERROR = re.compile(r"(?:\berror|ERROR|FATAL):\s*(.*)")


def server_identity(target: Target) -> tuple[str, str | None]:
    """(server_version, system_identifier or None if not permitted)."""
    try:
        conn = target.connect(autocommit=True)
    except TargetUnreachable:
        raise  # exit 3: nothing was done
    except TargetError as e:
        raise BackupError(str(e)) from e
    try:
        return identity(conn)
    finally:
        conn.close()


def identity(conn: Any) -> tuple[str, str | None]:
    """:func:`server_identity` on an open psycopg connection (inside its transaction, if any)."""
    import psycopg

    version = str(conn.execute("SHOW server_version").fetchone()[0])
    sysid: str | None = None
    try:
        with conn.transaction():
            row = conn.execute("SELECT system_identifier FROM pg_control_system()").fetchone()
            sysid = str(row[0])
    except psycopg.Error:
        sysid = None
    return version, sysid


def database_size(target: Target, *, cluster: bool = False) -> int:
    sql = ("SELECT sum(pg_database_size(datname))::bigint FROM pg_database" if cluster
           else "SELECT pg_database_size(current_database())")
    try:
        conn = target.connect(autocommit=True)
    except TargetUnreachable:
        raise  # exit 3: nothing was done
    except TargetError as e:
        raise BackupError(str(e)) from e
    try:
        return int(conn.execute(sql).fetchone()[0] or 0)
    finally:
        conn.close()


def check_same_database(target: Target, m: Manifest, *, server_may_be_down: bool) -> None:
    """WrongDatabase unless ``target`` is the database of backup ``m``: the same database
    name, and the same cluster (system identifier, else the address libpq connected to).
    ``server_may_be_down``: a server that does not answer passes (a cluster restore brings it
    back; what it restores is what the method's own configuration names)."""
    if target.database != m.database:
        raise WrongDatabase(
            f"backup {m.id} was taken of database {m.database!r}, "
            f"not {target.database!r}{OTHER_DATABASE_HINT}"
        )
    try:
        sysid: str | None = server_identity(target)[1]
    except (BackupError, TargetUnreachable):
        if not server_may_be_down:
            raise
        return
    if m.system_identifier and sysid:
        if sysid != m.system_identifier:
            raise WrongDatabase(
                f"backup {m.id} was taken on cluster {m.system_identifier}, target "
                f"{target.shown} is cluster {sysid}{OTHER_DATABASE_HINT}"
            )
        return
    addr = target.endpoint()  # where libpq connects, as the manifest recorded it
    if m.host is not None and (m.host, m.port) != addr:
        raise WrongDatabase(
            f"backup {m.id} was taken on {m.host}:{m.port}, target is "
            f"{addr[0]}:{addr[1]}{OTHER_DATABASE_HINT}"
        )
