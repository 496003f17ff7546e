"""[health] checks by HTTP and by command, a check's own timeout and the section's deadline:
validated with one-line errors, run against a real HTTP server (stdlib, in a thread) and real
programs. No secret (a URL's password or token, a command's arguments or output) reaches a
message or a result; a command's output is in its 0600 files."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from statekeeper.config import load_config
from statekeeper.errors import ConfigError, TargetError
from statekeeper.health import check_all, run_checks, validate_health
from tests.health_support import HealthServer, closed_port, health_server, script

SRC = "/app/statekeeper.toml"
SECRET = "hunter2-planted-secret"


@pytest.fixture
def server() -> Iterator[HealthServer]:
    with health_server() as s:
        yield s


def checks(*items: dict[str, Any], **section: Any) -> list[dict[str, Any]]:
    return validate_health({"checks": list(items), **section}, SRC)


# -- validation ------------------------------------------------------------------------------

URL = "http://127.0.0.1:8080/health"


@pytest.mark.parametrize(("check", "message"), [
    ({"name": "x", "sql": "SELECT 1", "http": URL},
     "checks[0] needs exactly one of sql, http, command"),
    ({"http": URL, "command": "true"}, "checks[0] needs exactly one of sql, http, command"),
    ({"name": "x", "timeout": "1s"}, "checks[0] needs exactly one of sql, http, command"),
    ("SELECT 1", "checks[0] must be a table such as { name = ..., sql = ... }"),
    ({"http": URL, "status": "200"},
     "checks[0] status must be an HTTP status code from 100 to 599, not '200'"),
    ({"http": URL, "status": 99},
     "checks[0] status must be an HTTP status code from 100 to 599, not 99"),
    ({"http": URL, "status": 600},
     "checks[0] status must be an HTTP status code from 100 to 599, not 600"),
    ({"http": URL, "status": True},
     "checks[0] status must be an HTTP status code from 100 to 599, not true"),
    ({"http": URL, "retry": 1}, "checks[0] has unknown key retry"),
    ({"http": URL, "expect": "ok"}, "checks[0] expect is for sql checks only"),
    ({"command": "true", "status": 200}, "checks[0] status is for http checks only"),
    ({"sql": "SELECT 1", "status": 200}, "checks[0] status is for http checks only"),
    ({"http": "ftp://files.example/health"},
     "checks[0] http must be an http:// or https:// URL (not ftp://)"),
    ({"http": "127.0.0.1:8080/health"}, "checks[0] http must be an http:// or https:// URL"),
    ({"http": "http:///health"}, "checks[0] http has no host"),
    ({"http": "http://127.0.0.1:99999/health"}, "checks[0] http has an invalid port"),
    ({"http": "http://127.0.0.1/he alth"},
     "checks[0] http must not contain spaces or control characters"),
    ({"http": 8080}, 'checks[0] http must be a string: http = "..."'),
    ({"command": ["./bin/smoke"]}, 'checks[0] command must be a string: command = "..."'),
    ({"command": "  "}, "checks[0] command: the command is empty"),
    ({"command": "sh -c 'echo"},
     "checks[0] command: cannot split the command: No closing quotation"),
    ({"http": URL, "timeout": "2h"}, "checks[0] timeout must be between 1ms and 1h, not '2h'"),
    ({"command": "true", "timeout": 0}, "checks[0] timeout must be between 1ms and 1h, not 0"),
])
def test_malformed_checks_are_one_line_naming_file_and_key(check: Any, message: str) -> None:
    with pytest.raises(ConfigError) as e:
        checks(check)
    assert str(e.value) == f"{SRC}: [health] {message}"


def test_the_check_at_fault_is_named_by_its_position() -> None:
    with pytest.raises(ConfigError) as e:
        checks({"sql": "SELECT 1"}, {"name": "api"})
    assert str(e.value) == f"{SRC}: [health] checks[1] needs exactly one of sql, http, command"


def test_a_bad_url_is_refused_without_showing_its_password() -> None:
    for url in ("ftp://u:pw-in-url@files.example/h", "http://u:pw-in-url@h:99999/x?token=tok"):
        with pytest.raises(ConfigError) as e:
            checks({"http": url})
        assert "pw-in-url" not in str(e.value) and "tok" not in str(e.value)


@pytest.mark.parametrize(("value", "message"), [
    (0, "[health] deadline must be between 1ms and 1h, not 0"),
    ("2h", "[health] deadline must be between 1ms and 1h, not '2h'"),
    ("soon", '[health] deadline must be a duration such as "500ms", "2s" or "1m" '
             "(or a number of seconds), not 'soon'"),
])
def test_the_deadline_is_range_checked(value: Any, message: str) -> None:
    with pytest.raises(ConfigError) as e:
        checks({"sql": "SELECT 1"}, deadline=value)
    assert str(e.value) == f"{SRC}: {message}"


def test_what_each_kind_runs_with() -> None:
    sql, api, smoke = checks(
        {"name": "db", "sql": "SELECT 1"},
        {"name": "api", "http": URL, "timeout": "2s"},
        {"name": "smoke", "command": "./bin/smoke-test --fast 'two words'"},
        timeout="500ms", deadline="1m",
    )
    assert (sql["kind"], sql["timeout_ms"], sql["deadline_ms"]) == ("sql", 500, 60_000)
    assert (api["kind"], api["status"], api["timeout_ms"]) == ("http", 200, 2000)
    assert smoke["argv"] == ["./bin/smoke-test", "--fast", "two words"]
    assert smoke["timeout_ms"] == 500
    assert checks({"http": URL})[0]["deadline_ms"] is None  # default: the retries bound it


def test_the_config_file_declares_deadline_and_refuses_a_typo(tmp_path: Path) -> None:
    cfg = tmp_path / "statekeeper.toml"
    cfg.write_text(f'[health]\ndeadline = "30s"\nchecks = [{{ http = "{URL}" }}]\n')
    assert load_config(str(cfg)).raw["health"]["deadline"] == "30s"
    cfg.write_text('[health]\ndeadlin = "30s"\n')
    with pytest.raises(ConfigError) as e:
        load_config(str(cfg))
    assert str(e.value) == (f"{cfg}: unknown key [health] deadlin "
                            "(known: checks, retries, interval, timeout, deadline)")
    cfg.write_text('[health]\nchecks = [{ name = "db", sql = "SELECT 1" }, { name = "api" }]\n')
    with pytest.raises(ConfigError) as e:
        load_config(str(cfg))
    assert str(e.value) == f"{cfg}: [health] checks[1] needs exactly one of sql, http, command"


# -- http ------------------------------------------------------------------------------------

def test_http_answering_503_then_200_passes_on_the_third_attempt(server: HealthServer) -> None:
    server.statuses["/health"] = [503, 503, 200]
    result = run_checks(None, checks({"name": "api", "http": server.url("/health")},
                                     retries=3, interval="50ms"))
    assert result == {"checks": [{"name": "api", "ok": True, "attempts": 3, "kind": "http",
                                  "status": 200}]}
    assert server.hits("/health") == 3  # it stopped at the first success


def test_http_wrong_status_fails_with_the_exact_line(server: HealthServer) -> None:
    server.statuses["/health"] = [503]
    with pytest.raises(TargetError) as e:
        run_checks(None, checks({"name": "api", "http": server.url("/health")},
                                retries=2, interval=0))
    assert str(e.value) == (f"health check 'api' failed after 3 attempts: "
                            f"GET {server.url('/health')} answered 503, expected 200")
    assert server.hits("/health") == 3


def test_http_expected_status_other_than_200(server: HealthServer) -> None:
    server.statuses["/ready"] = [204]
    ok = checks({"name": "ready", "http": server.url("/ready"), "status": 204}, retries=0)
    assert run_checks(None, ok)["checks"][0]["status"] == 204
    with pytest.raises(TargetError) as e:
        run_checks(None, checks({"name": "ready", "http": server.url("/ready")}, retries=0))
    assert str(e.value).endswith("answered 204, expected 200")


def test_a_redirect_is_an_answer_not_followed(server: HealthServer) -> None:
    moved = checks({"name": "r", "http": server.url("/redirect"), "status": 302}, retries=0)
    assert run_checks(None, moved)["checks"][0]["status"] == 302
    with pytest.raises(TargetError) as e:
        run_checks(None, checks({"name": "r", "http": server.url("/redirect")}, retries=0))
    assert str(e.value).endswith(f"GET {server.url('/redirect')} answered 302, expected 200")
    assert server.hits("/ok") == 0


def test_http_connection_refused() -> None:
    url = f"http://127.0.0.1:{closed_port()}/health"
    with pytest.raises(TargetError) as e:
        run_checks(None, checks({"name": "api", "http": url}, retries=1, interval=0))
    assert str(e.value) == (f"health check 'api' failed after 2 attempts: "
                            f"GET {url} failed: connection refused")


def test_http_timeout_against_a_server_that_sleeps(server: HealthServer) -> None:
    with pytest.raises(TargetError) as e:
        run_checks(None, checks({"name": "api", "http": server.url("/slow"),
                                 "timeout": "100ms"}, retries=0))
    assert str(e.value) == (f"health check 'api' failed after 1 attempt: "
                            f"GET {server.url('/slow')} timed out after 100ms")


def test_a_checks_own_timeout_overrides_the_sections(server: HealthServer) -> None:
    server.slow_s = 0.3
    slow = {"name": "api", "http": server.url("/slow")}
    with pytest.raises(TargetError, match="timed out after 100ms"):
        run_checks(None, checks(slow, timeout="100ms", retries=0))
    passed = run_checks(None, checks({**slow, "timeout": "2s"}, timeout="100ms", retries=0))
    assert passed["checks"][0]["ok"]


def test_a_password_and_a_token_in_the_url_reach_the_server_not_a_message(
        server: HealthServer) -> None:
    server.statuses["/health"] = [503]
    url = f"http://monitor:{SECRET}@127.0.0.1:{server.port}/health?token=tok-{SECRET}"
    with pytest.raises(TargetError) as e:
        run_checks(None, checks({"name": "api", "http": url}, retries=0))
    assert str(e.value) == (f"health check 'api' failed after 1 attempt: GET "
                            f"http://monitor:***@127.0.0.1:{server.port}/health answered 503, "
                            "expected 200")
    path, auth = server.requests[-1]
    assert path == f"/health?token=tok-{SECRET}"
    assert auth == "Basic " + base64.b64encode(f"monitor:{SECRET}".encode()).decode()
    server.statuses["/health"] = [200]
    results = check_all(None, checks({"name": "api", "http": url}, retries=0))
    assert SECRET not in json.dumps([r.to_payload() for r in results])


# -- the deadline ----------------------------------------------------------------------------

def test_the_deadline_cuts_retries_short(server: HealthServer) -> None:
    server.statuses["/health"] = [503]
    api = {"name": "api", "http": server.url("/health")}
    # the next attempt would start after the deadline: no next attempt
    with pytest.raises(TargetError) as e:
        run_checks(None, checks(api, retries=5, interval="1s", deadline="150ms"))
    assert str(e.value) == (f"health check 'api' failed after 1 attempt: GET "
                            f"{server.url('/health')} answered 503, expected 200 "
                            "(the 150ms deadline was reached)")
    assert server.hits("/health") == 1
    # 20 retries 250ms apart; the fifth attempt would start at 1s or later
    [r] = check_all(None, checks(api, retries=20, interval="250ms", deadline="1s"))
    assert (r.ok, r.attempts) == (False, 4)
    assert r.reason is not None and r.reason.endswith("(the 1s deadline was reached)")


def test_the_deadline_cuts_a_slow_attempt_and_leaves_the_next_check_untried(
        server: HealthServer) -> None:
    both = checks({"name": "slow", "http": server.url("/slow")},
                  {"name": "db", "command": "true"}, deadline="200ms", timeout="10s")
    slow, db = check_all(None, both)
    assert (slow.ok, slow.attempts, slow.reason) == (
        False, 1, f"GET {server.url('/slow')} timed out at the 200ms deadline")
    assert (db.ok, db.attempts, db.reason) == (False, 0, "the 200ms deadline was reached")
    assert db.error() == "health check 'db' was not tried: the 200ms deadline was reached"
    with pytest.raises(TargetError) as e:  # the upgrade's step stops at the first
        run_checks(None, both)
    assert str(e.value) == (f"health check 'slow' failed after 1 attempt: "
                            f"GET {server.url('/slow')} timed out at the 200ms deadline")


# -- command ---------------------------------------------------------------------------------

def test_a_command_that_exits_0_passes_run_in_the_config_directory(tmp_path: Path) -> None:
    base, out = tmp_path / "app", tmp_path / "artifacts"
    # relative to the configuration's directory, not the working directory
    script(base / "bin" / "smoke-test", 'test -f marker && echo "all good"\n')
    (base / "marker").touch()
    result = run_checks(None, checks({"name": "smoke", "command": "./bin/smoke-test"}),
                        out_dir=out, base_dir=base, secret=b"k" * 32)
    [c] = result["checks"]
    assert (c["name"], c["ok"], c["attempts"], c["kind"]) == ("smoke", True, 1, "command")
    assert c["exit_code"] == 0 and c["stdout_file"] == "health-1-smoke.out"
    # keyed: a plain sha256 of a short output could be found by hashing guesses
    assert c["stdout_hmac"] == hmac.new(b"k" * 32, b"all good\n", hashlib.sha256).hexdigest()
    assert "stdout_sha256" not in c
    assert (out / "health-1-smoke.out").read_text() == "all good\n"


def test_a_failing_command_names_its_status_and_files_never_its_output(tmp_path: Path) -> None:
    base, out = tmp_path / "app", tmp_path / "artifacts"
    script(base / "bin" / "smoke", f'echo "password={SECRET}"\necho "$@" >&2\nexit 3\n')
    smoke = checks({"name": "smoke", "command": f"./bin/smoke --token {SECRET}-arg"},
                   retries=1, interval="50ms")
    with pytest.raises(TargetError) as e:
        run_checks(None, smoke, out_dir=out, base_dir=base)
    assert str(e.value) == (
        "health check 'smoke' failed after 2 attempts: command ./bin/smoke exited with "
        f"status 3; its output is in {out}/health-1-smoke.err and {out}/health-1-smoke.out")
    [r] = check_all(None, smoke, out_dir=out, base_dir=base)
    payload = json.dumps(r.to_payload())
    assert SECRET not in payload and SECRET not in r.error()
    assert r.detail["exit_code"] == 3
    assert (out / "health-1-smoke.out").read_text() == f"password={SECRET}\n"
    assert (out / "health-1-smoke.err").read_text() == f"--token {SECRET}-arg\n"
    for f in ("health-1-smoke.out", "health-1-smoke.err"):
        assert stat.S_IMODE((out / f).stat().st_mode) == 0o600


def test_without_an_output_directory_the_output_is_not_kept(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    temp = tmp_path / "tmp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))  # where mkdtemp makes its directory
    script(tmp_path / "fail", f"echo {SECRET}\nexit 3\n")
    with pytest.raises(TargetError) as e:
        run_checks(None, checks({"name": "smoke", "command": str(tmp_path / "fail")},
                                retries=0))
    assert str(e.value) == (f"health check 'smoke' failed after 1 attempt: command "
                            f"{tmp_path / 'fail'} exited with status 3 (its output was not kept)")
    assert list(temp.iterdir()) == []


def test_a_command_over_its_timeout_is_killed(tmp_path: Path) -> None:
    with pytest.raises(TargetError) as e:
        run_checks(None, checks({"name": "hang", "command": "sleep 30", "timeout": "200ms"},
                                retries=0), out_dir=tmp_path, base_dir=tmp_path)
    assert str(e.value) == (
        "health check 'hang' failed after 1 attempt: command sleep timed out after 200ms "
        f"(killed); its output is in {tmp_path}/health-1-hang.err and "
        f"{tmp_path}/health-1-hang.out")


def test_a_command_that_does_not_exist_fails_at_once(tmp_path: Path) -> None:
    for command, why in ((f"./bin/nope {SECRET}", f"{tmp_path}/bin/nope does not exist"),
                         ("no-such-program-x9", "no-such-program-x9 is not found in PATH")):
        with pytest.raises(TargetError) as e:
            run_checks(None, checks({"name": "smoke", "command": command}, retries=3,
                                    interval="1s"), out_dir=tmp_path, base_dir=tmp_path)
        # not retried: trying again cannot make it exist
        assert str(e.value) == f"health check 'smoke' failed after 1 attempt: {why}"
    script(tmp_path / "bin" / "noexec", "exit 0\n").chmod(0o644)
    with pytest.raises(TargetError, match=re.escape(f"{tmp_path}/bin/noexec is not an "
                                                    "executable file")):
        run_checks(None, checks({"command": "bin/noexec"}), out_dir=tmp_path, base_dir=tmp_path)


def test_checks_of_every_kind_in_one_step(server: HealthServer, tmp_path: Path) -> None:
    db = tmp_path / "app.db"
    import sqlite3

    sqlite3.connect(db).executescript("CREATE TABLE users (id INTEGER); "
                                      "INSERT INTO users VALUES (1);")
    from statekeeper.targets import Target

    every = checks({"name": "db", "sql": "SELECT count(*) > 0 FROM users", "expect": "1"},
                   {"name": "api", "http": server.url("/health")},
                   {"name": "smoke", "command": "true"}, retries=0)
    result = run_checks(Target.from_url(f"sqlite:///{db}"), every, out_dir=tmp_path)
    assert [(c["name"], c["kind"], c["ok"]) for c in result["checks"]] == [
        ("db", "sql", True), ("api", "http", True), ("smoke", "command", True)]
