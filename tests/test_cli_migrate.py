"""``statekeeper migrate``: exit codes and exact messages; two real processes racing for the
migration lock on PostgreSQL (and on SQLite)."""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from cli.main import cli
from statekeeper import command
from statekeeper.migrations import CHANGELOG_TABLE

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """statekeeper.toml with a SQLite target and a migrations directory, both relative."""
    sqlite3.connect(tmp_path / "app.db").close()
    (tmp_path / "migrations").mkdir()
    (tmp_path / "statekeeper.toml").write_text(
        '[target]\nurl = "sqlite:///app.db"\n\n[migrations]\ndir = "migrations"\n'
    )
    command.init(str(tmp_path / "statekeeper.toml"), None, None, None, "migrations")
    return tmp_path


def run(project: Path, *args: str) -> Result:
    return CliRunner().invoke(cli, ["--config", str(project / "statekeeper.toml"), *args])


def write(project: Path, name: str, text: str) -> Path:
    p = project / "migrations" / name
    p.write_text(text)
    return p


def rows(project: Path, sql: str) -> list[tuple[object, ...]]:
    with sqlite3.connect(project / "app.db") as c:
        return c.execute(sql).fetchall()


GOOD = {
    "0001_users.sql": "CREATE TABLE users (id INTEGER PRIMARY KEY);\n"
                      "-- statekeeper:down\nDROP TABLE users;\n",
    "0002_email.sql": "ALTER TABLE users ADD COLUMN email TEXT;\n"
                      "-- statekeeper:down\nALTER TABLE users DROP COLUMN email;\n",
}


def test_up_status_tag_down(project: Path) -> None:
    r = run(project, "migrate", "tag", "v1.0")
    assert r.exit_code == 0
    assert r.stdout.splitlines()[0] == "tagged v1.0 with no migrations applied"
    assert r.stdout.splitlines()[1].startswith("recorded as operation ")
    for name, text in GOOD.items():
        write(project, name, text)
    r = run(project, "migrate", "up")
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    assert [ln.split(" (")[0] for ln in lines[:2]] == ["applied 0001_users", "applied 0002_email"]
    assert lines[2] == "2 migrations applied"
    r = run(project, "migrate", "up")
    assert (r.exit_code, r.stdout) == (0, "nothing to apply: the schema is up to date\n")
    r = run(project, "migrate", "status", "--json")
    data = json.loads(r.stdout)
    assert [(d["id"], d["state"], d["applied"], d["reversible"]) for d in data] == [
        ("0001_users", "applied", True, True), ("0002_email", "applied", True, True)]
    r = run(project, "migrate", "status")
    assert r.stdout.splitlines()[0].split() == ["MIGRATION", "STATE", "APPLIED", "AT", "DOWN",
                                               "TAG"]
    assert r.stdout.splitlines()[-1] == "2 applied, 0 pending; tags: v1.0"
    r = run(project, "migrate", "validate")
    assert (r.exit_code, r.stdout) == (
        0, "ok: 2 applied migrations match their files; 0 pending\n")
    r = run(project, "migrate", "down", "--yes", "--to-tag", "v1.0")
    assert r.exit_code == 0
    assert r.stdout.splitlines()[:3] == [
        "reverted 0002_email", "reverted 0001_users", "at tag v1.0: 2 reverted"]
    assert rows(project, f"SELECT count(*) FROM {CHANGELOG_TABLE}") == [(0,)]


def test_dry_runs_print_sql_and_change_nothing(project: Path) -> None:
    for name, text in GOOD.items():
        write(project, name, text)
    before = rows(project, "SELECT * FROM sqlite_master")
    for args in (("sql",), ("up", "--dry-run")):
        r = run(project, "migrate", *args)
        assert r.exit_code == 0
        assert r.stdout == (
            "-- statekeeper: 0001_users (up, in one transaction; recorded in "
            "statekeeper_changelog)\nCREATE TABLE users (id INTEGER PRIMARY KEY);\n\n"
            "-- statekeeper: 0002_email (up, in one transaction; recorded in "
            "statekeeper_changelog)\nALTER TABLE users ADD COLUMN email TEXT;\n")
    assert rows(project, "SELECT * FROM sqlite_master") == before == []
    run(project, "migrate", "tag", "base")
    assert run(project, "migrate", "up").exit_code == 0
    before = rows(project, "SELECT * FROM sqlite_master")
    r = run(project, "migrate", "down", "--yes", "--to-tag", "base", "--dry-run")
    assert r.stdout.index("ALTER TABLE users DROP COLUMN email") < r.stdout.index(
        "DROP TABLE users")
    assert rows(project, "SELECT * FROM sqlite_master") == before
    r = run(project, "migrate", "sql")
    assert r.stdout == "-- nothing to apply: the schema is up to date\n"


