"""One run per target: a lease row in the ledger database (run id, host, pid, heartbeat).

The lease is bookkeeping, not history: the ledger records acquisition and takeover as events;
this table only answers "who holds it now" and is the one mutable table statekeeper keeps.

Whether a holder is alive (:meth:`LeaseStore.judge`):

- Same host, same boot, same pid namespace: its process decides. The lease records the
  holder's boot id, the start time of its process (clock ticks since boot, from
  ``/proc/<pid>/stat``) and its pid namespace, so a pid that now belongs to another process
  (reused after the holder died) is not mistaken for the holder.
- Same host name but a different boot id: if the holder's last heartbeat is older than this
  boot, the machine rebooted under it and it is dead. A heartbeat newer than this boot came
  from another kernel (a second machine or VM with the same host name), which we cannot
  inspect: the heartbeat decides, as for another host.
- Same host name and boot but another pid namespace (a container sharing the host's name):
  its pid means nothing here, so the heartbeat decides.
- Another host: alive while its heartbeat is younger than ``stale_after``.

A dead holder's lease may be taken over by ``resume``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

from sqlalchemy import (
    Column,
    Connection,
    Engine,
    MetaData,
    String,
    Table,
    create_engine,
    event,
    select,
)
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import URL

from ledger import redact

from . import clock
from .errors import LedgerUnavailable, LockHeld
from .procs import pid_alive

log = logging.getLogger(__name__)

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
    # "<boot id>:<process start ticks>:<pid namespace>" (see ProcId): a reused pid is not
    # the holder. NULL where /proc cannot tell (then only the pid is checked).
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
    token: str = ""
    # why the holder was judged dead, set on the holder :meth:`LeaseStore.acquire` replaced
    dead_because: str | None = None

    def describe(self) -> str:
        return f"run {self.run_id} (host {self.host}, pid {self.pid}, since {self.acquired_at})"


@dataclass(frozen=True)
class ProcId:
    """Which process, on which boot, in which pid namespace: a pid alone is reused."""

    boot: str
    start: str  # field 22 of /proc/<pid>/stat: clock ticks from boot to the process's start
    pidns: str | None = None  # inode of /proc/<pid>/ns/pid

    def text(self) -> str:
        return f"{self.boot}:{self.start}" + (f":{self.pidns}" if self.pidns else "")

    @classmethod
    def parse(cls, text: str | None) -> ProcId | None:
        parts = (text or "").split(":")
        if len(parts) not in (2, 3) or not all(p.strip() for p in parts):
            return None  # unreadable: judge by the pid alone, as for a lease without it
        return cls(parts[0], parts[1], parts[2] if len(parts) == 3 else None)


def boot_id() -> str | None:
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as f:
            return f.read().strip() or None
    except OSError:
        return None


def boot_time() -> datetime | None:
    """When this host booted (``btime`` in /proc/stat)."""
    try:
        with open("/proc/stat", encoding="ascii") as f:
            for line in f:
                if line.startswith("btime "):
                    return datetime.fromtimestamp(int(line.split()[1]), UTC)
    except (OSError, ValueError, IndexError):
        pass
    return None


def start_ticks(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            # the command name (field 2) may contain spaces and parentheses: split after it
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError, ValueError):
        return None


def own_pidns() -> str | None:
    try:
        link = os.readlink("/proc/self/ns/pid")  # "pid:[4026531836]"
    except OSError:
        return None
    return link.partition("[")[2].rstrip("]") or None


def proc_identity(pid: int) -> ProcId | None:
    """The identity of process ``pid`` as seen from this process's pid namespace, or None
    where /proc cannot tell."""
    boot, start = boot_id(), start_ticks(pid)
    if boot is None or start is None:
        return None
    return ProcId(boot, start, own_pidns())



class _SqliteLeases:
    """The ledger's database is a SQLite file: writers wait up to 60 s, and a lease write
    takes the database's write lock at BEGIN (IMMEDIATE), before it reads the holder."""

    connect_args: ClassVar[dict[str, Any]] = {"timeout": 60}
    lock_sql: ClassVar[str | None] = None

    @staticmethod
    def prepare(engine: Engine) -> None:
        _immediate_writes(engine)


class _PostgresLeases:
    """The ledger's database is PostgreSQL: a lease write locks the table against other
    writers (readers still read) before it reads the holder."""

    connect_args: ClassVar[dict[str, Any]] = {}
    lock_sql: ClassVar[str | None] = "LOCK TABLE statekeeper_leases IN EXCLUSIVE MODE"

    @staticmethod
    def prepare(engine: Engine) -> None:
        pass


# The lease table's quirks, by the ledger database's backend name (the registry form: no code
# here asks which backend it is).
_BACKENDS: dict[str, type[_SqliteLeases] | type[_PostgresLeases]] = {
    "sqlite": _SqliteLeases,
    "postgresql": _PostgresLeases,
}


