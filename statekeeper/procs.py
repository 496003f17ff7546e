"""Commands statekeeper runs for the operator: the release's stop and start, extra deploy
commands and their undo, health checks by command.

A command is written as one string and split like a shell would split it (``shlex``), but no
shell runs it: ``run = "python manage.py collectstatic"`` is an argument vector, and a pipeline
is written ``sh -c '...'``. Each runs in its own session (its process group is killed on
timeout), with standard input closed. Its standard output and error go to files in the run's
artifacts directory (0600: a command may print a secret), never to the ledger or a log: the
ledger records their sizes, keyed fingerprints (HMAC-SHA256 under the ledger's fingerprint
secret: a plain sha256 of a short token printed by a command could be found by hashing
guesses) and the exit code. A pid file written when it starts and an exit file written when it
has ended let a resumed run tell a command that never started, one that ended (and how) and
one whose end nobody saw, which is stopped first if it still runs (see :func:`probe`).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import logging
import os
import shlex
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ConfigError

# Not ``from . import files``: health.py (which config.py imports, as the package's __init__
# does) uses this module, and that form would import the package back (tests/test_layering.py).
from .files import create_private, private_dir, write_atomic
from .logs import argv_text, elapsed

log = logging.getLogger(__name__)

# After the timeout: SIGTERM to the command's process group, then SIGKILL after this long.
KILL_GRACE_S = 2.0


def split(command: str, where: str) -> list[str]:
    """The argument vector of ``command``; ConfigError naming ``where`` if it has none or its
    quotes do not close."""
    try:
        argv = shlex.split(command)
    except ValueError as e:
        raise ConfigError(f"{where}: cannot split the command: {e}") from e
    if not argv:
        raise ConfigError(f"{where}: the command is empty")
    return argv


def not_executable(argv: list[str], cwd: Path, env: Mapping[str, str] | None = None) -> str | None:
    """Why ``argv[0]`` cannot be run from ``cwd`` (None: it can). A name without a slash is
    looked up in PATH, a path relative to ``cwd``."""
    prog = argv[0]
    if "/" not in prog:
        path = (env or os.environ).get("PATH", os.defpath)
        return None if shutil.which(prog, path=path) else f"{prog} is not found in PATH"
    p = Path(prog) if Path(prog).is_absolute() else cwd / prog
    if not p.exists():
        return f"{p} does not exist"
    if not p.is_file() or not os.access(p, os.X_OK):
        return f"{p} is not an executable file"
    return None


@dataclass(frozen=True)
class Outcome:
    """How a command ended. ``exit_code`` is None when it was killed at its timeout."""

    exit_code: int | None
    timed_out: bool
    duration_ms: int
    stdout: Path
    stderr: Path

    @property
    def ok(self) -> bool:
        return self.exit_code == 0

    def result(self, secret: bytes | None = None) -> dict[str, Any]:
        """What the ledger records: sizes and, given the fingerprint secret, keyed
        fingerprints of the output; never its content, never a plain digest of it."""
        out: dict[str, Any] = {"exit_code": self.exit_code, "timed_out": self.timed_out,
                               "duration_ms": self.duration_ms}
        for label, path in (("stdout", self.stdout), ("stderr", self.stderr)):
            size, digest = _digest(path, secret)
            out[f"{label}_bytes"] = size
            if digest is not None:
                out[f"{label}_hmac"] = digest
            out[f"{label}_file"] = path.name
        return out

    def how(self, timeout: str) -> str:
        """How it ended, for a message: ``timeout`` says when a timed-out one was stopped
        ("after 20s", "at the 60s deadline")."""
        if self.timed_out:
            return f"timed out {timeout} (killed)"
        if self.exit_code is not None and self.exit_code < 0:
            return f"was killed by signal {-self.exit_code}"
        return f"exited with status {self.exit_code}"

    def failure(self, what: str, timeout_ms: int) -> str:
        """One line for a failed command, pointing at its output (not quoting it)."""
        from .durations import format_ms

        how = self.how(f"after {format_ms(timeout_ms)}")
        return f"{what} {how}; its output is in {self.stderr} and {self.stdout}"


def _digest(path: Path, secret: bytes | None) -> tuple[int, str | None]:
    h = hmac.new(secret or b"", digestmod=hashlib.sha256)
    size = 0
    try:
        with open(path, "rb") as f:
            while chunk := f.read(1 << 16):
                h.update(chunk)
                size += len(chunk)
    except FileNotFoundError:
        pass
    return size, h.hexdigest() if secret is not None else None


def _paths(out_dir: Path, name: str) -> tuple[Path, Path, Path]:
    return out_dir / f"{name}.out", out_dir / f"{name}.err", out_dir / f"{name}.exit"


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (its identity with its pid)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def run(
    argv: list[str],
    *,
    cwd: Path,
    timeout_ms: int,
    out_dir: Path,
    name: str,
    env: Mapping[str, str] | None = None,
) -> Outcome:
    """Run ``argv`` to its end or its timeout; output to ``out_dir/name.out`` and ``.err``
    (replacing those of an earlier attempt). OSError if it cannot be started."""
    private_dir(out_dir)
    out, err, exit_file = _paths(out_dir, name)
    pid_file = out_dir / f"{name}.pid"
    for p in (out, err, exit_file, pid_file):
        p.unlink(missing_ok=True)
    fd_out = create_private(out)
    try:
        fd_err = create_private(err)
    except BaseException:
        os.close(fd_out)
        raise
    t0 = time.monotonic()
    log.info("running %s (in %s, timeout %s)", argv_text(argv), cwd, elapsed(timeout_ms))
    try:
        proc = subprocess.Popen(
            argv, cwd=cwd, stdin=subprocess.DEVNULL, stdout=fd_out, stderr=fd_err,
            start_new_session=True, env=None if env is None else dict(env),
        )
    finally:
        os.close(fd_out)
        os.close(fd_err)
    import socket

    # the command's process group (its own session): a resumed run stops it if it still runs
    write_atomic(pid_file, json.dumps({"pgid": proc.pid, "host": socket.gethostname(),
                                       "start_time": _start_time(proc.pid)}))
    timed_out = False
    try:
        code: int | None = proc.wait(timeout=timeout_ms / 1000)
    except subprocess.TimeoutExpired:
        timed_out = True
        _kill_group(proc)
        code = None
    outcome = Outcome(code, timed_out, int((time.monotonic() - t0) * 1000), out, err)
    log.info("%s: %s after %s", os.path.basename(argv[0]),
             "timed out" if timed_out else f"exit {code}", elapsed(outcome.duration_ms))
    write_atomic(exit_file, json.dumps({"exit_code": code, "timed_out": timed_out,
                                              "duration_ms": outcome.duration_ms}))
    return outcome


def _kill_group(proc: subprocess.Popen[Any]) -> None:
    """SIGTERM to the whole group, a grace period, then SIGKILL to whatever of it is left
    (a child that ignores SIGTERM outlives its leader)."""
    _stop_group(proc.pid, lambda: _waited(proc))
    proc.wait()


def _waited(proc: subprocess.Popen[Any]) -> bool:
    try:
        proc.wait(timeout=KILL_GRACE_S)
    except subprocess.TimeoutExpired:
        return False
    return True


def pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False  # 0 and negatives address process groups, never one holder
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OverflowError:
        return False
    # A zombie (killed, not yet reaped by its parent) is dead for our purposes.
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _group_alive(pgid: int) -> bool:
    """Is any process of process group ``pgid`` (the child's session) still running? A zombie
    is not (it holds no connection and runs nothing; where no init reaps orphans, one lingers
    after its group was killed, and ``killpg(pgid, 0)`` would count it)."""
    proc = Path("/proc")
    if not proc.is_dir():
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    for d in proc.iterdir():
        if not d.name.isdigit():
            continue
        try:
            fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # gone meanwhile
        # after "(comm)": state, ppid, pgrp
        if len(fields) > 2 and fields[2] == str(pgid) and fields[0] != "Z":
            return True
    return False


def _stop_group(pgid: int, leader_gone: Callable[[], bool]) -> None:
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        return
    leader_gone()
    deadline = time.monotonic() + KILL_GRACE_S
    while _group_alive(pgid) and time.monotonic() < deadline:
        time.sleep(0.02)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)


def probe(out_dir: Path, name: str) -> Outcome | bool:
    """After a crash: the command's outcome if it ended (its exit file is there); False if it
    never started (no output file); True if it started and nobody saw it end. A command of
    this host still running (its process group, identified by the leader's start time) is
    stopped first: nothing may run beside it, neither a second copy nor its undo."""
    out, err, exit_file = _paths(out_dir, name)
    try:
        data = json.loads(exit_file.read_text())
    except (OSError, ValueError):
        if not out.exists():
            return False
        _stop_orphan(out_dir / f"{name}.pid")
        return True
    return Outcome(data.get("exit_code"), bool(data.get("timed_out")),
                   int(data.get("duration_ms") or 0), out, err)


def _stop_orphan(pid_file: Path) -> None:
    import socket

    try:
        info = json.loads(pid_file.read_text())
        pgid = int(info["pgid"])
    except (OSError, ValueError, KeyError, TypeError):
        return
    if info.get("host") != socket.gethostname() or pgid <= 1:
        return
    now = _start_time(pgid)
    # the leader alive with another start time: the pid was reused, not ours to stop; the
    # leader gone with its group alive: ours (a group id is not reused while the group lives)
    if now is not None and now != info.get("start_time"):
        return
    if not _group_alive(pgid):
        return
    _stop_group(pgid, lambda: False)
    deadline = time.monotonic() + KILL_GRACE_S
    while _group_alive(pgid) and time.monotonic() < deadline:
        time.sleep(0.02)
