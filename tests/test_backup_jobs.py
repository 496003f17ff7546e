"""`[backup] jobs = N`: pg_dump's directory format written by N processes in the exported
snapshot the fingerprint reads, restored by `pg_restore -j N`, on the throwaway cluster.

The artifact is a directory, and every file of it is covered by the one sha256 the manifest
and the ledger record: a file changed, added or removed is refused before anything is
restored, by `backup verify`/`restore` and by a run's rollback alike."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from click.testing import CliRunner

from cli.main import cli
from statekeeper import command
from statekeeper.backups import BackupManager
from statekeeper.errors import BackupCorrupt, ConfigError
from statekeeper.fingerprint import fingerprint
from tests.test_backup_support import damage, flip_byte, seed
from tests.upgrade_support import SCENARIOS, make_project, seeded_db

pytestmark = pytest.mark.postgresql


def _resume(config: Path) -> tuple[int, str]:
    """``statekeeper resume`` in this process (a child process per call costs seconds)."""
    r = CliRunner(env={"STATEKEEPER_CONFIG": None, "STATEKEEPER_FAILPOINT": None}).invoke(
        cli, ["--config", str(config), "resume"], prog_name="statekeeper")
    if r.exception is not None and not isinstance(r.exception, SystemExit):
        raise AssertionError("statekeeper resume raised") from r.exception
    return r.exit_code, r.stdout + r.stderr


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.lstat().st_mode)


def test_directory_backup_round_trip_and_every_file_is_checked(
    pg_url: str, tmp_path: Path
) -> None:
    t = seed(pg_url)
    before = fingerprint(t)
    bm = BackupManager(t, "pg_dump", tmp_path / "b", jobs=2)
    old = os.umask(0o022)  # what a umask lets through must not matter
    try:
        m = bm.create("d1")
    finally:
        os.umask(old)
    art = m.artifact_path
    assert m.artifact == "database.dumpdir" and art.is_dir()
    files = sorted(art.iterdir())
    assert any(p.name == "toc.dat" for p in files) and len(files) > 2
    assert _mode(art) == 0o700 and {_mode(p) for p in files} == {0o600}
    assert m.size == sum(p.stat().st_size for p in files)
    assert m.get_fingerprint() == before
    assert bm.probe("d1") == m and bm.verify("d1") == m

    damage(pg_url)
    r = bm.restore("d1")  # pg_restore -j 2, then the fingerprint comparison
    assert r.fingerprint == before and fingerprint(t) == before
    damage(pg_url)  # jobs lowered to 1 since: the one-transaction restore reads the directory
    r = BackupManager(t, "pg_dump", tmp_path / "b").restore("d1")
    assert r.fingerprint == before

    data = next(p for p in files if p.name != "toc.dat")
    kept = data.read_bytes()
    damage(pg_url)
    damaged = fingerprint(t)
    tampered = {
        "a byte flipped": lambda: flip_byte(data),
        "a file added": lambda: (art / "9999.dat.gz").write_bytes(b"x"),
        "a file removed": lambda: data.unlink(),
        "a file made a symlink": lambda: (data.unlink(), data.symlink_to(art / "toc.dat")),
    }
    for what, tamper in tampered.items():
        tamper()
        with pytest.raises(BackupCorrupt) as e:
            bm.restore("d1")
        assert e.value.exit_code == 4, what
        assert str(e.value).startswith("backup d1: ") and str(art) in str(e.value), what
        assert fingerprint(t) == damaged, what  # refused before anything was restored
        (art / "9999.dat.gz").unlink(missing_ok=True)
        data.unlink(missing_ok=True)
        data.write_bytes(kept)
        os.chmod(data, 0o600)
        if what == "a file made a symlink":
            assert str(e.value) == (f"backup d1: cannot read artifact {art}: not a regular file "
                                    f"(a directory artifact holds only files): {data}")
    assert bm.verify("d1") == m
    bm.delete("d1")  # prune's deletion
    assert not (tmp_path / "b" / "d1").exists() and bm.list() == []


def test_a_crashed_directory_dump_is_settled(pg_url: str, tmp_path: Path) -> None:
    t = seed(pg_url)
    bm = BackupManager(t, "pg_dump", tmp_path / "b", jobs=2)
    work = tmp_path / "b" / "x1"
    (work / ".database.dumpdir.partial").mkdir(parents=True)
    (work / ".database.dumpdir.partial" / "toc.dat").write_bytes(b"half")
    assert bm.settle("x1") == ["removed the partial .database.dumpdir.partial"]
    assert list(work.iterdir()) == []


def test_a_failed_upgrade_restores_the_directory_the_ledger_recorded(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """jobs = 2 end to end: a run whose last migration fails is rolled back by `pg_restore -j`;
    a file of the dump changed after the backup makes the rollback refuse (ledger record)."""
    url = seeded_db(tmp_path, "postgresql", "jobs_db", request)
    proj = make_project(tmp_path / "proj", "postgresql", url, SCENARIOS["restore"])
    toml = proj.config.read_text()
    proj.config.write_text(toml.replace("enabled = true\n", "enabled = true\njobs = 2\n"))
    before = proj.fingerprint()

    crashed = proj.cli("start", "--to", "v2.6", failpoint="migrate.before:3")
    assert crashed.returncode == 137, crashed.stdout + crashed.stderr
    recorded = command.status(proj.settings()).backup
    assert recorded is not None
    art = proj.dir / "backups" / recorded["backup_id"] / "database.dumpdir"
    data = next(p for p in sorted(art.iterdir()) if p.name != "toc.dat")
    kept = data.read_bytes()
    flip_byte(data)
    applied = proj.applied_ids()
    code, out = _resume(proj.config)
    assert code == 3, out
    assert f"artifact {art} has sha256 " in out and "refusing to restore it" in out
    assert proj.applied_ids() == applied  # nothing restored

    data.write_bytes(kept)
    code, out = _resume(proj.config)
    assert code == 1, out  # failed and rolled back cleanly
    assert "    ok    restore" in out
    assert proj.fingerprint() == before


@pytest.mark.parametrize(("value", "message"), [
    ("0", "[backup] jobs must be at least 1, not 0"),
    ("65", "[backup] jobs must be at most 64, not 65"),
    ("true", "[backup] jobs must be an integer"),
    ('"2"', "[backup] jobs must be an integer"),
])
def test_jobs_is_validated(tmp_path: Path, value: str, message: str) -> None:
    (tmp_path / "statekeeper.toml").write_text(f"[backup]\njobs = {value}\n")
    with pytest.raises(ConfigError) as e:
        command.Settings.load(str(tmp_path / "statekeeper.toml"))
    assert message in str(e.value) and str(tmp_path / "statekeeper.toml") in str(e.value)
