"""``--json`` results a script (an Ansible task) can use, against real targets: one document on
stdout, valid against docs/result.schema.json, on success and on every failure, with the
exit code the documented table gives; the human lines on stderr."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from click.testing import CliRunner, Result

from cli.main import cli
from tests.upgrade_support import GOOD, SCENARIOS, Project, make_project, seeded_db

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = json.loads((ROOT / "docs" / "result.schema.json").read_text())
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)

# A NOTICE before the failing statement (the "already exists, skipping" that is often the real
# cause), then a failure on line 3.
FAILING = (
    "CREATE TABLE IF NOT EXISTS users (id INTEGER PRIMARY KEY);\n"
    "ALTER TABLE users ADD COLUMN status TEXT;\n"
    "UPDATE users SET status = 'x' WHERE no_such_column = 1;\n"
    "-- statekeeper:down\nALTER TABLE users DROP COLUMN status;\n"
)


def invoke(proj: Project | None, *args: str) -> Result:
    pre = ["--config", str(proj.config)] if proj is not None else []
    r = CliRunner(env={"STATEKEEPER_CONFIG": None, "STATEKEEPER_FAILPOINT": None}).invoke(
        cli, [*pre, *args], prog_name="statekeeper")
    if r.exception is not None and not isinstance(r.exception, SystemExit):
        raise AssertionError(f"statekeeper {' '.join(args)} raised") from r.exception
    return r


def result(r: Result, code: int) -> Any:
    """The one JSON document on stdout, checked against the schema and the exit code."""
    assert r.exit_code == code, (r.exit_code, r.stdout, r.stderr)
    doc = json.loads(r.stdout)
    VALIDATOR.validate(doc)
    assert doc["exit_code"] == code and doc["ok"] is (code == 0)
    return doc


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def test_a_failed_migration_is_one_document_with_its_place_and_notices(
        tmp_path: Path, backend: str, request: pytest.FixtureRequest) -> None:
    url = seeded_db(tmp_path, backend, "app", request)
    proj = make_project(tmp_path / "proj", backend, url,
                        {**GOOD, "003_user_status.sql": FAILING}, backup=False)
    r = invoke(proj, "start", "--to", "v2.6", "--json")
    doc = result(r, 1)
    assert doc["command"] == "start"
    run = doc["run"]
    assert doc["run_id"] == run["run_id"] and run["state"] == "rolled_back"
    assert (run["from"], run["to"]) == ("v2.5", "v2.6")
    assert [s["name"] for s in run["steps"] if s["status"] == "failed"] == [
        "migrate:003_user_status"]
    assert [s["name"] for s in run["steps"]][-3:] == [
        "revert:002_orders", "revert:001_bump_qty", "compare"]
    err = doc["error"]
    assert err["class"] == "MigrationError" and err["step"] == "migrate:003_user_status"
    m = err["migration"]
    path = str(proj.dir / "migrations" / "003_user_status.sql")
    assert (m["migration_id"], m["path"], m["line"]) == ("003_user_status", path, 3)
    assert m["source_line"] == "UPDATE users SET status = 'x' WHERE no_such_column = 1;"
    if backend == "postgresql":
        assert m["server_message"] == 'column "no_such_column" does not exist'
        assert m["column"] == 37
        assert m["notices"] == ['NOTICE:  relation "users" already exists, skipping (line 1)']
    else:
        assert m["server_message"] == "no such column: no_such_column"
        assert m["notices"] == []
    assert f"at {path}:3:{m['column']}: {m['server_message']}" in err["message"]
    # the progress went to stderr, and stdout holds nothing but the document
    assert r.stdout.lstrip().startswith("{") and r.stdout.rstrip().endswith("}")
    # the cause is shown once, with its place, then the rollback
    lines = r.stderr.splitlines()
    assert r.stderr.count(m["server_message"]) == 1, r.stderr
    fail = next(i for i, x in enumerate(lines) if x.startswith("    FAIL  "))
    cause = err["message"].removeprefix("migrate:003_user_status failed: ")
    assert lines[fail].startswith(f"    FAIL  migrate:003_user_status: {cause}  [")
    caret = " " * (m["column"] - 1) + "^"
    shown = ["          3 | UPDATE users SET status = 'x' WHERE no_such_column = 1;",
             f"            | {caret}"]
    if backend == "postgresql":
        shown.append('          NOTICE:  relation "users" already exists, skipping (line 1)')
    assert lines[fail + 1:fail + 1 + len(shown)] == shown
    assert lines[fail + 1 + len(shown)] == "  [migrating -> rolling_back]"
    assert lines[fail + 2 + len(shown)].startswith("    ok    revert:002_orders  [")
    assert lines[-1] == f"run {run['run_id']}: rolled_back (migrate:003_user_status failed)"


def test_completed_and_rolled_back_runs(tmp_path: Path) -> None:
    url = seeded_db(tmp_path, "sqlite", "app", None)
    proj = make_project(tmp_path / "proj", "sqlite", url, SCENARIOS["forward"])
    done = result(invoke(proj, "start", "--to", "v2.6", "--json"), 0)
    assert done["error"] is None and done["run"]["state"] == "completed"
    assert done["run"]["migrations_applied"] == ["001_bump_qty", "002_orders",
                                                 "003_user_status"]
    assert all(s["status"] == "succeeded" and isinstance(s["duration_ms"], int)
               for s in done["run"]["steps"])
    run_id = done["run_id"]
    st = result(invoke(proj, "status", "--json"), 0)
    assert st["steps"] == done["run"]["steps"] and st["server"] is None
    back = result(invoke(proj, "rollback", run_id, "--json"), 0)
    assert back["command"] == "rollback" and back["run"]["state"] == "rolled_back"
    # resume of a settled run: nothing to do, the run as it is
    again = result(invoke(proj, "resume", run_id, "--json", "--rollback"), 0)
    assert again["run"]["steps"] == back["run"]["steps"]


def test_failures_before_a_run_exists_are_documents_too(tmp_path: Path) -> None:
    url = seeded_db(tmp_path, "sqlite", "app", None)
    proj = make_project(tmp_path / "proj", "sqlite", url, SCENARIOS["forward"])
    # the ledger cannot be connected to: nothing was done, exit 6
    r = invoke(proj, "--ledger", "postgresql://u@127.0.0.1:1/ledger", "start", "--to", "v2.6",
               "--json")
    doc = result(r, 6)
    assert doc["run_id"] is None and doc["run"] is None
    assert doc["error"]["class"] == "LedgerUnreachable"
    assert r.stderr.startswith("error: ledger unreachable: ")
    # a bad flag: exit 2
    doc = result(invoke(proj, "start", "--to", "v2.6", "--target", "bogus://x", "--json"), 2)
    assert doc["error"]["class"] == "ConfigError"
    assert doc["error"]["message"].startswith("--target URL 'bogus://x': unsupported scheme")
    # an unknown run
    doc = result(invoke(proj, "rollback", "nope", "--json"), 2)
    assert doc["error"]["message"] == "no run 'nope' in the ledger"
    assert doc["run_id"] == "nope" and doc["run"] is None


def test_the_target_lost_mid_run_needs_attention_not_unreachable(
        tmp_path: Path, pg_cluster: Any) -> None:
    """A target that stops accepting connections in the middle of a run: something was done,
    so not exit 6 but 3, with the run in the document; ``resume`` finishes it."""
    db = pg_cluster.createdb("lost")
    url = pg_cluster.url(db)
    from tests.upgrade_support import seed

    seed("postgresql", url)
    # committed with the second migration; the third then ends the run's one session (the
    # target lock's), so its rollback needs a connection the server refuses
    cut = "UPDATE pg_database SET datallowconn = false WHERE datname = current_database();\n"
    kill = "SELECT pg_terminate_backend(pg_backend_pid());\n"
    proj = make_project(tmp_path / "proj", "postgresql", url,
                        {**GOOD, "002_orders.sql": cut + GOOD["002_orders.sql"],
                         "003_user_status.sql": kill + GOOD["003_user_status.sql"]},
                        backup=False)
    r = invoke(proj, "start", "--to", "v2.6", "--json")
    doc = result(r, 3)
    assert doc["error"]["class"] == "TargetRefused"
    assert f'database "{db}" is not currently accepting connections' in doc["error"]["message"]
    assert doc["run"]["state"] == "rolling_back"
    assert [s["name"] for s in doc["run"]["steps"]][-1] == "migrate:003_user_status"
    pg_cluster.psql(f"ALTER DATABASE {db} ALLOW_CONNECTIONS true")
    done = result(invoke(proj, "resume", "--json"), 1)
    assert done["run_id"] == doc["run_id"] and done["run"]["state"] == "rolled_back"


def test_status_and_history_agree_when_there_are_no_runs(tmp_path: Path) -> None:
    url = seeded_db(tmp_path, "sqlite", "app", None)
    proj = make_project(tmp_path / "proj", "sqlite", url, SCENARIOS["forward"])
    for cmd in ("status", "history"):
        r = invoke(proj, cmd)
        assert (r.exit_code, r.stdout, r.stderr) == (0, "no runs yet\n", "")
    assert result(invoke(proj, "status", "--json"), 0)["run_id"] is None
    assert json.loads(invoke(proj, "history", "--json").stdout) == []
    # a run that is not there is still an error
    doc = result(invoke(proj, "status", "nope", "--json"), 2)
    assert doc["error"]["message"] == "no run 'nope' in the ledger"


def test_operations_print_the_same_shape(tmp_path: Path) -> None:
    """migrate up (failing half-way), validate, down; backup create and restore: each one
    document, the migration's place in a failure, what was done before it."""
    url = seeded_db(tmp_path, "sqlite", "app", None)
    proj = make_project(tmp_path / "proj", "sqlite", url, SCENARIOS["revert"])
    r = invoke(proj, "migrate", "up", "--json")
    up = result(r, 1)
    assert up["command"] == "migrate up" and up["op_id"]
    assert [a["id"] for a in up["applied"]] == ["001_bump_qty", "002_orders"]
    assert up["error"]["class"] == "MigrationError"
    assert up["error"]["migration"]["line"] == 2
    assert r.stderr.splitlines()[:2] == [f"applied {a['id']} ({a['execution_ms']} ms)"
                                         for a in up["applied"]]
    ok = result(invoke(proj, "migrate", "validate", "--json"), 0)
    assert (ok["applied"], ok["pending"]) == (["001_bump_qty", "002_orders"],
                                              ["003_user_status"])
    down = result(invoke(proj, "migrate", "down", "--to-tag", "v2.5", "--yes", "--json"), 0)
    assert down["reverted"] == ["002_orders", "001_bump_qty"]
    made = result(invoke(proj, "backup", "create", "--id", "b1", "--json"), 0)
    assert made["id"] == "b1" and made["op_id"]
    back = result(invoke(proj, "backup", "restore", "b1", "--yes", "--json"), 0)
    assert back["id"] == "b1"
    gone = result(invoke(proj, "backup", "restore", "nope", "--yes", "--json"), 2)
    assert gone["error"]["class"] == "BackupNotFound"


