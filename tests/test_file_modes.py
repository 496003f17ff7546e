"""Private by default: every directory statekeeper creates is 0700 and every file 0600 (the
public key 0644), whatever the umask, and a private key that is not the user's own, or that
group or others may touch, is refused.

The helpers are exercised in-process with the umask set and restored; everything else through
real ``python -m cli`` subprocesses started with the umask under test (000: what a careless
service unit has; 022: the usual default), on real SQLite files and a real pg_dump."""

from __future__ import annotations

import os
import sqlite3
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import ledger
from statekeeper import files
from tests.pgcluster import PG_BIN
from tests.upgrade_support import ROOT, SEED_SQL

UMASKS = [0o000, 0o022]


def mode(p: Path) -> int:
    return stat.S_IMODE(p.lstat().st_mode)


@pytest.fixture(params=[0o000, 0o022, 0o277], ids=lambda m: f"umask{m:03o}")
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    """The process umask for one test (0277 takes even the owner's write bit)."""
    old = os.umask(request.param)
    try:
        yield int(request.param)
    finally:
        os.umask(old)


def sk(cwd: Path, umask: int, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STATEKEEPER_")}
    env["PYTHONPATH"] = str(ROOT)
    env["STATEKEEPER_PG_BIN"] = str(PG_BIN)
    return subprocess.run(
        [sys.executable, "-m", "cli", *args], cwd=cwd, env=env, capture_output=True, text=True,
        timeout=120, umask=umask,
    )


def ok(p: subprocess.CompletedProcess[str]) -> str:
    assert p.returncode == 0, (p.returncode, p.stdout, p.stderr)
    return p.stdout


def one_error(p: subprocess.CompletedProcess[str], code: int) -> str:
    assert p.returncode == code, (p.returncode, p.stdout, p.stderr)
    assert p.stdout == "" and "Traceback" not in p.stderr
    lines = p.stderr.splitlines()
    assert len(lines) == 1, p.stderr
    return lines[0]


def tree_modes(root: Path) -> dict[str, int]:
    """Mode of every file and directory under ``root`` (not root itself), by relative path."""
    out: dict[str, int] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            out[str(p.relative_to(root))] = mode(p)
    return out


# -- the helpers ---------------------------------------------------------------------------
def test_private_dir_creates_every_missing_level_0700(tmp_path: Path, umask: int) -> None:
    (tmp_path / "kept").mkdir()
    os.chmod(tmp_path / "kept", 0o755)
    files.private_dir(tmp_path / "kept" / "a" / "b")
    assert mode(tmp_path / "kept") == 0o755  # existing: the operator's choice stays
    assert mode(tmp_path / "kept" / "a") == 0o700
    assert mode(tmp_path / "kept" / "a" / "b") == 0o700
    files.private_dir(tmp_path / "kept" / "a" / "b")  # again: nothing to do
    (tmp_path / "file").write_text("")
    with pytest.raises(FileExistsError):
        files.private_dir(tmp_path / "file")


def test_files_are_0600_and_the_public_mode_is_exact(tmp_path: Path, umask: int) -> None:
    files.write_atomic(tmp_path / "a.txt", "x")
    with files.atomic_file(tmp_path / "b.txt") as f:
        f.write("y")
    files.write_atomic(tmp_path / "pub.txt", "z", mode=files.PUBLIC_FILE)
    files.touch_private(tmp_path / "c")
    files.write_private(tmp_path / "d", b"data")
    assert [mode(tmp_path / n) for n in ("a.txt", "b.txt", "pub.txt", "c", "d")] == [
        0o600, 0o600, 0o644, 0o600, 0o600
    ]
    assert (tmp_path / "d").read_bytes() == b"data"
    with pytest.raises(FileExistsError):
        files.touch_private(tmp_path / "c")  # never an existing file, never re-moded
    (tmp_path / "link").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(OSError):
        files.touch_private(tmp_path / "link")  # never through a symlink
    assert not (tmp_path / "elsewhere").exists()


def test_publish_makes_the_artifact_private(tmp_path: Path, umask: int) -> None:
    tmp = tmp_path / ".x.partial"
    tmp.write_text("dump")
    os.chmod(tmp, 0o666)  # as a child program under umask 000 would leave it
    files.publish(tmp, tmp_path / "x")
    assert mode(tmp_path / "x") == 0o600 and not tmp.exists()


def test_sqlite_ledger_and_its_wal_and_shm_are_0600(tmp_path: Path, umask: int) -> None:
    signer = ledger.generate_key_file(tmp_path / "k.pem")
    db = tmp_path / "ledger.db"
    with ledger.Ledger(f"sqlite:///{db}", signer=signer) as lg:
        lg.append("s", ledger.NewEvent("t", {}))
        sides = [Path(f"{db}{s}") for s in ("-wal", "-shm")]
        assert all(p.exists() for p in sides)  # open, in WAL mode: both are there now
        assert [mode(db), *map(mode, sides)] == [0o600, 0o600, 0o600]
    assert mode(tmp_path / "k.pem") == 0o600 and mode(tmp_path / "k.pem.pub") == 0o644


def test_an_existing_ledger_file_keeps_its_mode(tmp_path: Path) -> None:
    db = tmp_path / "ledger.db"
    sqlite3.connect(db).close()
    os.chmod(db, 0o640)  # an operator let the auditors' group read it
    signer = ledger.generate_key_file(tmp_path / "k.pem")
    with ledger.Ledger(f"sqlite:///{db}", signer=signer) as lg:
        lg.append("s", ledger.NewEvent("t", {}))
    assert mode(db) == 0o640


# -- the real command line -----------------------------------------------------------------
def _sqlite_target(path: Path) -> None:
    conn = sqlite3.connect(path)
    with conn:
        for s in SEED_SQL:
            conn.execute(s)
    conn.close()
    os.chmod(path, 0o644)


@pytest.mark.parametrize("umask", UMASKS, ids=lambda m: f"umask{m:03o}")
def test_a_whole_upgrade_leaves_nothing_readable_by_others(tmp_path: Path, umask: int) -> None:
    """init, start (backup, migrations, checkpoint), a checkpoint, an export and a backup: the
    tree statekeeper made holds only 0700 directories and 0600 files (the .pub 0644)."""
    proj = tmp_path / "proj"
    proj.mkdir()
    _sqlite_target(proj / "app.db")
    ok(sk(proj, umask, "init", "--target", "sqlite:///app.db"))
    (proj / "migrations" / "001_orders.sql").write_text(
        "CREATE TABLE orders (id INTEGER PRIMARY KEY);\n-- statekeeper:down\nDROP TABLE orders;\n"
    )
    ok(sk(proj, umask, "migrate", "tag", "v2.5"))
    assert "completed" in ok(sk(proj, umask, "start", "--to", "v2.6"))
    ok(sk(proj, umask, "ledger", "checkpoint", "--out", "cp.txt"))
    ok(sk(proj, umask, "ledger", "export", "--out", "export.jsonl"))
    ok(sk(proj, umask, "backup", "create", "--id", "manual"))

    made = tree_modes(proj / ".statekeeper")
    kinds = {
        "ledger": "ledger.db", "key": "signing-key.pem", "checkpoints": "checkpoints",
        "backup": "backups/manual/database.sqlite", "manifest": "backups/manual/manifest.json",
    }
    assert set(kinds.values()) <= set(made), sorted(made)
    assert any(p.startswith("checkpoints/") and p.endswith(".checkpoint") for p in made)
    assert sum(p.endswith("/database.sqlite") for p in made) == 2  # the run's and the manual one
    wrong = {
        p: f"{m:04o}" for p, m in made.items()
        if m != ({".pub": 0o644}.get(Path(p).suffix, 0o700 if (proj / ".statekeeper" / p)
                                     .is_dir() else 0o600))
    }
    assert wrong == {}
    assert mode(proj / ".statekeeper") == 0o700
    assert mode(proj / ".statekeeper" / "signing-key.pem.pub") == 0o644
    assert [mode(proj / n) for n in ("statekeeper.toml", "migrations", "cp.txt",
                                     "export.jsonl")] == [0o600, 0o700, 0o600, 0o600]
    assert mode(proj / "app.db") == 0o644  # the target is the application's, left as it was


@pytest.mark.postgresql
@pytest.mark.parametrize("umask", UMASKS, ids=lambda m: f"umask{m:03o}")
def test_a_pg_dump_is_0600(tmp_path: Path, pg_cluster: object, umask: int) -> None:
    url = pg_cluster.url(pg_cluster.createdb("modes"))  # type: ignore[attr-defined]
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        for s in SEED_SQL:
            conn.execute(s)
    proj = tmp_path / "proj"
    proj.mkdir()
    (proj / "statekeeper.toml").write_text(
        '[ledger]\nurl = "sqlite:///.statekeeper/ledger.db"\n\n'
        f'[target]\nurl = "{url}"\n\n[backup]\nmethod = "pg_dump"\ndir = "var/backups"\n'
    )
    ok(sk(proj, umask, "init"))
    ok(sk(proj, umask, "backup", "create", "--id", "b1"))
    d = proj / "var" / "backups" / "b1"
    assert (d / "database.dump").stat().st_size > 0
    assert [mode(p) for p in (proj / "var", proj / "var" / "backups", d, d / "database.dump",
                              d / "manifest.json")] == [0o700, 0o700, 0o700, 0o600, 0o600]
    assert sorted(p.name for p in d.iterdir()) == ["database.dump", "manifest.json"]


@pytest.mark.parametrize("umask", UMASKS, ids=lambda m: f"umask{m:03o}")
def test_keys_generate_writes_0600_and_a_0644_public_key(tmp_path: Path, umask: int) -> None:
    ok(sk(tmp_path, umask, "keys", "generate", "--out", "k.pem"))
    assert (mode(tmp_path / "k.pem"), mode(tmp_path / "k.pem.pub")) == (0o600, 0o644)


# -- private keys that are not safe to use ------------------------------------------------
APPEND = ["--ledger", "sqlite:///ledger.db", "--key", "k.pem", "ledger", "append",
          "--stream", "s", "--type", "t"]


@pytest.mark.parametrize(
    ("key_mode", "what"),
    [(0o620, "writable"), (0o602, "writable"), (0o610, "executable"), (0o601, "executable"),
     (0o640, "readable"), (0o666, "readable")],
    ids=lambda v: f"{v:04o}" if isinstance(v, int) else v,
)
def test_a_key_others_may_touch_is_refused(tmp_path: Path, key_mode: int, what: str) -> None:
    ledger.generate_key_file(tmp_path / "k.pem")
    os.chmod(tmp_path / "k.pem", key_mode)
    key = tmp_path / "k.pem"
    assert one_error(sk(tmp_path, 0o022, *APPEND), 2) == (
        f"error: {key}: private key is {what} by group or others (mode {key_mode:04o}); "
        f"fix it with 'chmod 600 {key}'"
    )
    assert not (tmp_path / "ledger.db").exists()  # refused before anything was written


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can give a file to another user")
def test_a_key_owned_by_another_user_is_refused(tmp_path: Path) -> None:
    key = tmp_path / "k.pem"
    ledger.generate_key_file(key)
    os.chown(key, 65534, 65534)  # mode still 0600: readable by root, but not root's key
    import pwd

    name = pwd.getpwuid(65534).pw_name
    assert one_error(sk(tmp_path, 0o022, *APPEND), 2) == (
        f"error: {key}: private key is owned by {name} (uid 65534), not by the user running "
        f"statekeeper (root (uid 0)); use a key file of your own (mode 0600)"
    )
    assert not (tmp_path / "ledger.db").exists()


@pytest.mark.parametrize("kind", ["fifo", "directory"])
def test_a_key_that_is_not_a_file_is_refused_without_hanging(tmp_path: Path, kind: str) -> None:
    key = tmp_path / "k.pem"
    if kind == "fifo":
        os.mkfifo(key, 0o600)
    else:
        key.mkdir(mode=0o700)
    assert one_error(sk(tmp_path, 0o022, *APPEND), 2) == (
        f"error: {key}: key file is not a regular file"
    )
