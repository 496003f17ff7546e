"""``statekeeper health``: the configured checks run on demand against a real SQLite target, a
real HTTP server and real programs; one line per check, exit 0 when all pass, 1 when one
fails, 2 for a configuration error; no ledger and no lock touched."""

from __future__ import annotations

import json
import sqlite3
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from cli.main import cli
from statekeeper import command
from statekeeper.command import Settings
from tests.health_support import HealthServer, health_server, script

SECRET = "hunter2-planted-secret"


@pytest.fixture
def server() -> Iterator[HealthServer]:
    with health_server() as s:
        yield s


def project(tmp_path: Path, health: str, *, target: bool = True) -> Path:
    db = tmp_path / "app.db"
    if not db.exists():
        sqlite3.connect(db).executescript("CREATE TABLE users (id INTEGER); "
                                          "INSERT INTO users VALUES (1), (2);")
    script(tmp_path / "bin" / "smoke", f'echo "token={SECRET}"\nexit "${{1:-0}}"\n')
    cfg = tmp_path / "statekeeper.toml"
    head = '[target]\nurl = "sqlite:///app.db"\n\n' if target else ""
    cfg.write_text(head + "[health]\n" + health)
    return cfg


def run(cfg: Path, *args: str) -> Result:
    runner = CliRunner(env={"STATEKEEPER_CONFIG": None})
    return runner.invoke(cli, ["--config", str(cfg), "health", *args])


def three(server: HealthServer, smoke_exit: int = 0) -> str:
    return (
        "retries = 2\ninterval = \"50ms\"\nchecks = [\n"
        '  { name = "db", sql = "SELECT count(*) FROM users", expect = "2" },\n'
        f'  {{ name = "api", http = "{server.url("/health")}", timeout = "2s" }},\n'
        f'  {{ name = "smoke", command = "./bin/smoke {smoke_exit}" }},\n]\n'
    )


def test_all_pass_exit_0_one_line_each(server: HealthServer, tmp_path: Path) -> None:
    server.statuses["/health"] = [503, 200]
    cfg = project(tmp_path, three(server))
    r = run(cfg)
    assert r.exit_code == 0, r.output
    assert r.stdout == (
        "ok    db (sql): passed after 1 attempt\n"
        "ok    api (http): passed after 2 attempts\n"
        "ok    smoke (command): passed after 1 attempt\n"
    )
    # no ledger, no lease: nothing of the kind was created
    assert sorted(p.name for p in (tmp_path / ".statekeeper").iterdir()) == ["health"]


def test_one_failing_exit_1_with_its_reason_every_check_reported(
        server: HealthServer, tmp_path: Path) -> None:
    server.statuses["/health"] = [503]
    cfg = project(tmp_path, three(server, smoke_exit=3))
    r = run(cfg)
    assert r.exit_code == 1, r.output
    out = tmp_path / ".statekeeper" / "health"
    assert r.stdout == (
        "ok    db (sql): passed after 1 attempt\n"
        f"FAIL  api (http): failed after 3 attempts: GET {server.url('/health')} answered 503, "
        "expected 200\n"
        "FAIL  smoke (command): failed after 3 attempts: command ./bin/smoke exited with "
        f"status 3; its output is in {out}/health-3-smoke.err and {out}/health-3-smoke.out\n"
    )
    assert r.stderr == ""
    assert SECRET not in r.output
    assert (out / "health-3-smoke.out").read_text() == f"token={SECRET}\n"
    assert stat.S_IMODE(out.stat().st_mode) == 0o700
    assert stat.S_IMODE((out / "health-3-smoke.out").stat().st_mode) == 0o600


def test_json(server: HealthServer, tmp_path: Path) -> None:
    server.statuses["/health"] = [503]
    cfg = project(tmp_path, three(server))
    r = run(cfg, "--json")
    assert r.exit_code == 1, r.output
    data = json.loads(r.stdout)
    assert data["ok"] is False
    assert [(c["name"], c["kind"], c["ok"], c["attempts"]) for c in data["checks"]] == [
        ("db", "sql", True, 1), ("api", "http", False, 3), ("smoke", "command", True, 1)]
    api, smoke = data["checks"][1], data["checks"][2]
    assert api["status"] == 503
    assert api["reason"] == f"GET {server.url('/health')} answered 503, expected 200"
    # on demand there is no fingerprint secret: sizes only, no digest of the output
    assert smoke["exit_code"] == 0 and "stdout_hmac" not in smoke and "stdout_sha256" not in smoke
    assert SECRET not in r.stdout


def test_no_checks_configured_says_so_and_exits_0(tmp_path: Path) -> None:
    cfg = project(tmp_path, "retries = 1\n")
    r = run(cfg)
    assert (r.exit_code, r.stdout) == (0, f"no health checks configured in {cfg}\n")
    r = run(cfg, "--json")
    assert r.exit_code == 0 and json.loads(r.stdout) == {
        "ok": True, "checks": [], "exit_code": 0, "command": "health", "error": None}


def test_a_configuration_error_is_one_line_exit_2(tmp_path: Path) -> None:
    cfg = project(tmp_path, 'checks = [{ name = "db", sql = "SELECT 1" }, '
                            '{ name = "api", sql = "SELECT 1", http = "http://h/" }]\n')
    r = run(cfg)
    assert r.exit_code == 2
    assert r.stderr == (f"error: {cfg}: [health] checks[1] needs exactly one of sql, http, "
                        "command\n")
    cfg = project(tmp_path, 'checks = [{ name = "db", sql = "SELECT 1" }]\n', target=False)
    r = run(cfg)
    assert (r.exit_code, r.stderr) == (2, f"error: {cfg}: [target] url is not set\n")


def test_http_and_command_checks_need_no_target(server: HealthServer, tmp_path: Path) -> None:
    cfg = project(tmp_path, f'checks = [{{ name = "api", http = "{server.url("/health")}" }}]\n',
                  target=False)
    r = run(cfg)
    assert (r.exit_code, r.stdout) == (0, "ok    api (http): passed after 1 attempt\n")


def test_the_verb_returns_the_report(server: HealthServer, tmp_path: Path) -> None:
    cfg = project(tmp_path, three(server))
    report = command.health(Settings.load(str(cfg)), out_dir=tmp_path / "artifacts")
    assert report.ok and [c.name for c in report.checks] == ["db", "api", "smoke"]
    assert (tmp_path / "artifacts" / "health-3-smoke.out").exists()
    assert not (tmp_path / ".statekeeper").exists()
