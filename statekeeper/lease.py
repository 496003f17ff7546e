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
from typing import Any

from ledger import ConstraintViolation, DatabaseURL, OperationalError, redact
from ledger.recorders import recorder_for

from . import clock
from .errors import LedgerUnavailable, LockHeld
from .procs import pid_alive

log = logging.getLogger(__name__)

TABLE = "statekeeper_leases"
_DDL = (
    f"CREATE TABLE {TABLE} ("
    "target VARCHAR(500) NOT NULL PRIMARY KEY, run_id VARCHAR(100) NOT NULL, "
    "host VARCHAR(255) NOT NULL, pid VARCHAR(20) NOT NULL, token VARCHAR(64) NOT NULL, "
    "acquired_at VARCHAR(40) NOT NULL, heartbeat_at VARCHAR(40) NOT NULL, "
    # "<boot id>:<process start ticks>:<pid namespace>" (see ProcId): a reused pid is not
    # the holder. NULL where /proc cannot tell (then only the pid is checked).
    "proc VARCHAR(100))"
)
_COLUMNS = "run_id, host, pid, acquired_at, heartbeat_at, proc, token"
_SELECT = f"SELECT {_COLUMNS} FROM {TABLE} WHERE target = {{p}}"
_DELETE = f"DELETE FROM {TABLE} WHERE target = {{p}} AND token = {{p}}"

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



class LeaseStore:
    """The lease table, on connections of the ledger database's recorder (its pool, its
    driver, its quirks: how a transaction excludes other writers is the recorder's)."""

    def __init__(self, url: DatabaseURL, shown: str | None = None) -> None:
        self.url = url
        self.shown = shown if shown is not None else redact(url)
        self.recorder = recorder_for(url, self.shown)
        with self._driver_errors("cannot create lease table"):
            self.recorder.ensure_side_tables({TABLE: _DDL})

    @contextlib.contextmanager
    def _driver_errors(self, what: str) -> Iterator[None]:
        """The one place the lease store's database errors become statekeeper's (exit 3), with
        the driver's first line; a unique-key race is another process's lease (exit 5)."""
        try:
            yield
        except ConstraintViolation as e:  # another process inserted first
            raise LockHeld(
                f"target is locked: another process took the lease ({_reason(e)})") from e
        except OperationalError as e:
            raise LedgerUnavailable(f"ledger {self.shown}: {what}: {_reason(e)}") from e

    def holder(self, target: str) -> Holder | None:
        with self._driver_errors("cannot read the lease"), \
                self.recorder.side_transaction() as tx:
            rows = tx.execute(_SELECT, (target,))
        return _holder(rows[0]) if rows else None

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
            self.recorder.side_transaction(exclusive=TABLE) as tx,
        ):
            rows = tx.execute(_SELECT, (target,))
            previous = None
            if rows:
                h = _holder(rows[0])
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
                tx.execute(_DELETE, (target, h.token))
            tx.execute(
                f"INSERT INTO {TABLE} (target, {_COLUMNS}) "
                "VALUES ({p}, {p}, {p}, {p}, {p}, {p}, {p}, {p})",
                (target, run_id, me[0], me[1], now, now,
                 ident.text() if ident else None, token),
            )
        if previous is not None:
            log.info("lease on %s taken over for run %s from dead %s (%s)", target, run_id,
                     previous.describe(), previous.dead_because)
        else:
            log.info("lease on %s taken for run %s", target, run_id)
        return Lease(self, target, token), previous

    def dispose(self) -> None:
        self.recorder.dispose()


def _reason(e: BaseException) -> str:
    """The driver's first line (the ledger's error says it after the URL)."""
    cause = e.__cause__ if e.__cause__ is not None else e
    lines = str(cause).strip().splitlines()
    return lines[0] if lines else type(cause).__name__


def _holder(r: Any) -> Holder:
    run_id, host, pid_text, acquired_at, heartbeat_at, proc, token = r
    try:
        pid = int(pid_text)
    except (TypeError, ValueError):
        pid = -1  # not a pid: nothing on this host can be it
    return Holder(run_id, host, pid, acquired_at, heartbeat_at, proc, token)


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
                with self.store.recorder.side_transaction() as tx:
                    tx.execute(f"UPDATE {TABLE} SET heartbeat_at = {{p}} "
                               "WHERE target = {p} AND token = {p}",
                               (clock.stamp(), self.target, self.token))
            except OperationalError:
                continue  # a missed beat only makes the lease look older; never fatal

    def release(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        with self.store._driver_errors("cannot release the lease"), \
                self.store.recorder.side_transaction() as tx:
            tx.execute(_DELETE, (self.target, self.token))