@pytest.mark.parametrize(("args", "command", "needle"), [
    (["backup", "create", "--json", "--bogus"], "backup create", "No such option '--bogus'"),
    (["backup", "restore", "--json"], "backup restore", "Missing argument 'ID'"),
    (["start", "--json"], "start", "Missing option '--to'"),
    (["report", "--json", "--format", "xml"], "report", "'xml' is not one of"),
    (["migrate", "up", "--json", "v1", "v2"], "migrate up", "unexpected extra argument"),
], ids=["unknown option", "missing argument", "missing option", "bad choice",
        "extra argument"])
def test_click_usage_errors_under_json_are_the_same_document(
        args: list[str], command: str, needle: str) -> None:
    """click rejects the command line before the command's --json is read: still one
    document on stdout, exit 2, and one error line on stderr (no usage text)."""
    r = invoke(None, *args)
    doc = result(r, 2)
    assert doc["command"] == command and doc["error"]["class"] == "UsageError"
    assert needle in doc["error"]["message"]
    assert r.stderr.splitlines() == [f"error: {doc['error']['message']}"]
    if command == "start":
        assert doc["run_id"] is None and doc["run"] is None
    # without --json, click's own usage display is unchanged
    plain = invoke(None, *[a for a in args if a != "--json"])
    assert plain.exit_code == 2 and plain.stdout == "" and "Usage: " in plain.stderr


def test_resume_without_a_run_id_names_the_run_it_picked(tmp_path: Path) -> None:
    """resume (no id) picks the unfinished run; refused after that (its holder is alive),
    the document names that run."""
    from tests.test_interrupts import spawn, wait_stopped

    url = seeded_db(tmp_path, "sqlite", "app", None)
    proj = make_project(tmp_path / "proj", "sqlite", url, SCENARIOS["forward"])
    p = spawn(proj, "migrate.done:1@stop", "start", "--to", "v2.6")
    try:
        wait_stopped(p)
        r = invoke(proj, "resume", "--json")
        doc = result(r, 5)
    finally:
        p.kill()
        p.communicate(timeout=60)
    assert doc["error"]["class"] == "LockHeld"
    assert doc["run_id"] and doc["run_id"] in doc["error"]["message"]
    assert doc["run"]["run_id"] == doc["run_id"] and doc["run"]["state"] == "migrating"
