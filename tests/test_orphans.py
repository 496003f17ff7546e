"""Backup tools die with their run, and resume finishes a run whose tool outlived it: a real
SIGKILL of statekeeper while pg_dump runs, and an orphaned ``pgbackrest backup`` holding the
stanza's lock (issue 14)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.test_backup_support import PGBACKREST_MARKS
from tests.upgrade_support import ROOT, SCENARIOS, make_project, seed


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _wait_for(cond: Any, what: str, timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = cond()
        if got:
            return got
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.postgresql
@pytest.mark.parametrize(("sig", "returncode"), [
    (signal.SIGKILL, -9),  # the kernel's death signal kills pg_dump
    (signal.SIGTERM, -15),  # forwarded to pg_dump's group; statekeeper dies of it (143)
    (signal.SIGINT, 130),  # Ctrl-C: pg_dump's group stopped, "error: interrupted"
], ids=["SIGKILL", "SIGTERM", "SIGINT"])
def test_a_signal_during_pg_dump_stops_it_and_resume_completes(
    tmp_path: Path, pg_cluster: Any, sig: int, returncode: int
) -> None:
    from statekeeper import command

    url = pg_cluster.url(pg_cluster.createdb("orphan"))
    seed("postgresql", url)
    proj = make_project(tmp_path / "p", "postgresql", url, dict(SCENARIOS["forward"]))
    # a pg_dump that takes its time (then is the real one): killed while it runs
    from tests.pgcluster import PG_BIN

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("pg_restore", "psql"):
        (bin_dir / name).symlink_to(PG_BIN / name)
    (bin_dir / "pg_dump").write_text(
        f"#!{sys.executable}\nimport os, sys, time\ntime.sleep(60)\n"
        f"os.execv({str(PG_BIN / 'pg_dump')!r}, sys.argv)\n")
    (bin_dir / "pg_dump").chmod(0o755)
    env = dict(os.environ, PYTHONPATH=str(ROOT), STATEKEEPER_PG_BIN=str(bin_dir))
    env.pop("STATEKEEPER_FAILPOINT", None)
    errors = tmp_path / "stderr"
    p = subprocess.Popen(
        [sys.executable, "-m", "cli", "--config", str(proj.config), "start", "--to", "v2.6"],
        cwd=proj.dir, env=env, stdout=subprocess.DEVNULL, stderr=errors.open("w"), text=True,
    )
    try:
        pid_file = _wait_for(lambda: next((proj.dir / "backups").glob("*/pg_dump.pid"), None),
                             "pg_dump to start")
        pid = int(json.loads(_wait_for(pid_file.read_text, "the pid file"))["pgid"])
        assert _alive(pid)
        partial = pid_file.parent / ".database.dump.partial"
        assert partial.exists()
        p.send_signal(sig)
        if sig != signal.SIGKILL:
            # the first Ctrl-C/SIGTERM lets the running step finish (a long pg_dump is not
            # thrown away); the second stops at once, and that is what this test is about
            _wait_for(lambda: "stopping after the current step" in errors.read_text(),
                      "the first signal to be acknowledged")
            p.send_signal(sig)
        p.wait(timeout=30)
        err = errors.read_text()
        assert p.returncode == returncode, err
        if sig == signal.SIGINT:
            assert err.splitlines()[-1].startswith("error: interrupted at once: run "), err
        # pg_dump does not outlive statekeeper
        _wait_for(lambda: not _alive(pid), "pg_dump to die with statekeeper", timeout=5)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    res = proj.cli("resume")
    run = command.status(proj.settings())
    assert run.state == "completed", res.stdout + res.stderr
    export = tmp_path / "ledger.export"
    command.ledger_export(proj.settings(), export)
    if sig != signal.SIGINT:  # Ctrl-C unwinds: the failed backup removed its own partial
        assert "removed the partial .database.dump.partial" in export.read_text(
            errors="replace")
    leftovers = [q for q in (proj.dir / "backups").rglob("*")
                 if q.name.endswith((".partial", ".pid"))]
    assert leftovers == []


def test_orphaned_pgbackrest_backup_is_stopped_and_resume_finishes_forward(
    tmp_path: Path, pgbackrest_archiving: tuple[Any, dict[str, Any]]
) -> None:
    from statekeeper import command

    cluster, kw = pgbackrest_archiving
    db = cluster.createdb("orphanpb")
    url = cluster.url(db)
    seed("postgresql", url)
    proj = make_project(tmp_path / "p", "postgresql", url, dict(SCENARIOS["forward"]))
    # the cluster's other databases (other tests'), acknowledged: a restore rewinds them too
    others = [d for d in cluster.psql("SELECT datname FROM pg_database WHERE datallowconn "
                                      "AND NOT datistemplate").split() if d != db]
    listed = ", ".join(f'"{d}"' for d in others)
    cfg = proj.config.read_text().replace(
        'method = "pg_dump"',
        f'method = "pgbackrest"\nstanza = "{kw["stanza"]}"\n'
        f'pgbackrest_config = "{kw["pgbackrest_config"]}"\n'
        f'stop_command = "{kw["stop_command"]}"\nstart_command = "{kw["start_command"]}"\n'
        f'cluster_databases = [{listed}]',
    )
    proj.config.write_text(cfg)
    # a run killed as its backup started ...
    res = proj.cli("start", "--to", "v2.6", failpoint="backup.started")
    assert res.returncode != 0
    run = command.status(proj.settings())
    assert run.state == "backing_up", res.stdout + res.stderr
    # ... whose pgbackrest backup outlived it (as one started by an older statekeeper would),
    # holding the stanza's backup lock
    argv = ["pgbackrest", f"--config={kw['pgbackrest_config']}", f"--stanza={kw['stanza']}",
            "--type=full", "--log-level-console=error",
            f"--annotation=statekeeper-backup-id={run.run_id}", "backup"]
    if os.geteuid() == 0:
        argv = ["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups", *argv]
    orphan = subprocess.Popen(argv, start_new_session=True, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, cwd="/")
    try:
        lock = cluster.root / "lock" / f"{kw['stanza']}-backup.lock"

        def holds() -> bool:
            try:
                return int(json.loads(lock.read_text())["pid"]) == orphan.pid
            except (OSError, ValueError, KeyError):
                return False

        _wait_for(holds, "the orphan to take the lock", timeout=20)
        # stopped where it holds the lock, so that it cannot finish before resume finds it
        # (resume's stop continues it to deliver its SIGTERM)
        os.killpg(orphan.pid, signal.SIGSTOP)
        res = proj.cli("resume")
        out = res.stdout + res.stderr
        run = command.status(proj.settings())
        assert run.state == "completed", out
        assert orphan.poll() is not None, "the orphan still runs"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(orphan.pid, signal.SIGKILL)
        orphan.wait()
    export = tmp_path / "ledger.export"
    command.ledger_export(proj.settings(), export)
    # the probe of the backup in doubt says what it did (in the step's recorded error)
    assert (f"stopped the orphaned pgbackrest backup of backup {run.run_id}"
            in export.read_text(errors="replace")), out


for _mark in PGBACKREST_MARKS:
    test_orphaned_pgbackrest_backup_is_stopped_and_resume_finishes_forward = _mark(
        test_orphaned_pgbackrest_backup_is_stopped_and_resume_finishes_forward)
