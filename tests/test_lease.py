"""The lease: who holds a target, and when a holder counts as dead.

Real processes throughout: a live unrelated ``sleep`` stands in for a process that reused a dead
holder's pid, a real ``statekeeper start`` is SIGKILLed mid-migration, and several real
processes race to take over one dead lease. Lease rows are written to real SQLite files and a
real PostgreSQL ledger database; nothing about /proc is faked.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from ledger import database_url
from statekeeper import clock, command
from statekeeper.errors import LockHeld
from statekeeper.lease import (
    TABLE,
    Holder,
    LeaseStore,
    ProcId,
    boot_id,
    boot_time,
    own_pidns,
    proc_identity,
)
from tests.upgrade_support import GOOD, ROOT, SCENARIOS, Project, make_project, seed

HOST = socket.gethostname()
TARGET = "sqlite:////srv/app.db"


@contextlib.contextmanager
def sleeping() -> Iterator[subprocess.Popen[bytes]]:
    """A live process unrelated to statekeeper, on this host."""
    p = subprocess.Popen(["sleep", "300"])
    try:
        yield p
    finally:
        p.kill()
        p.wait()


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    with sleeping() as p:
        yield p


@pytest.fixture
def store(db_url: str) -> Iterator[LeaseStore]:
    s = LeaseStore(database_url(db_url))
    yield s
    s.dispose()


def dead_pid() -> int:
    """The pid of a process that has exited and been reaped."""
    p = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                       capture_output=True, text=True, check=True)
    return int(p.stdout)


def holder(pid: int, proc: str | None, *, host: str = HOST, beat_age: float = 0.0,
           beat: str | None = None) -> Holder:
    at = (clock.now() - timedelta(seconds=beat_age)).isoformat()
    return Holder("r1", host, pid, at, beat if beat is not None else at, proc)


def real_identity(pid: int) -> ProcId:
    ident = proc_identity(pid)
    assert ident is not None, "this test needs /proc"
    return ident


# -- judging a holder ------------------------------------------------------------------------

def test_a_live_holder_with_its_own_identity_is_alive(store: LeaseStore,
                                                      sleeper: subprocess.Popen[bytes]) -> None:
    ident = real_identity(sleeper.pid)
    assert ident.boot == boot_id() and ident.pidns == own_pidns()
    assert store.judge(holder(sleeper.pid, ident.text())) == (True, "holder process is running")


def test_a_pid_reused_by_another_process_is_not_the_holder(
        store: LeaseStore, sleeper: subprocess.Popen[bytes]) -> None:
    # the lease names the sleeper's pid, but the process that took it started at another time
    ident = real_identity(sleeper.pid)
    reused = ProcId(ident.boot, str(int(ident.start) - 1), ident.pidns)
    alive, why = store.judge(holder(sleeper.pid, reused.text()))
    assert not alive
    assert why == f"holder process is gone (pid {sleeper.pid} now belongs to another)"


def test_a_holder_from_before_a_reboot_is_dead(store: LeaseStore,
                                               sleeper: subprocess.Popen[bytes]) -> None:
    ident = real_identity(sleeper.pid)
    booted = boot_time()
    assert booted is not None
    other_boot = ProcId(str(uuid.uuid4()), ident.start, ident.pidns).text()
    # last heartbeat before this boot began: the machine rebooted under the holder
    before = (booted - timedelta(minutes=5)).isoformat()
    h = holder(sleeper.pid, other_boot, beat=before)
    assert store.judge(h) == (False, "this host has rebooted since the holder's last heartbeat")


def test_another_boot_with_a_fresh_heartbeat_is_another_machine_judged_by_heartbeat(
        store: LeaseStore) -> None:
    # A heartbeat newer than this boot cannot come from an earlier boot of this machine: it is
    # a second machine with the same host name, whose processes we cannot see.
    other_boot = ProcId(str(uuid.uuid4()), "12345", own_pidns()).text()
    assert store.judge(holder(dead_pid(), other_boot)) == (
        True, "holder on another boot of this host name has a fresh heartbeat")
    alive, why = store.judge(holder(dead_pid(), other_boot, beat_age=61))
    assert not alive and why.startswith("holder heartbeat expired (on another boot")


def test_a_holder_in_another_pid_namespace_is_judged_by_heartbeat(store: LeaseStore) -> None:
    # a container sharing this host's name: its pid means nothing in our namespace
    boot = boot_id()
    assert boot is not None
    other_ns = ProcId(boot, "12345", "4026599999").text()
    pid = dead_pid()
    assert store.judge(holder(pid, other_ns)) == (
        True, "holder in another pid namespace has a fresh heartbeat")
    assert not store.is_alive(holder(pid, other_ns, beat_age=61))


@pytest.mark.parametrize("proc", [None, "", "garbage", "a:b:c:d", "::"])
def test_without_a_readable_identity_the_pid_decides(
        store: LeaseStore, sleeper: subprocess.Popen[bytes], proc: str | None) -> None:
    assert store.judge(holder(sleeper.pid, proc))[0] is True
    assert store.judge(holder(dead_pid(), proc)) == (False, "holder process is gone")


@pytest.mark.parametrize("pid", [0, -1, -9999, 2**40])
def test_a_pid_that_names_no_single_process_is_dead(store: LeaseStore, pid: int) -> None:
    # os.kill(0, 0) would "succeed" (it signals our own process group)
    assert store.judge(holder(pid, None)) == (False, "holder process is gone")


def test_another_host_is_judged_by_its_heartbeat(store: LeaseStore) -> None:
    assert store.is_alive(holder(1, None, host="elsewhere", beat_age=30))
    alive, why = store.judge(holder(1, None, host="elsewhere", beat_age=61))
    assert not alive and why == "holder heartbeat expired (on another host, none for 61 s)"
    # a live holder rewrites its heartbeat every 10 s: one that cannot be read beats for nobody
    assert store.judge(holder(1, None, host="elsewhere", beat="not a time")) == (
        False, "holder on another host has an unreadable heartbeat")


def test_a_sigkilled_holder_is_dead_before_and_after_it_is_reaped(store: LeaseStore) -> None:
    p = subprocess.Popen(["sleep", "300"])
    ident = real_identity(p.pid).text()
    assert store.is_alive(holder(p.pid, ident))
    os.kill(p.pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while store.is_alive(holder(p.pid, ident)):  # a zombie until we reap it
        assert time.monotonic() < deadline, "a SIGKILLed process still looks alive"
        time.sleep(0.01)
    assert store.judge(holder(p.pid, ident)) == (False, "holder process is gone")
    p.wait()
    assert store.judge(holder(p.pid, ident)) == (False, "holder process is gone")


# -- taking the lease ------------------------------------------------------------------------

HOLD = """
import sys
from ledger import database_url
from statekeeper.lease import LeaseStore
store = LeaseStore(database_url(sys.argv[1]))
lease, previous = store.acquire(sys.argv[2], sys.argv[3], takeover=True)
print("held", flush=True)
sys.stdin.read()
"""


def test_a_real_holder_records_its_identity_and_is_taken_over_once_killed(
        store: LeaseStore, db_url: str) -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    p = subprocess.Popen([sys.executable, "-c", HOLD, db_url, TARGET, "r1"], env=env,
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout is not None and p.stdout.readline() == "held\n"
        h = store.holder(TARGET)
        assert h is not None and (h.run_id, h.host, h.pid) == ("r1", HOST, p.pid)
        assert h.proc == real_identity(p.pid).text()
        with pytest.raises(LockHeld, match=rf"^target is locked by run r1 \(host {HOST}, "
                                           rf"pid {p.pid}, since "):
            store.acquire(TARGET, "r1", takeover=True)
        assert store.holder(TARGET) == h  # a refused takeover changes nothing
        p.kill()
        p.wait()
        lease, previous = store.acquire(TARGET, "r1", takeover=True)
    finally:
        p.kill()
        p.wait()
    assert previous is not None and previous.pid == p.pid
    assert previous.dead_because == "holder process is gone"
    mine = store.holder(TARGET)
    assert mine is not None and mine.pid == os.getpid()
    assert mine.proc == real_identity(os.getpid()).text()
    lease.release()
    assert store.holder(TARGET) is None


RACE = """
import os, sys, time
from ledger import database_url
from statekeeper.errors import LockHeld
from statekeeper.lease import LeaseStore
store = LeaseStore(database_url(sys.argv[1]))
store.holder(sys.argv[2])  # connected and warm before the start signal
print("ready", flush=True)
while not os.path.exists(sys.argv[3]):
    time.sleep(0.001)
