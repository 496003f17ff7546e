"""The release side of an upgrade, end to end: a real application (tests/release_app.py, an
HTTP server started from the release `current` points to, reading its configuration file and
the database), real stop/start commands, a real ledger, SQLite and PostgreSQL targets."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from statekeeper import command
from statekeeper.fingerprint import diff
from tests.release_app import SECRET, ask
from tests.upgrade_support import ROOT, SCENARIOS, Project, make_release_project, seeded_db

MARK = "undo-ran"
COMMANDS = (
    '[[deploy.command]]\nname = "collect static"\nrun = "sh -c \'echo collected > static\'"\n'
    f'undo = "sh -c \'rm -f static; echo undone >> ../../{MARK}\'"\n'
)


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def _project(tmp_path: Path, backend: str, request: pytest.FixtureRequest, **kw: Any) -> Project:
    url = seeded_db(tmp_path, backend, "app", request)
    return make_release_project(tmp_path / "proj", backend, url, SCENARIOS["forward"], request,
                                **kw)


def _live(p: Project) -> tuple[str, bytes, int, int, int]:
    f = p.dir / "config" / "app.env"
    st = f.stat()
    return os.readlink(p.dir / "current"), f.read_bytes(), st.st_mode, st.st_uid, st.st_gid


def test_a_good_upgrade_switches_code_and_configuration(
        tmp_path: Path, backend: str, request: pytest.FixtureRequest) -> None:
    p = _project(tmp_path, backend, request, commands=COMMANDS)
    os.chown(p.dir / "config" / "app.env", 4321, 4322)  # the application's user, not ours
    assert ask(p.port)[1]["version"] == "v2.5"
    shown = p.cli("plan", "--to", "v2.6").stdout.splitlines()
    after = shown[shown.index("steps:") + 1:]
    steps = after[:next(i for i, ln in enumerate(after) if not ln.startswith("  "))]
    assert after[len(steps)].startswith("plan sha256 ")  # then the plan's digest
    assert [ln.split(". ", 1)[1] for ln in steps] == [
        "preflight", "stop the application (bin/appctl stop)",
        f"backup ({'sqlite' if backend == 'sqlite' else 'pg_dump'})",
        "snapshot config/app.env and where current points (releases/v2.5)", "tag v2.5",
        "migrate 001_bump_qty", "migrate 002_orders", "migrate 003_user_status",
        "install config/app.env from releases/v2.6/config/app.env",
        "switch current -> releases/v2.6 (was releases/v2.5)",
        "run 'collect static': sh -c 'echo collected > static' (undo: sh -c 'rm -f static; "
        "echo undone >> ../../undo-ran')",
        "start release v2.6 (bin/appctl start)", "health checks", "tag v2.6"]
    assert ask(p.port)[1]["version"] == "v2.5"  # plan changed nothing
    r = p.cli("start", "--to", "v2.6")
    assert r.returncode == 0, r.stdout + r.stderr
    link, config, mode, uid, gid = _live(p)
    assert link == "releases/v2.6"
    assert config == (p.dir / "releases/v2.6/config/app.env").read_bytes()
    # the mode and owner of the file it replaced
    assert (mode & 0o777, uid, gid) == (0o640, 4321, 4322)
    status, body = ask(p.port)
    assert (status, body["version"], body["release_config"]) == (200, "v2.6", "v2.6")
    assert (p.dir / "releases/v2.6/static").read_text() == "collected\n"
    run = command.status(p.settings())
    kinds = [st.kind for st in run.steps]
    assert kinds == ["preflight", "stop", "backup", "snapshot", "tag", "migrate", "migrate",
                     "migrate", "config", "switch", "command", "start", "health", "tag"]
    assert run.plan.release is not None
    assert (run.plan.release.from_release, run.plan.release.to_release) == ("v2.5", "v2.6")
    st = p.cli("status")
    assert "release v2.5 -> v2.6" in st.stdout, st.stdout


def test_an_unhealthy_release_is_rolled_back_whole(
        tmp_path: Path, backend: str, request: pytest.FixtureRequest) -> None:
    p = _project(tmp_path, backend, request, healthy=False, commands=COMMANDS)
    os.chown(p.dir / "config" / "app.env", 4321, 4322)
    before, live = p.fingerprint(), _live(p)
    r = p.cli("start", "--to", "v2.6")
    assert r.returncode == 1, r.stdout + r.stderr
    assert "api" in r.stdout + r.stderr
    assert _live(p) == live  # link, configuration byte for byte, mode, owner
    assert p.fingerprint() == before, diff(before, p.fingerprint())
    status, body = ask(p.port)
    assert (status, body["version"]) == (200, "v2.5")
    assert not (p.dir / "releases/v2.6/static").exists()
    assert (p.dir / MARK).read_text() == "undone\n"
    run = command.status(p.settings())
    assert run.state == "rolled_back"
    rollback = [s.kind for s in run.phase_steps()]
    assert rollback == ["unstart", "undo", "unswitch", "unconfig", "revert", "revert", "revert",
                        "compare", "unstop", "recheck"]
    assert "release v2.5 is back and healthy" in (run.transitions[-1]["reason"] or "")


def test_an_old_release_that_stays_unhealthy_ends_failed(
        tmp_path: Path, request: pytest.FixtureRequest) -> None:
    p = _project(tmp_path, "sqlite", request, healthy=False)
    # the old release's code breaks while the upgrade runs: the rollback cannot make it healthy
    old = p.dir / "releases/v2.5/app.py"
    old.write_text(old.read_text().replace("HEALTHY = True", "HEALTHY = False"))
    r = p.cli("start", "--to", "v2.6")
    assert r.returncode == 3, r.stdout + r.stderr
    run = command.status(p.settings())
    assert run.state == "failed"
    assert run.failure is not None and "old release is unhealthy" in run.failure
    # a human fixes it; resume retries the rollback and checks again
    old.write_text(old.read_text().replace("HEALTHY = False", "HEALTHY = True"))
    subprocess.run([str(p.dir / "bin/appctl"), "stop"], cwd=p.dir, check=True,
                   capture_output=True)
    r = p.cli("resume")
    assert r.returncode == 1, r.stdout + r.stderr
    assert command.status(p.settings()).state == "rolled_back"
    assert ask(p.port)[1]["version"] == "v2.5"


def test_preflight_refuses_a_missing_release_before_any_backup(
        tmp_path: Path, request: pytest.FixtureRequest) -> None:
    p = _project(tmp_path, "sqlite", request)
    r = p.cli("start", "--to", "v2.7")
    assert r.returncode == 1, r.stdout + r.stderr
    run = command.status(p.settings())
    assert run.state == "rolled_back"
    assert run.failure is not None
    assert run.failure == (
        f"preflight failed: release v2.7 cannot be deployed: release directory "
        f"{p.dir / 'releases' / 'v2.7'} does not exist; the new configuration "
        f"{p.dir / 'releases' / 'v2.7' / 'config' / 'app.env'} for "
        f"{p.dir / 'config' / 'app.env'} does not exist")
    assert [s.kind for s in run.steps] == ["preflight"]
    assert not (p.dir / "backups").exists() or not list((p.dir / "backups").glob("*"))
    assert ask(p.port)[1]["version"] == "v2.5"  # never stopped


def test_a_failing_deploy_command_is_undone_with_the_rest(
        tmp_path: Path, request: pytest.FixtureRequest) -> None:
    cmds = COMMANDS + ('[[deploy.command]]\nname = "migrate search index"\n'
                       'run = "sh -c \'echo $BROKER_TOKEN; exit 3\'"\nundo = "true"\n')
    p = _project(tmp_path, "sqlite", request, commands=cmds)
    live = _live(p)
    env = {"BROKER_TOKEN": SECRET}
    r = p.cli("start", "--to", "v2.6", env=env)
    assert r.returncode == 1, r.stdout + r.stderr
    run = command.status(p.settings())
    failed = next(s for s in run.steps if s.status == "failed")
    assert failed.name == "command:2"
    assert "exited with status 3" in (failed.error or "")
    assert [s.name for s in run.phase_steps()][:4] == ["undo:2", "undo:1", "unswitch",
                                                      "unconfig"]
    assert _live(p) == live
    # its output (which printed the secret) is in the run's artifacts, private; nowhere else
    out = next((p.dir / ".statekeeper" / "runs").rglob("command-2.1.out"))
    assert SECRET in out.read_text()
    assert out.stat().st_mode & 0o777 == 0o600
    assert ask(p.port)[1]["version"] == "v2.5"


def test_a_deploy_command_killed_while_it_runs_is_stopped_and_not_run_again(
        tmp_path: Path, request: pytest.FixtureRequest) -> None:
    # the command outlives the killed statekeeper (its own session): resume must stop it
    # before it runs the undo, and never run it again
    cmds = ('[[deploy.command]]\nname = "slow"\n'
            'run = "sh -c \'echo x >> ../../ran; sleep 30; echo done >> ../../finished\'"\n'
            'undo = "sh -c \'echo u >> ../../undone\'"\n')
    p = _project(tmp_path, "sqlite", request, commands=cmds)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("STATEKEEPER_FAILPOINT", None)
    proc = subprocess.Popen([sys.executable, "-m", "cli", "--config", str(p.config), "start",
                             "--to", "v2.6"], cwd=p.dir, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not (p.dir / "ran").exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -9
    r = p.cli("resume", timeout=25)  # well before the orphan's 30 s sleep ends
    assert r.returncode == 1, r.stdout + r.stderr
    run = command.status(p.settings())
    assert run.state == "rolled_back"
    slow = next(s for s in run.steps if s.name == "command:1")
    assert slow.status == "failed" and "unknown" in (slow.error or "")
    assert (p.dir / "ran").read_text() == "x\n"  # never run twice
    assert (p.dir / "undone").read_text() == "u\n"
    assert ask(p.port)[1]["version"] == "v2.5"
    time.sleep(0.5)
    assert not (p.dir / "finished").exists()  # the orphan was stopped, not left to finish


def test_a_crash_between_configuration_files_then_rollback_restores_both(
        tmp_path: Path, request: pytest.FixtureRequest) -> None:
    p = _project(tmp_path, "sqlite", request)
    (p.dir / "config" / "broker.toml").write_text(f'key = "{SECRET}"\n')
    os.chmod(p.dir / "config" / "broker.toml", 0o600)
    for v in ("v2.5", "v2.6"):
        (p.dir / "releases" / v / "config" / "broker.toml").write_text(f'key = "{v}"\n')
    toml = p.config.read_text().replace('config_files = ["config/app.env"]',
                                        'config_files = ["config/app.env", "config/broker.toml"]')
    p.config.write_text(toml)
    before = {f: (f.read_bytes(), f.stat().st_mode) for f in (p.dir / "config").iterdir()}
    r = p.cli("start", "--to", "v2.6", failpoint="config.middle")
    assert r.returncode == 137
    # app.env is v2.6's, broker.toml still the old one: the step left half done
    assert b"RELEASE=v2.6" in (p.dir / "config" / "app.env").read_bytes()
    r = p.cli("resume", "--rollback")
    assert r.returncode == 0, r.stdout + r.stderr
    run = command.status(p.settings())
    assert run.state == "rolled_back"
    assert "unconfig" in [s.kind for s in run.steps]
    assert {f: (f.read_bytes(), f.stat().st_mode) for f in (p.dir / "config").iterdir()} == before


def test_a_symlink_planted_in_place_of_a_configuration_file_is_not_followed(
        tmp_path: Path, request: pytest.FixtureRequest) -> None:
    p = _project(tmp_path, "sqlite", request)
    live = p.dir / "config" / "app.env"
    before = (live.read_bytes(), live.stat().st_mode)
    r = p.cli("start", "--to", "v2.6", failpoint="config.before")
    assert r.returncode == 137
    elsewhere = tmp_path / "attacker.env"
    elsewhere.write_text("mine\n")
    elsewhere.chmod(0o666)
    live.unlink()
    live.symlink_to(elsewhere)
    r = p.cli("resume")
    assert r.returncode == 1, r.stdout + r.stderr
    run = command.status(p.settings())
    failed = next(s for s in run.steps if s.kind == "config" and s.status == "failed")
    assert "is no longer a regular file" in (failed.error or "")
    assert not live.is_symlink()
    assert (live.read_bytes(), live.stat().st_mode) == before  # the snapshot, not the link
    assert elsewhere.read_text() == "mine\n"


def test_a_command_whose_variable_changed_since_the_run_began_is_refused(
        tmp_path: Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CACHE_DIR", "cache-a")
    cmds = ('[[deploy.command]]\nname = "warm"\nrun = "sh -c \'echo ${CACHE_DIR} >> ../../ran\'"\n'
            'undo = "true"\n')
    p = _project(tmp_path, "sqlite", request, commands=cmds)
    r = p.cli("start", "--to", "v2.6", failpoint="command.before", env={"CACHE_DIR": "cache-a"})
    assert r.returncode == 137
    r = p.cli("resume", env={"CACHE_DIR": "cache-b"})
    assert r.returncode == 1, r.stdout + r.stderr  # refused, then rolled back
    run = command.status(p.settings())
    assert run.state == "rolled_back"
    assert "resolves to another command than when run" in (run.failure or "")
    assert not (p.dir / "ran").exists()  # neither value ran


def test_operator_rollback_of_a_completed_upgrade_takes_the_release_back(
        tmp_path: Path, request: pytest.FixtureRequest) -> None:
    p = _project(tmp_path, "sqlite", request)
    live = _live(p)
    assert p.cli("start", "--to", "v2.6").returncode == 0
    run_id = command.status(p.settings()).run_id
    r = p.cli("rollback", run_id)
    assert r.returncode == 0, r.stdout + r.stderr
    assert _live(p) == live
    assert ask(p.port)[1]["version"] == "v2.5"


def test_a_swapped_snapshot_is_refused(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    p = _project(tmp_path, "sqlite", request, healthy=False)
    r = p.cli("start", "--to", "v2.6", failpoint="unconfig.before")
    assert r.returncode == 137
    [copy] = (p.dir / ".statekeeper" / "runs").rglob("00-app.env")
    copy.write_text(copy.read_text().replace(SECRET, "sk-attacker"))
    r = p.cli("resume")
    assert r.returncode == 3, r.stdout + r.stderr
    run = command.status(p.settings())
    assert run.state == "failed"
    assert "not the file the ledger recorded" in (run.failure or "")
    assert "sk-attacker" not in (p.dir / "config/app.env").read_text()


@pytest.mark.parametrize("ledger_backend", ["sqlite", "postgresql"])
def test_planted_secrets_reach_no_file_statekeeper_writes(
        tmp_path: Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch,
        ledger_backend: str) -> None:
    """The broker API key sits in the configuration file that is snapshotted and restored; a
    deploy command and a health check print a token. Neither reaches the ledger, an export, a
    checkpoint, the CLI's output or any file statekeeper writes outside the run's artifacts
    (where the copies and the output are, private) and the backups."""
    token = "tok-7c1d9e2f4a6b8c0d"
    cmds = ('[[deploy.command]]\nname = "announce"\n'
            'run = "sh -c \'echo deploying with ${BROKER_TOKEN}; echo $BROKER_TOKEN >&2\'"\n'
            'undo = "sh -c \'echo undo ${BROKER_TOKEN}\'"\n')
    smoke = '  { name = "smoke", command = "sh -c \'echo smoke $BROKER_TOKEN\'" },\n'
    monkeypatch.setenv("BROKER_TOKEN", token)
    ledger_db = None
    if ledger_backend == "sqlite":
        ledger_url = "sqlite:///.statekeeper/ledger.db"
    else:
        cluster = request.getfixturevalue("pg_cluster")
        ledger_db = cluster.createdb("ledger")
        ledger_url = cluster.sqlalchemy_url(ledger_db)
    p = _project(tmp_path, "sqlite", request, commands=cmds, extra_checks=smoke,
                 ledger_url=ledger_url)
    env = {"BROKER_TOKEN": token}
    outputs = []
    for args in (("plan", "--to", "v2.6"), ("start", "--to", "v2.6"), ("status", "--json"),
                 ("history", "--json")):
        r = p.cli(*args, env=env)
        assert r.returncode == 0, r.stdout + r.stderr
        outputs.append(r.stdout + r.stderr)
    run_id = command.status(p.settings()).run_id
    for args in (("rollback", run_id), ("ledger", "export", "--out", "export.jsonl"),
                 ("ledger", "verify"), ("ledger", "checkpoint", "--out", "head.checkpoint")):
        r = p.cli(*args, env=env)
        assert r.returncode == 0, r.stdout + r.stderr
        outputs.append(r.stdout + r.stderr)
    assert ask(p.port)[1]["version"] == "v2.5"
    secrets = (SECRET, token)
    state = p.dir / ".statekeeper"
    artifacts = state / "runs"
    written = [f for f in state.rglob("*") if f.is_file() and artifacts not in f.parents]
    written += [p.dir / "export.jsonl", p.dir / "head.checkpoint"]
    if ledger_db is None:
        assert any(f.name == "ledger.db" for f in written)
    else:  # every row of the PostgreSQL ledger, as pg_dump writes them
        from tests.pgcluster import PG_BIN

        dump = tmp_path / "ledger.sql"
        subprocess.run([str(PG_BIN / "pg_dump"), "--data-only", "-h", "127.0.0.1", "-p",
                        str(cluster.port), "-U", cluster.user, "-f", str(dump), ledger_db],
                       check=True, capture_output=True)
        assert b"run.created" in dump.read_bytes()
        written.append(dump)
    for f in written:
        data = f.read_bytes()
        for s in secrets:
            assert s.encode() not in data, f"{s} found in {f}"
    for out in outputs:
        for s in secrets:
            assert s not in out
    # the planted secrets did go through: the snapshot, the commands' and the check's output
    found = {s: [f for f in artifacts.rglob("*") if f.is_file() and s.encode() in f.read_bytes()]
             for s in secrets}
    assert any(f.name == "00-app.env" for f in found[SECRET])
    assert {f.suffix for f in found[token]} >= {".out", ".err"}
    for f in artifacts.rglob("*"):
        assert f.stat().st_mode & 0o077 == 0, f


def test_a_timed_out_command_is_killed_with_its_children(tmp_path: Path) -> None:
    """SIGTERM, a grace period, then SIGKILL to the whole group: a child that ignores SIGTERM
    does not outlive its leader."""
    from statekeeper import procs

    script = "(trap '' TERM; sleep 30) & echo $! > child.pid; sleep 30"
    out = procs.run(["sh", "-c", script], cwd=tmp_path, timeout_ms=300, out_dir=tmp_path / "o",
                    name="slow")
    assert out.timed_out and out.exit_code is None
    child = int((tmp_path / "child.pid").read_text())
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            break
        if state == "Z":
            break
        time.sleep(0.05)
    else:
        raise AssertionError(f"child {child} still runs after the timeout")


def test_preflight_refuses_a_health_command_that_cannot_run(
        tmp_path: Path, request: pytest.FixtureRequest) -> None:
    smoke = '  { name = "smoke", command = "./bin/smoke-test" },\n'
    p = _project(tmp_path, "sqlite", request, extra_checks=smoke)
    r = p.cli("start", "--to", "v2.6")
    assert r.returncode == 1, r.stdout + r.stderr
    run = command.status(p.settings())
    assert [s.kind for s in run.steps] == ["preflight"]
    assert run.failure == (f"preflight failed: health check 'smoke' cannot run: "
                           f"{p.dir / 'bin' / 'smoke-test'} does not exist")


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_write_between_preflight_and_the_backup_is_named_and_never_blocks_the_rollback(
        tmp_path: Path, request: pytest.FixtureRequest, backend: str) -> None:
    """Writers were not stopped before preflight: a row lands after its fingerprint and before
    the backup (here from the stop command, a real process writing to the database). The
    rollback restores the backup, proves the database equals what the backup holds, and
    names the window's write instead of failing forever against preflight's fingerprint."""
    url = seeded_db(tmp_path, backend, "app", request)
    p = make_release_project(tmp_path / "proj", backend, url, SCENARIOS["revert"], request)
    writer = p.dir / "bin" / "late-writer"
    if backend == "sqlite":
        insert = (f"import sqlite3; c = sqlite3.connect({str(p.target().sqlite_path)!r}); "
                  "c.execute(\"INSERT INTO settings VALUES ('late', 'x')\"); c.commit()")
    else:
        insert = (f"import psycopg; c = psycopg.connect({url!r}, autocommit=True); "
                  "c.execute(\"INSERT INTO settings VALUES ('late', 'x')\")")
    writer.write_text(f"#!{sys.executable}\n{insert}\nimport os\n"
                      f"os.execv({str(p.dir / 'bin' / 'appctl')!r}, ['appctl', 'stop'])\n")
    writer.chmod(0o755)
    p.config.write_text(p.config.read_text().replace('stop = "bin/appctl stop"',
                                                     'stop = "bin/late-writer"'))
    r = p.cli("start", "--to", "v2.6")
    assert r.returncode == 1, r.stdout + r.stderr
    run = command.status(p.settings())
    assert run.state == "rolled_back", run.failure
    reason = run.transitions[-1]["reason"] or ""
    assert ("database equals what the backup holds; written between preflight and the backup, "
            "and kept: settings: 2 rows -> 3 rows") in reason, reason
    assert [s.kind for s in run.phase_steps()].count("restore") == 1
    conn = p.target().connect(autocommit=True)
    try:
        rows = conn.execute("SELECT value FROM settings WHERE key = 'late'").fetchall()
    finally:
        conn.close()
    assert [tuple(x) for x in rows] == [("x",)]  # what the backup holds: the write is kept
    assert ask(p.port)[1]["version"] == "v2.5"


def test_a_run_without_release_or_command_checks_never_creates_the_fingerprint_secret(
        tmp_path: Path, request: pytest.FixtureRequest) -> None:
    from tests.upgrade_support import make_project

    url = seeded_db(tmp_path, "sqlite", "app", request)
    p = make_project(tmp_path / "proj", "sqlite", url, SCENARIOS["forward"])
    assert p.cli("start", "--to", "v2.6").returncode == 0
    assert not (p.dir / ".statekeeper" / "key.hmac").exists()
