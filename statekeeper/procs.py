"""Commands statekeeper runs for the operator: the release's stop and start, extra deploy
commands and their undo, health checks by command.

A command is written as one string and split like a shell would split it (``shlex``), but no
shell runs it: ``run = "python manage.py collectstatic"`` is an argument vector, and a pipeline
is written ``sh -c '...'``. Each runs in its own session (its process group is killed on
timeout), with standard input closed. Its standard output and error go to files in the run's
artifacts directory (0600: a command may print a secret), never to the ledger or a log: the
ledger records their sizes, sha256 and the exit code. An exit file, written atomically when
the command has ended, lets a resumed run tell a command that never started, one that ended
(and how) and one whose end nobody saw (see :func:`probe`).
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ConfigError

# Not ``from . import files``: health.py (which config.py imports, as the package's __init__
# does) uses this module, and that form would import the package back (tests/test_layering.py).
from .files import create_private, private_dir, write_atomic

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

    def result(self) -> dict[str, Any]:
        """What the ledger records: sizes and digests of the output, never its content."""
        out: dict[str, Any] = {"exit_code": self.exit_code, "timed_out": self.timed_out,
                               "duration_ms": self.duration_ms}
        for label, path in (("stdout", self.stdout), ("stderr", self.stderr)):
            size, digest = _digest(path)
            out[f"{label}_bytes"] = size
            out[f"{label}_sha256"] = digest
            out[f"{label}_file"] = path.name
        return out

    def failure(self, what: str, timeout_ms: int) -> str:
        """One line for a failed command, pointing at its output (not quoting it)."""
        from .durations import format_ms

        if self.timed_out:
            how = f"did not finish within {format_ms(timeout_ms)} (killed)"
        elif self.exit_code is not None and self.exit_code < 0:
            how = f"was killed by signal {-self.exit_code}"
        else:
            how = f"exited with status {self.exit_code}"
        return f"{what} {how}; its output is in {self.stderr} and {self.stdout}"


def _digest(path: Path) -> tuple[int, str]:
    h = hashlib.sha256()
    size = 0
    try:
        with open(path, "rb") as f:
            while chunk := f.read(1 << 16):
                h.update(chunk)
                size += len(chunk)
    except FileNotFoundError:
        pass
    return size, h.hexdigest()


def _paths(out_dir: Path, name: str) -> tuple[Path, Path, Path]:
    return out_dir / f"{name}.out", out_dir / f"{name}.err", out_dir / f"{name}.exit"


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
    for p in (out, err, exit_file):
        p.unlink(missing_ok=True)
    fd_out = create_private(out)
    try:
        fd_err = create_private(err)
    except BaseException:
        os.close(fd_out)
        raise
    t0 = time.monotonic()
    try:
        proc = subprocess.Popen(
            argv, cwd=cwd, stdin=subprocess.DEVNULL, stdout=fd_out, stderr=fd_err,
            start_new_session=True, env=None if env is None else dict(env),
        )
    finally:
        os.close(fd_out)
        os.close(fd_err)
    timed_out = False
    try:
        code: int | None = proc.wait(timeout=timeout_ms / 1000)
    except subprocess.TimeoutExpired:
        timed_out = True
        _kill_group(proc)
        code = None
    outcome = Outcome(code, timed_out, int((time.monotonic() - t0) * 1000), out, err)
    write_atomic(exit_file, json.dumps({"exit_code": code, "timed_out": timed_out,
                                              "duration_ms": outcome.duration_ms}))
    return outcome


def _kill_group(proc: subprocess.Popen[Any]) -> None:
    for sig, grace in ((signal.SIGTERM, KILL_GRACE_S), (signal.SIGKILL, None)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=grace)
            return
        except subprocess.TimeoutExpired:
            continue
        except TypeError:  # pragma: no cover
            return
    proc.wait()


def probe(out_dir: Path, name: str) -> Outcome | bool:
    """After a crash: the command's outcome if it ended (its exit file is there); False if it
    never started (no output file); True if it started and nobody saw it end."""
    out, err, exit_file = _paths(out_dir, name)
    try:
        data = json.loads(exit_file.read_text())
    except (OSError, ValueError):
        return out.exists()
    return Outcome(data.get("exit_code"), bool(data.get("timed_out")),
                   int(data.get("duration_ms") or 0), out, err)