def test_failing_migration_exits_1_with_one_error_line_and_the_statement(project: Path) -> None:
    for name, text in GOOD.items():
        write(project, name, text)
    write(project, "0003_again.sql",
          "CREATE TABLE audit (x);\nALTER TABLE users ADD COLUMN email TEXT;\n")
    r = run(project, "migrate", "up")
    assert r.exit_code == 1
    path = project / "migrations" / "0003_again.sql"
    assert r.stderr == (f"error: migration 0003_again failed at {path}:2:1: "
                        "duplicate column name: email\n"
                        "  2 | ALTER TABLE users ADD COLUMN email TEXT;\n"
                        "    | ^\n")
    assert [x for x in r.stderr.splitlines() if x.startswith("error:")] == [
        r.stderr.splitlines()[0]]  # one error line; the rest is its display
    assert r.stdout.count("applied 000") == 2
    assert rows(project, f"SELECT id FROM {CHANGELOG_TABLE} ORDER BY seq") == [
        ("0001_users",), ("0002_email",)]
    assert rows(project, "SELECT name FROM sqlite_master WHERE name = 'audit'") == []


def test_edited_and_irreversible_and_tag_errors_exit_2(project: Path) -> None:
    p = write(project, "0001_users.sql", GOOD["0001_users.sql"])
    run(project, "migrate", "tag", "v1")
    write(project, "0002_x.sql", "CREATE TABLE x (a);\n")
    assert run(project, "migrate", "up").exit_code == 0
    r = run(project, "migrate", "down", "--yes", "--to-tag", "v1")
    x = project / "migrations" / "0002_x.sql"
    assert (r.exit_code, r.stderr) == (2, (
        f"error: cannot roll back to tag v1: migration 0002_x has no down part (no "
        f"'-- statekeeper:down' line in {x}); only restoring a backup can undo it\n"))
    r = run(project, "migrate", "down", "--yes", "--to-tag", "v7")
    assert (r.exit_code, r.stderr) == (2, "error: unknown tag 'v7' (known tags: v1)\n")
    r = run(project, "migrate", "tag", "v1")
    assert r.exit_code == 2 and r.stderr.startswith("error: tag v1 already exists (created ")
    p.write_text("CREATE TABLE users (id TEXT);\n")
    r = run(project, "migrate", "validate")
    assert r.exit_code == 2
    assert r.stderr.startswith(
        f"error: migration 0001_users was edited after it was applied: the up part of {p} ")
    assert r.stderr.count("\n") == 1


@pytest.mark.parametrize(
    ("config", "args", "message"),
    [
        ('[migrations]\ndir = "migrations"\n', (),
         "error: no target database: set [target] url in {toml} or pass --target URL"),
        ('[target]\nurl = "sqlite:///app.db"\n', (),
         "error: no migrations directory: set [migrations] dir in {toml} or pass --dir DIR"),
        ('[target]\nurl = "sqlite:///app.db"\n[migrations]\ndir = "nope"\n', (),
         "error: {toml}: [migrations] dir {base}/nope is not a directory"),
        ("", ("--target", "mysql://x/y", "--dir", "migrations"),
         "error: --target URL 'mysql://x/y': unsupported scheme 'mysql' (use sqlite:///path or "
         "postgresql://user@host:port/db)"),
        ("", ("--target", "sqlite:///missing.db", "--dir", "migrations"),
         "error: target sqlite:///missing.db: database file {base}/missing.db does not "
         "exist"),
        ("", ("--target", "sqlite:///app.db", "--dir", "elsewhere"),
         "error: --dir elsewhere: migrations directory {base}/elsewhere does not exist"),
    ],
)
def test_bad_input_one_line_exit_2(
    project: Path, monkeypatch: pytest.MonkeyPatch, config: str, args: tuple[str, ...],
    message: str,
) -> None:
    monkeypatch.chdir(project)
    toml = project / "statekeeper.toml"
    toml.write_text(config)
    r = run(project, "migrate", "status", *args)
    assert r.exit_code == 2
    assert r.stderr == message.format(toml=toml, base=project) + "\n"


