"""How a pgBackRest restore reads the server's state from ``postmaster.pid`` when the server
does not answer, and keeps two restores of one stanza apart: real processes and files, no
server (the restores themselves are in tests/test_restore_server_down.py)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from statekeeper.backups.model import Manifest
from statekeeper.backups.pgbackrest import PgBackRestMethod
from statekeeper.errors import LockHeld, RestoreIncomplete
from statekeeper.targets import Target


def method(tmp_path: Path) -> PgBackRestMethod:
    data, locks = tmp_path / "data", tmp_path / "locks"
    data.mkdir(exist_ok=True)
    locks.mkdir(exist_ok=True)
    conf = tmp_path / "pgbackrest.conf"
    conf.write_text(f"[global]\nlock-path={locks}\n\n[sk]\npg1-path={data}\n")
    target = Target.from_url("postgresql://postgres@127.0.0.1:1/app")
    return PgBackRestMethod(target, stanza="sk", config=conf, stop_command="true",
                            start_command="true")


def pid_file(tmp_path: Path, pid: int) -> Path:
    path = tmp_path / "data" / "postmaster.pid"
    path.write_text(f"{pid}\n{tmp_path / 'data'}\n1700000000\n5432\n")
    return path


def test_a_live_server_a_dead_one_and_one_that_cannot_be_told(tmp_path: Path) -> None:
    m = method(tmp_path)
    assert m._postmaster() is None
    # a process whose working directory is the data directory: the server, alive
    live = subprocess.Popen(["sleep", "30"], cwd=tmp_path / "data")
    try:
        pid_file(tmp_path, live.pid)
        pm = m._postmaster()
        assert pm is not None and (pm.pid, pm.verdict) == (live.pid, "running")
        assert m._running()  # it does not answer, but it runs: stop_command is due
    finally:
        live.kill()
        live.wait()
    # its process gone: stale (the server died without removing it)
    pm = m._postmaster()
    assert pm is not None and pm.verdict == "stale"
    assert not m._running()
    # a live process elsewhere (a pid reused, a server in another namespace): not removed
    pid_file(tmp_path, 1)
    pm = m._postmaster()
    assert pm is not None and pm.verdict == "unknown"
    assert m._running()
    # written before this boot: stale whatever its pid is now
    os.utime(tmp_path / "data" / "postmaster.pid", (1_000_000, 1_000_000))
    pm = m._postmaster()
    assert pm is not None and pm.verdict == "stale"


def test_an_unknown_pid_file_stops_the_restore_before_anything_is_touched(
    tmp_path: Path,
) -> None:
    m = method(tmp_path)
    path = pid_file(tmp_path, 1)
    touched: list[str] = []
    m._restore = lambda *a: touched.append("restore")  # type: ignore[method-assign]
    m._pause_at_target = lambda: False  # type: ignore[method-assign]
    with pytest.raises(RestoreIncomplete) as e:
        m.restore(_manifest(), lambda: touched.append("hook"))
    assert str(e.value) == (
        f"{path} names pid 1, which runs but is not provably this data directory's server "
        "(another namespace, or the pid reused); nothing was restored: if the server is "
        f"really down, remove {path} and resume")
    assert touched == [] and path.exists()


def test_two_restores_of_one_stanza_on_one_host_are_kept_apart(tmp_path: Path) -> None:
    first, second = method(tmp_path), method(tmp_path)
    with first._restoring():
        with pytest.raises(LockHeld) as e, second._restoring():
            pass
        assert str(e.value) == (
            f"another restore of stanza sk is running (pid {os.getpid()}); lock file "
            f"{tmp_path / 'locks' / 'sk-statekeeper-restore.lock'}")
    with second._restoring():  # released with the first
        pass
    assert (tmp_path / "locks" / "sk-statekeeper-restore.lock").stat().st_mode & 0o777 == 0o600


def _manifest() -> Manifest:
    return Manifest(
        id="b1", method="pgbackrest", artifact="backup.manifest", size=1, sha256="0" * 64,
        server_version="15", created_at="2026-12-03T00:00:00Z",
        completed_at="2026-12-03T00:00:01Z", duration_ms=1, target="postgresql://x/app",
        database="app", fingerprint={}, stanza="sk", pgbackrest_label="20261203-000000F",
        restore_point="statekeeper-b1", restore_point_lsn="0/3000000")
