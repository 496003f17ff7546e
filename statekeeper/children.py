"""Child processes that die with their run: the backup and restore tools (pg_dump, pg_restore,
psql, pgbackrest) statekeeper starts itself.

Each runs in its own session (its own process group, out of reach of the terminal's signals)
and, on Linux, with ``PR_SET_PDEATHSIG = SIGKILL``: the kernel kills it when statekeeper dies,
even by SIGKILL. (The death signal fires when the *thread* that forked it ends; statekeeper
forks from its one thread. A tool's own children, pgBackRest's workers, are in the same group
and exit when their parent's pipes close; a resumed run stops any that remain.) While one
runs, statekeeper's SIGTERM and SIGINT are forwarded: the child's group gets SIGTERM, then
SIGKILL after a grace period, and statekeeper then dies of the same SIGTERM (SIGINT: the
KeyboardInterrupt goes on). Under a run's interrupt guard (:mod:`statekeeper.interrupts`) the
first SIGTERM or SIGINT lets the tool finish and the run stops after the step; the second
stops the tool as above. A pid file, when asked for, names the child's group and its
leader's start time, so that a resumed run can stop one that survived anyway
(:func:`stop_recorded`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from . import interrupts
from .files import write_atomic
from .interrupts import Terminated
from .logs import argv_text
from .procs import KILL_GRACE_S, _group_alive, _start_time, _stop_group

PR_SET_PDEATHSIG = 1
log = logging.getLogger(__name__)


_PRCTL: Any = None


def _prctl() -> Any:
    """libc's prctl, resolved in the parent: the child between fork and exec only calls it
    (statekeeper has a lease heartbeat thread; nothing that takes a lock, an import above all,
    may run in a child forked beside a thread)."""
    global _PRCTL
    if _PRCTL is None and sys.platform.startswith("linux"):
        import ctypes

        _PRCTL = ctypes.CDLL(None, use_errno=True).prctl
    return _PRCTL


def _die_with_parent(prctl: Any, parent: int) -> None:  # pragma: no cover - in the child
    if prctl is not None:
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before the death signal was armed
            os.kill(os.getpid(), signal.SIGKILL)


def popen(argv: Sequence[str], *, pid_file: Path | None = None, **kwargs: Any,
          ) -> subprocess.Popen[Any]:
    """``subprocess.Popen`` in a session of its own, killed when statekeeper dies. Given
    ``pid_file``, its process group and start time are written there (0600, atomically)."""
    parent, prctl = os.getpid(), _prctl()
    log.info("running %s", argv_text(argv))
    proc = subprocess.Popen(list(argv), start_new_session=True,
                            preexec_fn=lambda: _die_with_parent(prctl, parent), **kwargs)
    if pid_file is not None:
        write_atomic(pid_file, json.dumps({"pgid": proc.pid, "host": socket.gethostname(),
                                           "start_time": _start_time(proc.pid),
                                           "argv0": os.path.basename(str(argv[0]))}))
    return proc


def _raise_terminated(signum: int, frame: FrameType | None) -> None:
    raise Terminated()


def kill(proc: subprocess.Popen[Any]) -> None:
    """SIGTERM to the child's group, a grace period, SIGKILL to what is left; reaped."""
    def leader_gone() -> bool:
        try:
            proc.wait(timeout=KILL_GRACE_S)
        except subprocess.TimeoutExpired:
            return False
        return True

    if proc.returncode is None:
        _stop_group(proc.pid, leader_gone)
    else:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


@contextlib.contextmanager
def supervised(*procs: subprocess.Popen[Any]) -> Iterator[None]:
    """While the block runs, statekeeper's SIGTERM ends it; whatever ends it abnormally (an
    error, a timeout, SIGINT's KeyboardInterrupt, SIGTERM) kills the children's groups first.
    After a SIGTERM statekeeper dies of it, as it would have without children."""
    # Under a run's interrupt guard the first SIGTERM waits for the step to end, and the
    # guard raises Terminated on the second: the tool is then stopped here all the same.
    main = (threading.current_thread() is threading.main_thread()
            and not interrupts.guarded())
    old: Any = signal.signal(signal.SIGTERM, _raise_terminated) if main else None
    try:
        yield
    except BaseException as e:
        for p in procs:
            kill(p)
        if main:
            signal.signal(signal.SIGTERM, old)
            main = False
        if isinstance(e, Terminated):
            interrupts.die_of_sigterm()
        raise
    finally:
        if main:
            signal.signal(signal.SIGTERM, old)


def run(argv: Sequence[str], *, timeout: float, poll: Callable[[], None] | None = None,
        **kwargs: Any) -> subprocess.CompletedProcess[Any]:
    """``subprocess.run(argv, capture_output=True, timeout=...)`` with a supervised child:
    TimeoutExpired once its group is killed. ``poll`` is called about every half second while
    the child runs (to report its progress)."""
    proc = popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kwargs)
    with supervised(proc):
        if poll is None:
            out, err = proc.communicate(timeout=timeout)
        else:
            deadline = time.monotonic() + timeout
            while True:
                try:  # communicate() may be called again after its timeout expired
                    out, err = proc.communicate(
                        timeout=max(0.0, min(0.5, deadline - time.monotonic())))
                    break
                except subprocess.TimeoutExpired:
                    if time.monotonic() >= deadline:
                        raise
                    poll()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def stop_recorded(pid_file: Path) -> str | None:
    """After a crash: stop the process group ``pid_file`` names if it still runs on this host
    (SIGTERM, then SIGKILL); the pid file is removed. Returns what was stopped ("pg_dump (pid
    123)"), None if nothing ran."""
    try:
        info = json.loads(pid_file.read_text())
        pgid = int(info["pgid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    try:
        if info.get("host") != socket.gethostname() or pgid <= 1:
            return None
        now = _start_time(pgid)
        # alive with another start time: the pid was reused, not ours
        if (now is not None and now != info.get("start_time")) or not _group_alive(pgid):
            return None
        _stop_group(pgid, lambda: False)
        deadline = time.monotonic() + KILL_GRACE_S
        while _group_alive(pgid) and time.monotonic() < deadline:
            time.sleep(0.02)
        return f"{info.get('argv0') or 'process'} (pid {pgid})"
    finally:
        pid_file.unlink(missing_ok=True)


def stop_pid(pid: int) -> None:
    """SIGTERM to process ``pid`` (and its group, if it leads one), then SIGKILL after the
    grace period if it still runs."""
    def alive() -> bool:
        return _start_time(pid) is not None and not _zombie(pid)

    targets = [pid]
    with contextlib.suppress(OSError):
        if os.getpgid(pid) == pid:
            targets = [-pid]
    for t in targets:
        with contextlib.suppress(ProcessLookupError):
            os.kill(t, signal.SIGTERM)
            os.kill(t, signal.SIGCONT)  # a stopped process (Ctrl-Z) acts on SIGTERM only then
    deadline = time.monotonic() + KILL_GRACE_S * 5
    while alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    for t in targets:
        with contextlib.suppress(ProcessLookupError):
            os.kill(t, signal.SIGKILL)
    deadline = time.monotonic() + KILL_GRACE_S
    while alive() and time.monotonic() < deadline:
        time.sleep(0.02)


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return False


def cmdline(pid: int) -> list[str] | None:
    """The argument vector of process ``pid`` (None: gone or unreadable)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            raw = f.read()
    except OSError:
        return None
    return [a.decode("utf-8", "replace") for a in raw.split(b"\0") if a] or None