def test_flags_override_the_configuration(project: Path, tmp_path_factory: pytest.TempPathFactory,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    other = tmp_path_factory.mktemp("other")
    sqlite3.connect(other / "o.db").close()
    (other / "m").mkdir()
    (other / "m" / "1_o.sql").write_text("CREATE TABLE o (x);\n")
    monkeypatch.chdir(other)
    r = run(project, "migrate", "up", "--target", "sqlite:///o.db", "--dir", "m")
    assert r.exit_code == 0, r.output
    with sqlite3.connect(other / "o.db") as c:
        assert c.execute(f"SELECT id FROM {CHANGELOG_TABLE}").fetchall() == [("1_o",)]
    assert rows(project, "SELECT name FROM sqlite_master") == []  # the configured one untouched


def test_help_of_every_command(project: Path) -> None:
    for sub in ("status", "validate", "up", "down", "tag", "sql"):
        r = run(project, "migrate", sub, "--help")
        assert r.exit_code == 0 and "--target URL" in r.stdout and "--dir DIR" in r.stdout


# -- two real processes ------------------------------------------------------------------------
def spawn(config: Path, *args: str) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("STATEKEEPER_FAILPOINT", None)
    return subprocess.Popen(
        [sys.executable, "-m", "cli", "--config", str(config), "migrate", *args],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def test_two_processes_race_on_postgresql(tmp_path: Path, pg_url: str) -> None:
    from statekeeper.targets import Target

    (tmp_path / "migrations").mkdir()
    # the winner's first migration waits for a lock this test holds until the loser has exited
    (tmp_path / "migrations" / "0001_slow.sql").write_text(
        "SELECT pg_advisory_xact_lock(20261);\nCREATE TABLE slow (x integer);\n")
    (tmp_path / "migrations" / "0002_next.sql").write_text("INSERT INTO slow VALUES (1);\n")
    config = tmp_path / "statekeeper.toml"
    config.write_text(f'[target]\nurl = "{pg_url}"\n\n[migrations]\ndir = "migrations"\n')
    command.init(str(config), None, None, None, "migrations")
    hold = Target.from_url(pg_url).connect(autocommit=True)
    hold.execute("SELECT pg_advisory_lock(20261)")
    t0 = time.monotonic()
    procs = [spawn(config, "up"), spawn(config, "up")]
    try:
        while all(p.poll() is None for p in procs) and time.monotonic() - t0 < 30:
            time.sleep(0.05)
    finally:
        hold.close()
    results = [(p, *p.communicate(timeout=60)) for p in procs]
    codes = sorted(p.returncode for p, _, _ in results)
    assert codes == [0, 5], [(p.returncode, err) for p, _, err in results]
    winner = next(r for r in results if r[0].returncode == 0)
    loser = next(r for r in results if r[0].returncode == 5)
    assert winner[1].splitlines()[-2] == "2 migrations applied"
    shown = Target.from_url(pg_url).shown  # as written in the configuration, redacted
    assert shown.startswith("postgresql://")
    err = loser[2]
    assert err.startswith(
        f"error: migrations on {shown} are locked by another process: "
        f"statekeeper pid={winner[0].pid} host={socket.gethostname()} (PostgreSQL backend pid ")
    assert err.count("\n") == 1 and "user postgres, client 127.0.0.1, connected since" in err
    assert time.monotonic() - t0 < 30
    conn = Target.from_url(pg_url).connect(autocommit=True)
    try:
        assert conn.execute(f"SELECT id FROM {CHANGELOG_TABLE} ORDER BY seq").fetchall() == [
            ("0001_slow",), ("0002_next",)]
        assert conn.execute("SELECT x FROM slow").fetchall() == [(1,)]  # each ran once
    finally:
        conn.close()


def test_second_process_on_sqlite_gets_lock_held(project: Path) -> None:
    write(project, "0001_users.sql", GOOD["0001_users.sql"])
    holder_code = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from statekeeper.migrations import Migrator\n"
        "from statekeeper.targets import Target\n"
        "p = Path(sys.argv[1])\n"
        "m = Migrator(Target.from_url(f'sqlite:///{p / \"app.db\"}'), p / 'migrations')\n"
        "with m.lock(run_id='holder'):\n"
        "    print('locked', flush=True)\n"
        "    sys.stdin.readline()\n"
    )
    holder = subprocess.Popen([sys.executable, "-c", holder_code, str(project)], cwd=ROOT,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
        other = spawn(project / "statekeeper.toml", "up")
        _, err = other.communicate(timeout=60)
        assert other.returncode == 5
        lock = project / "app.db.statekeeper-lock"
        assert err.startswith(
            "error: migrations on sqlite:///app.db are locked by another process: "
            f"statekeeper pid={holder.pid} host={socket.gethostname()} run=holder (since ")
        assert err.endswith(f"; lock file {lock})\n")
    finally:
        holder.communicate("\n", timeout=30)
    assert run(project, "migrate", "up").exit_code == 0  # released with its holder



def test_docs_embed_the_current_help_of_every_migrate_command() -> None:
    """docs/migrations.md carries a marked --help block per command (regenerated by
    scripts/cli_docs.py; tests/test_docs_cli.py checks that all such blocks are current)."""
    import re

    docs = (ROOT / "docs" / "migrations.md").read_text()
    paths = ["migrate", *(f"migrate {c}" for c in ("status", "validate", "up", "down", "tag",
                                                    "sql"))]
    for path in paths:
        block = re.search(rf"<!-- help: {path} -->\n```text\n\$ statekeeper {path} --help\n"
                          r"(.*?)```\n<!-- /help -->", docs, re.S)
        assert block is not None, path
        r = CliRunner().invoke(cli, [*path.split(), "--help"], prog_name="statekeeper",
                               terminal_width=80)
        assert r.stdout == block[1], path
