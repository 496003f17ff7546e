"""``statekeeper backup ...``: exit codes and the exact one-line messages, on real databases."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from cli.main import cli
from statekeeper import command
from statekeeper.fingerprint import fingerprint
from statekeeper.targets import Target
from tests.test_backup_support import damage, execute, flip_byte, seed

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A statekeeper.toml with a SQLite target holding test data."""
    seed(f"sqlite:///{tmp_path / 'app.db'}")
    (tmp_path / "statekeeper.toml").write_text(
        '[target]\nurl = "sqlite:///app.db"\n\n[backup]\ndir = "backups"\n'
    )
    command.init(str(tmp_path / "statekeeper.toml"), None, None, None, "migrations")
    return tmp_path


def run(project: Path, *args: str, env: dict[str, str] | None = None) -> Result:
    result = CliRunner().invoke(
        cli, ["--config", str(project / "statekeeper.toml"), *args], env=env,
        catch_exceptions=True,
    )
    assert "Traceback" not in result.output
    if result.exception is not None:
        assert isinstance(result.exception, SystemExit), repr(result.exception)
    return result


def test_create_list_verify_restore(project: Path) -> None:
    url = f"sqlite:///{project / 'app.db'}"
    r = run(project, "backup", "create", "--id", "b1")
    assert r.exit_code == 0, r.output
    assert r.stdout.splitlines()[0].startswith("created backup b1 (sqlite, ")
    assert r.stdout.splitlines()[0].endswith(f") in {project / 'backups' / 'b1'}")
    assert r.stdout.splitlines()[2].endswith("(4 tables, 128 rows)")

    r = run(project, "backup", "list")
    assert r.exit_code == 0
    header, row = r.stdout.splitlines()
    assert header.split() == ["ID", "CREATED", "METHOD", "SIZE", "DATABASE", "FINGERPRINT"]
    assert row.startswith("b1  ") and " sqlite " in row and str(project / "app.db") in row

    r = run(project, "backup", "list", "--json")
    items = json.loads(r.stdout)
    assert [i["id"] for i in items] == ["b1"] and items[0]["method"] == "sqlite"
    assert set(items[0]["fingerprint"]) == {"digest"}

    r = run(project, "backup", "verify", "b1")
    assert r.exit_code == 0
    assert r.stdout.startswith(f"backup b1 OK: {project / 'backups' / 'b1' / 'database.sqlite'}"
                               " matches its manifest (")

    before = fingerprint(Target.from_url(url))
    damage(url)
    r = run(project, "backup", "restore", "--yes", "b1")
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    assert lines[0].startswith(f"restored backup b1 into sqlite:///{project / 'app.db'} in ")
    assert lines[1:5] == [
        "  undone: table audit_tmp exists only after (1 row)",
        "  undone: positions: 120 rows -> 118 rows",
        "  undone: settings: 2 rows, contents differ",
        "  undone: users: 3 rows -> 4 rows",
    ]
    assert lines[-2].endswith("matches the backup")
    assert lines[-1].startswith("recorded as operation ")
    assert fingerprint(Target.from_url(url)) == before


def test_corrupt_artifact_exit_4(project: Path) -> None:
    assert run(project, "backup", "create", "--id", "b1").exit_code == 0
    artifact = project / "backups" / "b1" / "database.sqlite"
    flip_byte(artifact)
    for verb in ("verify", "restore"):
        r = run(project, "backup", verb, "b1", *(["--yes"] if verb == "restore" else []))
        assert r.exit_code == 4
        assert r.stdout == ""
        assert r.stderr.startswith(
            f"error: backup b1: artifact {artifact} does not match its manifest (sha256 ")
        assert len(r.stderr.splitlines()) == 1
    size = artifact.stat().st_size
    with artifact.open("r+b") as f:
        f.truncate(100)
    r = run(project, "backup", "verify", "b1")
    assert r.exit_code == 4
    assert r.stderr == (f"error: backup b1: artifact {artifact} is 100 bytes, manifest says "
                        f"{size}\n")


