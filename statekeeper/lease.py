"""One run per target: a lease row in the ledger database (run id, host, pid, heartbeat).

The lease is bookkeeping, not history: the ledger records acquisition and takeover as events;
this table only answers "who holds it now" and is the one mutable table statekeeper keeps.
A holder whose process is gone (same host) or whose heartbeat is older than ``stale_after``
(another host) is dead, and ``resume`` may take the lease over.
"""

from __future__ import annotations

import os
import socket
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Column, Engine, MetaData, String, Table, create_engine, select
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import URL

from ledger import OperationalError, redact

from . import clock
from .errors import LockHeld

_meta = MetaData()
leases = Table(
    "statekeeper_leases",
    _meta,
    Column("target", String(500), primary_key=True),
    Column("run_id", String(100), nullable=False),
    Column("host", String(255), nullable=False),
    Column("pid", String(20), nullable=False),
    Column("token", String(64), nullable=False),
    Column("acquired_at", String(40), nullable=False),
    Column("heartbeat_at", String(40), nullable=False),
    # boot id + process start time: a pid reused after a reboot is not the holder
    Column("proc", String(100), nullable=True),
)

STALE_AFTER = timedelta(seconds=60)
HEARTBEAT_EVERY = 10.0


@dataclass(frozen=True)
class Holder:
    run_id: str
    host: str
    pid: int
    acquired_at: str
    heartbeat_at: str
    proc: str | None = None

    def describe(self) -> str:
        return f"run {self.run_id} (host {self.host}, pid {self.pid}, since {self.acquired_at})"


def proc_identity(pid: int) -> str | None:
    """``<boot id>:<start time>`` of a process, or None where /proc cannot tell."""
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as f:
            boot = f.read().strip()
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            start = f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None
    return f"{boot}:{start}"


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (killed, not yet reaped by its parent) is dead for our purposes.
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


class LeaseStore:
    def __init__(self, url: URL) -> None:
        self.url = url
        args: dict[str, Any] = {"timeout": 60} if url.get_backend_name() == "sqlite" else {}
        self.engine: Engine = create_engine(url, connect_args=args)
        try:
            _meta.create_all(self.engine, checkfirst=True)
        except sa_exc.SQLAlchemyError as e:
            raise OperationalError(f"ledger {redact(url)}: cannot create lease table: {e}") from e

    def holder(self, target: str) -> Holder | None:
        with self.engine.connect() as conn:
            r = conn.execute(select(leases).where(leases.c.target == target)).first()
        return _holder(r) if r else None

    def is_alive(self, h: Holder, stale_after: timedelta = STALE_AFTER) -> bool:
        if h.host == socket.gethostname():
            if not pid_alive(h.pid):
                return False
            return h.proc is None or proc_identity(h.pid) in (None, h.proc)
        beat = datetime.fromisoformat(h.heartbeat_at)
        return clock.now() - beat < stale_after

    def acquire(
        self,
        target: str,
        run_id: str,
        *,
        takeover: bool,
        abandoned: Callable[[Holder], bool] | None = None,
    ) -> tuple[Lease, Holder | None]:
        """Take the lease. Returns it and the dead holder it replaced: with ``takeover`` the
        dead holder must be this same run; ``abandoned`` may declare a dead holder's run void
        (it died before its run was recorded), which any run may then replace."""
        now = clock.now().isoformat()
        me = (socket.gethostname(), str(os.getpid()))
        token = uuid.uuid4().hex
        with self.engine.begin() as conn:
            if self.engine.dialect.name == "postgresql":
                conn.exec_driver_sql("LOCK TABLE statekeeper_leases IN EXCLUSIVE MODE")
            r = conn.execute(select(leases).where(leases.c.target == target)).first()
            previous = None
            if r is not None:
                h = _holder(r)
                if self.is_alive(h):
                    raise LockHeld(f"target is locked by {h.describe()}")
                void = abandoned is not None and abandoned(h)
                if not takeover and not void:
                    raise LockHeld(
                        f"target is locked by {h.describe()}, whose process is gone: "
                        f"finish it with 'statekeeper resume {h.run_id}' "
                        f"(or 'statekeeper resume {h.run_id} --rollback')"
                    )
                if h.run_id != run_id and not void:
                    raise LockHeld(
                        f"target is held by the unfinished {h.describe()}; resume that run first"
                    )
                previous = h
                conn.execute(leases.delete().where(leases.c.target == target))
            conn.execute(
                leases.insert().values(
                    target=target,
                    run_id=run_id,
                    host=me[0],
                    pid=me[1],
                    token=token,
                    acquired_at=now,
                    heartbeat_at=now,
                )
            )
        return Lease(self, target, token), previous

    def dispose(self) -> None:
        self.engine.dispose()


def _holder(r: Any) -> Holder:
    return Holder(r.run_id, r.host, int(r.pid), r.acquired_at, r.heartbeat_at, r.proc)


class Lease:
    """A held lease; a daemon thread keeps its heartbeat fresh until :meth:`release`."""

    def __init__(self, store: LeaseStore, target: str, token: str) -> None:
        self.store = store
        self.target = target
        self.token = token
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True, name="lease-heartbeat")
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_EVERY):
            try:
                with self.store.engine.begin() as conn:
                    conn.execute(
                        leases.update()
                        .where(leases.c.target == self.target, leases.c.token == self.token)
                        .values(heartbeat_at=clock.now().isoformat())
                    )
            except sa_exc.SQLAlchemyError:
                continue  # a missed beat only makes the lease look older; never fatal

    def release(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        with self.store.engine.begin() as conn:
            conn.execute(
                leases.delete().where(leases.c.target == self.target, leases.c.token == self.token)
            )
