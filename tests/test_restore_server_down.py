"""A pgBackRest rollback interrupted while the server is stopped is resumed with the server
still down: the ledger lease guards the run, the restore's probe works from the files, the
redo starts the server, and the run's target lock is taken again as soon as the server accepts
connections, so that no other process can migrate the target mid-rollback. Real runs of the CLI
killed (a failpoint's ``os._exit``, SIGKILL) and interrupted (SIGINT) during the real
``pgbackrest restore``, on the throwaway pgBackRest cluster of tests/test_backup_pgbackrest.py.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from statekeeper import command
from tests.test_backup_support import PGBACKREST_MARKS
from tests.test_cluster_scope import databases, project
from tests.upgrade_support import GOOD, ROOT, SCENARIOS, Project, seed

pytestmark = PGBACKREST_MARKS


def server_up(cluster: Any) -> bool:
    try:
        cluster.psql("SELECT 1")
    except subprocess.CalledProcessError:
        return False
    return True


def one_project(tmp_path: Path, cluster: Any, kwargs: dict[str, Any], name: str,
                migrations: dict[str, str]) -> Project:
    db = cluster.createdb(name)
    seed("postgresql", cluster.url(db))
    return project(tmp_path / name, cluster, kwargs, db, migrations,
                   ledger_url=f"sqlite:///{tmp_path / 'ledger.db'}",
                   acknowledge=[d for d in databases(cluster) if d != db])


def spawn(p: Project, *args: str, failpoint: str | None = None) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("STATEKEEPER_FAILPOINT", None)
    if failpoint:
        env["STATEKEEPER_FAILPOINT"] = failpoint
    return subprocess.Popen([sys.executable, "-m", "cli", "--config", str(p.config), *args],
                            cwd=p.dir, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def pgbackrest_restores(backup_id: str) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        try:
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if (argv and argv[0].endswith(b"pgbackrest") and b"restore" in argv
                and f"--target=statekeeper-{backup_id}".encode() in argv):
            found.append(int(entry))
    return found


def during_pgbackrest_restore(p: Project, run_id: str, backup_id: str, sig: int) -> str:
    """``resume`` with the server down, sent ``sig`` while its pgbackrest restore runs;
    its stderr. The restore tool must be gone with it."""
    proc = spawn(p, "resume", run_id)
    deadline = time.monotonic() + 90
    while not pgbackrest_restores(backup_id):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "pgbackrest restore never started"
        time.sleep(0.01)
    proc.send_signal(sig)
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == (130 if sig == signal.SIGINT else -sig), err
    deadline = time.monotonic() + 10
    while pgbackrest_restores(backup_id) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert pgbackrest_restores(backup_id) == []  # it died with its run
    return err


def test_a_rollback_killed_and_interrupted_with_the_server_down_resumes_to_rolled_back(
    pgbackrest_archiving: tuple[Any, dict[str, Any]], tmp_path: Path
) -> None:
    cluster, kwargs = pgbackrest_archiving
    p = one_project(tmp_path, cluster, kwargs, "downapp", SCENARIOS["restore"])
    try:
        before = p.fingerprint()
        # the third migration fails; the rollback dies with the server stopped, before
        # pgbackrest restore ran
        crashed = p.cli("start", "--to", "v2.6", failpoint="restore.middle")
        assert crashed.returncode == 137, crashed.stdout + crashed.stderr
        assert not server_up(cluster)
        run = command.status(p.settings())
        backup_id = run.backup["backup_id"]

        st = p.cli("status", check=True).stdout
        assert "target server is down (" in st and "Connection refused" in st, st
        assert f"'statekeeper resume {run.run_id}' redoes the interrupted restore and starts " \
               "the server" in st, st
        js = json.loads(p.cli("status", "--json", check=True).stdout)["server"]
        assert js["up"] is False and "redoes the interrupted restore" in js["resume"]

        # killed (SIGKILL) in the middle of pgbackrest restore: a half-restored data
        # directory that the server cannot start from; then killed again in the next one
        # (a first Ctrl-C lets the restore finish, tests/test_interrupts.py; a second stops
        # its tool at once, tests/test_orphans.py)
        for _ in range(2):
            during_pgbackrest_restore(p, run.run_id, backup_id, signal.SIGKILL)
            assert not server_up(cluster)

        # the next resume redoes the restore, starts the server, and takes the run's lock
        # again as soon as it accepts connections: stopped as its restore ends, it holds it
        resumed = spawn(p, "resume", run.run_id, failpoint="restore.done@stop")
        deadline = time.monotonic() + 180
        while not _stopped(resumed.pid):
            assert resumed.poll() is None, resumed.communicate()
            assert time.monotonic() < deadline, "resume never finished its restore"
            time.sleep(0.05)
        try:
            assert server_up(cluster)
            other = p.cli("migrate", "up")
            assert other.returncode == 5, other.stdout + other.stderr
            assert f"run={run.run_id}" in other.stderr, other.stderr
        finally:
            os.kill(resumed.pid, signal.SIGCONT)
        out, err = resumed.communicate(timeout=120)
        assert resumed.returncode == 1, out + err  # failed and rolled back cleanly
        assert f"run {run.run_id}: rolled_back" in out, out + err
        assert p.fingerprint() == before
        assert p.applied_ids() == []
        assert server_up(cluster)
    finally:
        if not server_up(cluster):
            subprocess.run(kwargs["start_command"], shell=True, check=False)


def _stopped(pid: int) -> bool:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return False
    return fields[0] == "T"


def test_a_forward_resume_with_the_server_down_stops_with_the_way_out_and_records_nothing(
    pgbackrest_archiving: tuple[Any, dict[str, Any]], tmp_path: Path
) -> None:
    cluster, kwargs = pgbackrest_archiving
    p = one_project(tmp_path, cluster, kwargs, "fwdapp", GOOD)
    try:
        crashed = p.cli("start", "--to", "v2.6", failpoint="migrate.before")
        assert crashed.returncode == 137, crashed.stdout + crashed.stderr
        subprocess.run(kwargs["stop_command"], shell=True, check=True, capture_output=True)
        run = command.status(p.settings())
        steps = len(run.steps)
        st = p.cli("status", check=True).stdout
        assert f"start the server, then 'statekeeper resume {run.run_id}'" in st, st
        r = p.cli("resume", run.run_id)
        assert r.returncode == 6, r.stdout + r.stderr  # nothing was done
        last = r.stderr.strip().splitlines()[-1]
        assert last.startswith(f"error: target {p.target().shown}: connection failed: "), last
        assert "Connection refused" in last
        assert last.endswith(
            f"Connection refused: run {run.run_id} needs the target's server; start it, then "
            f"'statekeeper resume {run.run_id}'"), last
        after = command.status(p.settings())
        assert after.position == run.position and len(after.steps) == steps  # nothing recorded
        subprocess.run(kwargs["start_command"], shell=True, check=True, capture_output=True)
        done = p.cli("resume", run.run_id)
        assert done.returncode == 0, done.stdout + done.stderr
        assert p.applied_ids() == sorted(n.removesuffix(".sql") for n in GOOD)
    finally:
        if not server_up(cluster):
            subprocess.run(kwargs["start_command"], shell=True, check=False)