def test_missing_manifest_and_unknown_id_exit_2(project: Path) -> None:
    assert run(project, "backup", "create", "--id", "b1").exit_code == 0
    (project / "backups" / "b1" / "manifest.json").unlink()
    r = run(project, "backup", "list")
    assert r.exit_code == 0 and r.stdout == f"no backups in {project / 'backups'}\n"
    assert json.loads(run(project, "backup", "list", "--json").stdout) == []
    for verb in ("verify", "restore"):
        r = run(project, "backup", verb, "b1", *(["--yes"] if verb == "restore" else []))
        assert r.exit_code == 2
        assert r.stderr == f"error: backup b1 not found in {project / 'backups'}\n"
    r = run(project, "backup", "verify", "../etc")
    assert r.exit_code == 2
    assert r.stderr.startswith("error: backup id '../etc' is not valid (")


def test_wrong_database_exit_2_and_override(project: Path) -> None:
    assert run(project, "backup", "create", "--id", "b1").exit_code == 0
    other = project / "other.db"
    execute(f"sqlite:///{other}", "CREATE TABLE x (a int)")
    r = run(project, "backup", "restore", "--yes", "b1", "--target", f"sqlite:///{other}")
    assert r.exit_code == 2
    assert r.stderr == (f"error: backup b1 was taken of {project / 'app.db'}, not {other} "
                        "(pass --allow-other-database to restore there anyway)\n")
    assert "x" in fingerprint(Target.from_url(f"sqlite:///{other}")).tables
    r = run(project, "backup", "restore", "--yes", "b1", "--target", f"sqlite:///{other}",
            "--allow-other-database", "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["ok"] is True


def test_bad_url_and_missing_target_exit_2(project: Path, tmp_path: Path) -> None:
    r = run(project, "backup", "create", "--target", "mysql://u@h/db")
    assert r.exit_code == 2
    assert r.stderr == ("error: --target URL 'mysql://u@h/db': unsupported scheme 'mysql' "
                        "(use sqlite:///path or postgresql://user@host:port/db)\n")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "statekeeper.toml").write_text("[backup]\ndir = \"b\"\n")
    r = run(empty, "backup", "create")
    assert r.exit_code == 2
    assert r.stderr == "error: no target database: set [target] url or pass --target\n"
    assert not (empty / "b").exists()


@pytest.mark.postgresql
def test_pg_missing_pg_dump_exit_2_and_corrupt_dump_exit_4(pg_url: str, tmp_path: Path) -> None:
    seed(pg_url)
    (tmp_path / "statekeeper.toml").write_text(
        f'[target]\nurl = "{pg_url}"\n\n[backup]\nmethod = "pg_dump"\ndir = "backups"\n'
    )
    command.init(str(tmp_path / "statekeeper.toml"), None, None, None, "migrations")
    r = run(tmp_path, "backup", "create", "--id", "p1",
            env={"STATEKEEPER_PG_BIN": str(tmp_path / "nowhere")})
    assert r.exit_code == 2
    assert r.stderr == f"error: pg_dump not found in {tmp_path / 'nowhere'}\n"
    assert not (tmp_path / "backups" / "p1").exists()

    r = run(tmp_path, "backup", "create", "--id", "p1")
    assert r.exit_code == 0, r.output
    assert r.stdout.startswith("created backup p1 (pg_dump, ")
    dump = tmp_path / "backups" / "p1" / "database.dump"
    damage(pg_url)
    flip_byte(dump, offset=dump.stat().st_size - 20)
    r = run(tmp_path, "backup", "restore", "--yes", "p1")
    assert r.exit_code == 4
    assert r.stderr.startswith(f"error: backup p1: artifact {dump} does not match its manifest")
    assert "audit_tmp" in fingerprint(Target.from_url(pg_url)).tables  # untouched


def test_help_texts(project: Path) -> None:
    r = run(project, "backup", "--help")
    assert r.exit_code == 0 and "Exit codes:" in r.stdout
    for verb in ("create", "list", "verify", "restore"):
        r = run(project, "backup", verb, "--help")
        assert r.exit_code == 0 and "--target URL" in r.stdout
    r = run(project, "backup", "restore")
    assert r.exit_code == 2 and "Missing argument 'ID'" in r.stderr


def test_real_entry_point_no_traceback(project: Path) -> None:
    """The installed entry point: one line on stderr, the documented code."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    p = subprocess.run(
        [sys.executable, "-c", "from cli.main import main; main()", "--config",
         str(project / "statekeeper.toml"), "backup", "verify", "nope"],
        capture_output=True, text=True, env=env, cwd=project, timeout=60,
    )
    assert p.returncode == 2
    assert p.stderr == f"error: backup nope not found in {project / 'backups'}\n"
