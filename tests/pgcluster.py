"""A throwaway PostgreSQL cluster for tests: initdb + pg_ctl on a free port, as the postgres
OS user (initdb refuses root), torn down at the end. Hermetic: nothing touches port 5432."""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import psycopg

PG_BIN = Path(os.environ.get("STATEKEEPER_PG_BIN", "/usr/lib/postgresql/15/bin"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _as_postgres() -> dict[str, object]:
    if os.geteuid() != 0:
        return {}
    pw = pwd.getpwnam("postgres")

    def demote() -> None:
        os.setgid(pw.pw_gid)
        os.setuid(pw.pw_uid)

    return {"preexec_fn": demote}


def run_as_postgres(args: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, LC_ALL="C.UTF-8", LANG="C.UTF-8")
    if os.geteuid() == 0:
        env["HOME"] = "/var/lib/postgresql"
    return subprocess.run(
        args, check=True, capture_output=True, text=True, env=env, **_as_postgres(), **kw  # type: ignore[arg-type]
    )


class PgCluster:
    """One cluster. ``url(db)`` gives a libpq-style URL; ``createdb`` makes a fresh database."""

    def __init__(self, conf: dict[str, str] | None = None, base: Path | None = None) -> None:
        if base is None and os.access("/dev/shm", os.W_OK):
            base = Path("/dev/shm")  # RAM: initdb, CREATE DATABASE and teardown are faster
        self.root = Path(tempfile.mkdtemp(prefix="sk-pg-", dir=base))
        os.chmod(self.root, 0o755)
        self.data = self.root / "data"
        self.port = free_port()
        self.conf = conf or {}
        self.user = "postgres"
        if os.geteuid() == 0:
            pw = pwd.getpwnam("postgres")
            os.chown(self.root, pw.pw_uid, pw.pw_gid)

    @property
    def bin(self) -> Path:
        return PG_BIN

    def start(self) -> PgCluster:
        run_as_postgres([str(PG_BIN / "initdb"), "-D", str(self.data), "-U", "postgres",
                         "-A", "trust", "-E", "UTF8", "--no-sync"])
        lines = {
            "port": str(self.port),
            "listen_addresses": "'127.0.0.1'",
            "unix_socket_directories": f"'{self.root}'",
            "fsync": "off",
            "max_connections": "60",
            "shared_buffers": "64MB",
            "logging_collector": "off",
        }
        lines.update(self.conf)
        with (self.data / "postgresql.conf").open("a") as f:
            for k, v in lines.items():
                f.write(f"{k} = {v}\n")
        self.pg_ctl("start", "-w", "-t", "60", "-l", str(self.root / "server.log"))
        return self

    def pg_ctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return run_as_postgres([str(PG_BIN / "pg_ctl"), "-D", str(self.data), *args])

    def stop(self, mode: str = "fast") -> None:
        if (self.data / "postmaster.pid").exists():
            try:
                self.pg_ctl("stop", "-m", mode, "-w", "-t", "60")
            except subprocess.CalledProcessError:
                self.pg_ctl("stop", "-m", "immediate", "-w")

    def destroy(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)

    def url(self, db: str = "postgres") -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{db}"

    def sqlalchemy_url(self, db: str = "postgres") -> str:
        return f"postgresql+psycopg://{self.user}@127.0.0.1:{self.port}/{db}"

    def psql(self, sql: str, db: str = "postgres") -> str:
        out = subprocess.run(
            [str(PG_BIN / "psql"), "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1",
             "-h", "127.0.0.1", "-p", str(self.port), "-U", self.user, "-d", db, "-c", sql],
            check=True, capture_output=True, text=True,
        )
        return out.stdout.strip()

    _counter = 0

    def createdb(self, prefix: str = "db") -> str:
        PgCluster._counter += 1
        name = f"{prefix}_{os.getpid()}_{PgCluster._counter}_{int(time.time() * 1000) % 100000}"
        # a connection of our own, not a psql child: hundreds of tests take a database, and
        # starting psql costs twice the CREATE DATABASE
        with psycopg.connect(host="127.0.0.1", port=self.port, user=self.user,
                             dbname="postgres", autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return name