try:
    lease, previous = store.acquire(sys.argv[2], "r1", takeover=True)
except LockHeld as e:
    print("refused", e, flush=True)
    sys.exit(5)
print("won", previous.pid, flush=True)
sys.stdin.read()
lease.release()
"""


def test_racing_takeovers_of_one_dead_lease_have_exactly_one_winner(
        store: LeaseStore, db_url: str, tmp_path: Path) -> None:
    gone = dead_pid()
    now = clock.now().isoformat()
    put_lease(store, target=TARGET, run_id="r1", host=HOST, pid=str(gone), token="dead",
              acquired_at=now, heartbeat_at=now)
    go = tmp_path / "go"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    procs = [subprocess.Popen([sys.executable, "-c", RACE, db_url, TARGET, str(go)], env=env,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
             for _ in range(4)]
    try:
        for p in procs:
            assert p.stdout is not None and p.stdout.readline() == "ready\n"
        go.touch()
        said = [p.stdout.readline() for p in procs]  # type: ignore[union-attr]
    finally:
        for p in procs:
            assert p.stdin is not None
            p.stdin.close()
        codes = [p.wait(timeout=60) for p in procs]
    winners = [i for i, s in enumerate(said) if s.startswith("won ")]
    assert len(winners) == 1, said
    assert said[winners[0]] == f"won {gone}\n"
    for i, s in enumerate(said):
        if i != winners[0]:
            assert s.startswith(f"refused target is locked by run r1 (host {HOST}, "
                                f"pid {procs[winners[0]].pid}, since "), s
            assert codes[i] == 5
    assert codes[winners[0]] == 0
    assert store.holder(TARGET) is None  # the winner released it on the way out


# -- end to end: resume against real holders -------------------------------------------------

@pytest.fixture
def proj(tmp_path: Path) -> Project:
    (tmp_path / "app.db").touch()
    url = f"sqlite:///{tmp_path / 'app.db'}"
    seed("sqlite", url)
    return make_project(tmp_path / "proj", "sqlite", url, SCENARIOS["forward"])


def crashed_run(proj: Project) -> str:
    """A real run killed mid-upgrade: its lease row (with the dead process's identity) stays."""
    crashed = proj.cli("start", "--to", "v2.6", failpoint="migrate.started:2")
    assert crashed.returncode == 137, crashed.stderr
    return str(command.status(proj.settings()).run_id)


def put_lease(store: LeaseStore, **values: str) -> None:
    """A lease row written into the real table, as another process would have left it."""
    with store.recorder.side_transaction() as tx:
        tx.execute(f"INSERT INTO {TABLE} ({', '.join(values)}) "
                   f"VALUES ({', '.join(['{p}'] * len(values))})", list(values.values()))


def lease_row(proj: Project) -> Any:
    store = proj.settings().open_lease_store()
    try:
        with store.recorder.side_transaction() as tx:
            (row,) = tx.execute(f"SELECT run_id, pid, proc, acquired_at FROM {TABLE}")
        return SimpleNamespace(run_id=row[0], pid=row[1], proc=row[2], acquired_at=row[3])
    finally:
        store.dispose()


def set_lease(proj: Project, **values: str) -> None:
    store = proj.settings().open_lease_store()
    try:
        with store.recorder.side_transaction() as tx:
            tx.execute(f"UPDATE {TABLE} SET {', '.join(k + ' = {p}' for k in values)}",
                       list(values.values()))
    finally:
        store.dispose()


def takeovers(proj: Project, run_id: str) -> list[dict[str, Any]]:
    run = command.status(proj.settings(), run_id)
    return [ls for ls in run.leases if ls["type"] == "lease.taken_over"]


def test_resume_takes_over_a_lease_whose_pid_now_belongs_to_another_process(
        proj: Project) -> None:
    run_id = crashed_run(proj)
    dead = lease_row(proj).proc
    assert ProcId.parse(dead) is not None  # the crashed holder recorded who it was
    with sleeping() as sleeper:  # started after the holder died, as a pid's next owner is
        live = real_identity(sleeper.pid).text()
        assert live != dead

        # The sleeper under its own identity is a genuinely live holder: refused, no change.
        set_lease(proj, pid=str(sleeper.pid), proc=live)
        r = proj.cli("resume", run_id)
        assert r.returncode == 5, r.stderr
        assert r.stderr.startswith(f"error: target is locked by run {run_id} (host {HOST}, "
                                   f"pid {sleeper.pid}, since "), r.stderr
        assert takeovers(proj, run_id) == []
        assert command.status(proj.settings(), run_id).state == "migrating"

        # The same live pid under the dead holder's identity: reused, the holder is gone.
        set_lease(proj, proc=dead)
        r = proj.cli("resume", run_id)
        assert r.returncode == 0, r.stdout + r.stderr
        assert f"took over the lease from dead pid {sleeper.pid} on {HOST}" in r.stdout
        [taken] = takeovers(proj, run_id)
        assert taken["from_pid"] == sleeper.pid and taken["pid"] != sleeper.pid
        assert command.status(proj.settings(), run_id).state == "completed"
        assert sleeper.poll() is None  # nothing was done to the innocent process


def test_resume_takes_over_a_lease_from_before_a_reboot(
        proj: Project, sleeper: subprocess.Popen[bytes]) -> None:
    run_id = crashed_run(proj)
    booted = boot_time()
    assert booted is not None
    ident = real_identity(sleeper.pid)
    other_boot = ProcId(str(uuid.uuid4()), ident.start, ident.pidns).text()

    # Another boot id but a heartbeat from after this boot began: another machine with this
    # host name may be running it. Refused while the heartbeat is fresh.
    set_lease(proj, pid=str(sleeper.pid), proc=other_boot, heartbeat_at=clock.now().isoformat())
    r = proj.cli("resume", run_id)
    assert r.returncode == 5, r.stderr
    assert takeovers(proj, run_id) == []

    # Its last heartbeat predates this boot: the host rebooted under it.
    set_lease(proj, heartbeat_at=(booted - timedelta(minutes=1)).isoformat())
    r = proj.cli("resume", run_id)
    assert r.returncode == 0, r.stdout + r.stderr
    [taken] = takeovers(proj, run_id)
    assert taken["from_pid"] == sleeper.pid


def test_a_sigkilled_start_is_refused_while_alive_and_taken_over_once_dead(proj: Project) -> None:
    slow = ("WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 100000000)"
            " SELECT count(*) FROM c;\n")
    (proj.dir / "migrations" / "002_orders.sql").write_text(slow + GOOD["002_orders.sql"])
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("STATEKEEPER_FAILPOINT", None)
    first = subprocess.Popen([sys.executable, "-m", "cli", "--config", str(proj.config), "start",
                              "--to", "v2.6"], env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while True:  # until the holder is inside the slow migration
            runs = command.history(proj.settings())
            step = runs[0].open_step if runs else None
            if step is not None and step.args.get("migration") == "002_orders":
                break
            assert time.monotonic() < deadline and first.poll() is None, "never got going"
            time.sleep(0.05)
        run_id = runs[0].run_id

        r = proj.cli("resume", run_id)  # the holder is alive: refused
        assert r.returncode == 5, r.stderr
        assert r.stderr == (f"error: target is locked by run {run_id} (host {HOST}, "
                            f"pid {first.pid}, since {lease_row(proj).acquired_at})\n")

        first.send_signal(signal.SIGKILL)  # not reaped yet: a zombie is dead too
        r = proj.cli("resume", run_id, "--rollback")
    finally:
        first.kill()
        first.wait()
    assert r.returncode == 0, r.stdout + r.stderr
    [taken] = takeovers(proj, run_id)
    assert taken["from_pid"] == first.pid and taken["reason"] == "holder process is gone"
    assert command.status(proj.settings(), run_id).state == "rolled_back"
    assert proj.applied_ids() == []