class LeaseStore:
    def __init__(self, url: URL, shown: str | None = None) -> None:
        self.url = url
        self.shown = shown if shown is not None else redact(url)
        self._quirks = _BACKENDS[url.get_backend_name()]
        self.engine: Engine = create_engine(url, connect_args=dict(self._quirks.connect_args))
        self._quirks.prepare(self.engine)
        try:
            _meta.create_all(self.engine, checkfirst=True)
        except sa_exc.SQLAlchemyError as e:
            raise LedgerUnavailable(
                f"ledger {self.shown}: cannot create lease table: {e}") from e

    @contextlib.contextmanager
    def _driver_errors(self, what: str) -> Iterator[None]:
        """The one place the lease store's driver errors become statekeeper's (exit 3), with
        the driver's first line; a unique-key race is another process's lease (exit 5)."""
        try:
            yield
        except sa_exc.IntegrityError as e:  # another process inserted first
            raise LockHeld(
                f"target is locked: another process took the lease ({e.orig})") from e
        except sa_exc.SQLAlchemyError as e:
            first = str(getattr(e, "orig", None) or e).strip().splitlines()
            raise LedgerUnavailable(
                f"ledger {self.shown}: {what}: {first[0] if first else e}") from e

    def holder(self, target: str) -> Holder | None:
        with self._driver_errors("cannot read the lease"), self.engine.connect() as conn:
            r = conn.execute(select(leases).where(leases.c.target == target)).first()
        return _holder(r) if r else None

    def judge(self, h: Holder, stale_after: timedelta = STALE_AFTER) -> tuple[bool, str]:
        """Whether the holder is alive, and why (the reason is recorded on a takeover)."""
        if h.host == socket.gethostname():
            recorded = ProcId.parse(h.proc)
            if recorded is not None:
                boot = boot_id()
                if boot is not None and recorded.boot != boot:
                    booted, beat = boot_time(), clock.parse(h.heartbeat_at)
                    if booted is not None and (beat is None or beat < booted):
                        return False, "this host has rebooted since the holder's last heartbeat"
                    return self._by_heartbeat(h, stale_after, "on another boot of this host name")
                mine = own_pidns()
                if recorded.pidns and mine and recorded.pidns != mine:
                    return self._by_heartbeat(h, stale_after, "in another pid namespace")
            if not pid_alive(h.pid):
                return False, "holder process is gone"
            if recorded is not None:
                now = start_ticks(h.pid)
                if now is not None and now != recorded.start:
                    return False, f"holder process is gone (pid {h.pid} now belongs to another)"
            return True, "holder process is running"
        return self._by_heartbeat(h, stale_after, "on another host")

    @staticmethod
    def _by_heartbeat(h: Holder, stale_after: timedelta, where: str) -> tuple[bool, str]:
        beat = clock.parse(h.heartbeat_at)
        if beat is None:
            # a live holder rewrites it every HEARTBEAT_EVERY seconds: garbage means none beats
            return False, f"holder {where} has an unreadable heartbeat"
        age = clock.now() - beat
        if age < stale_after:
            return True, f"holder {where} has a fresh heartbeat"
        return False, f"holder heartbeat expired ({where}, none for {int(age.total_seconds())} s)"

    def is_alive(self, h: Holder, stale_after: timedelta = STALE_AFTER) -> bool:
        return self.judge(h, stale_after)[0]

    def acquire(
        self,
        target: str,
        run_id: str,
        *,
        takeover: bool,
        abandoned: Callable[[Holder], bool] | None = None,
        what: str = "target",
    ) -> tuple[Lease, Holder | None]:
        """Take the lease. Returns it and the dead holder it replaced: with ``takeover`` the
        dead holder must be this same run; ``abandoned`` may declare a dead holder's run void
        (it died before its run was recorded), which any run may then replace. ``what`` names
        the thing leased in a refusal (the target; a cluster, for the cluster-wide lease)."""
        now = clock.stamp()
        me = (socket.gethostname(), str(os.getpid()))
        ident = proc_identity(os.getpid())
        token = uuid.uuid4().hex
        # The read and the replace are one serialized transaction (SQLite: BEGIN IMMEDIATE;
        # PostgreSQL: the table lock), so two processes taking over the same dead lease
        # cannot both win: the second sees the first as the live holder.
        with (
            self._driver_errors("cannot take the lease"),
            self.engine.connect() as conn,
            conn.execution_options(lease_write=True).begin(),
        ):
            if self._quirks.lock_sql:
                conn.exec_driver_sql(self._quirks.lock_sql)
            r = conn.execute(select(leases).where(leases.c.target == target)).first()
            previous = None
            if r is not None:
                h = _holder(r)
                alive, why = self.judge(h)
                if alive:
                    raise LockHeld(f"{what} is locked by {h.describe()}")
                void = abandoned is not None and abandoned(h)
                if not takeover and not void:
                    raise LockHeld(
                        f"{what} is locked by {h.describe()}, whose process is gone: "
                        f"finish it with 'statekeeper resume {h.run_id}' "
                        f"(or 'statekeeper resume {h.run_id} --rollback')"
                    )
                if h.run_id != run_id and not void:
                    raise LockHeld(
                        f"{what} is held by the unfinished {h.describe()}; "
                        "resume that run first"
                    )
                previous = replace(h, dead_because=why)
                conn.execute(
                    leases.delete().where(leases.c.target == target, leases.c.token == h.token)
                )
            conn.execute(
                leases.insert().values(
                    target=target,
                    run_id=run_id,
                    host=me[0],
                    pid=me[1],
                    token=token,
                    acquired_at=now,
                    heartbeat_at=now,
                    proc=ident.text() if ident else None,
                )
            )
        if previous is not None:
            log.info("lease on %s taken over for run %s from dead %s (%s)", target, run_id,
                     previous.describe(), previous.dead_because)
        else:
            log.info("lease on %s taken for run %s", target, run_id)
        return Lease(self, target, token), previous

    def dispose(self) -> None:
        self.engine.dispose()


def _immediate_writes(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # the transaction is ours (BEGIN below)

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        mode = "IMMEDIATE" if conn.get_execution_options().get("lease_write") else "DEFERRED"
        conn.exec_driver_sql(f"BEGIN {mode}")


def _holder(r: Any) -> Holder:
    try:
        pid = int(r.pid)
    except (TypeError, ValueError):
        pid = -1  # not a pid: nothing on this host can be it
    return Holder(r.run_id, r.host, pid, r.acquired_at, r.heartbeat_at, r.proc, r.token)


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
                        .values(heartbeat_at=clock.stamp())
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
