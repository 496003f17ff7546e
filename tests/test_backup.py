"""The backup manager and the SQLite and pg_dump methods on real databases: manifests and
listing, crashes in the middle, ids, truncated or missing artifacts and manifests, failed and
mismatched restores. The round trip (backup -> damage -> restore -> the fingerprint equals the
one before) and the refusals every method shares are tests/test_backup_contract.py."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from statekeeper.backups import MANIFEST_NAME, BackupManager, Manifest
from statekeeper.errors import (
    BackupCorrupt,
    BackupError,
    BackupNotFound,
    ConfigError,
    RestoreMismatch,
    TargetUnreachable,
)
from statekeeper.fingerprint import Fingerprint, fingerprint
from statekeeper.targets import Target
from tests.test_backup_support import damage, execute, scalar, seed


def method_for(t: Target) -> str:
    return t.dialect.default_backup_method


@pytest.fixture
def target(db_url: str) -> Target:
    return seed(db_url)


@pytest.fixture
def manager(target: Target, tmp_path: Path) -> BackupManager:
    return BackupManager(target, method_for(target), tmp_path / "backups")


class Boom(Exception):
    pass


def boom() -> None:
    raise Boom("crash in the middle")


def test_manifest_contents_and_listing(manager: BackupManager, target: Target) -> None:
    a = manager.create("a")
    b = manager.create()
    assert [m.id for m in manager.list()] == ["a", b.id]
    data = json.loads((a.directory / MANIFEST_NAME).read_text())  # type: ignore[operator]
    assert data["sha256"] == a.sha256 and data["size"] == a.size
    assert data["target"] == target.display and data["method"] == method_for(target)
    assert data["fingerprint"]["digest"] == a.fingerprint_digest
    assert data["created_at"].endswith("Z") and data["server_version"]

    def no_floats(x: object) -> bool:
        if isinstance(x, dict):
            return all(no_floats(v) for v in x.values())
        if isinstance(x, list):
            return all(no_floats(v) for v in x)
        return not isinstance(x, float)

    assert no_floats(data)  # goes into ledger events as it is
    assert Manifest.from_dict(data, a.directory) == a
    assert manager.get("a") == a and manager.probe("a") == a
    if target.backend == "postgresql":
        assert data["system_identifier"] and data["database"] == target.database
    else:
        assert data["database"] == str(target.sqlite_path.resolve())
    assert manager.estimate_size() > 0 and manager.free_space() > 0


def test_manifest_is_written_only_after_the_artifact(manager: BackupManager) -> None:
    seen: dict[str, object] = {}

    def mid() -> None:
        d = manager.backup_dir / "x1"
        seen["artifact"] = sorted(p.name for p in d.iterdir())
        seen["probe"] = manager.probe("x1")
        seen["list"] = manager.list()

    manager.create("x1", hook=mid)
    assert seen["probe"] is None and seen["list"] == []
    assert MANIFEST_NAME not in seen["artifact"]  # type: ignore[operator]
    assert manager.probe("x1") is not None


def test_crash_mid_backup_leaves_no_backup_and_can_be_redone(manager: BackupManager) -> None:
    with pytest.raises(Boom):
        manager.create("x2", hook=boom)
    assert manager.probe("x2") is None and manager.list() == []
    assert not (manager.backup_dir / "x2").exists()
    # A process killed at that point leaves the artifact without a manifest: not a backup.
    m = manager.create("x2")
    os.unlink(m.manifest_path)  # type: ignore[arg-type]
    assert manager.probe("x2") is None and manager.list() == []
    with pytest.raises(BackupNotFound, match="backup x2 not found in "):
        manager.verify("x2")
    with pytest.raises(BackupNotFound):
        manager.restore("x2")
    again = manager.create("x2")  # the same id can be taken again
    assert manager.probe("x2") == again


def test_existing_and_invalid_ids(manager: BackupManager) -> None:
    manager.create("dup")
    with pytest.raises(BackupError, match="backup dup already exists"):
        manager.create("dup")
    for bad in ("../escape", "", ".hidden", "a/b", "x" * 101):
        with pytest.raises(ConfigError, match="is not valid"):
            manager.probe(bad) if bad else manager.get(bad)


def test_truncated_and_missing_artifact(manager: BackupManager) -> None:
    m = manager.create("t1")
    with m.artifact_path.open("r+b") as f:
        f.truncate(m.size // 2)
    assert manager.probe("t1") is None
    with pytest.raises(BackupCorrupt, match=f"is {m.size // 2} bytes, manifest says {m.size}"):
        manager.verify("t1")
    m.artifact_path.unlink()
    with pytest.raises(BackupCorrupt, match=f"artifact {m.artifact_path} is missing"):
        manager.restore("t1")


def test_unreadable_manifest_is_corrupt_and_not_listed(manager: BackupManager) -> None:
    m = manager.create("j1")
    assert m.manifest_path is not None
    m.manifest_path.write_text("{not json")
    assert manager.list() == [] and manager.probe("j1") is None
    with pytest.raises(BackupCorrupt, match="is not a valid manifest"):
        manager.verify("j1")


def test_restore_into_another_database_when_told(
    manager: BackupManager, target: Target, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """Without ``allow_other_database`` this is refused (the contract's refusals)."""
    before = fingerprint(target)
    manager.create("w1")
    if target.backend == "sqlite":
        other_url = f"sqlite:///{tmp_path / 'other.db'}"
    else:
        cluster = request.getfixturevalue("pg_cluster")
        other_url = cluster.url(cluster.createdb("other"))
    execute(other_url, "CREATE TABLE unrelated (x int)")
    other = Target.from_url(other_url)
    into_other = BackupManager(other, method_for(other), manager.backup_dir)
    r = into_other.restore("w1", allow_other_database=True)
    assert fingerprint(other) == before and r.target == other.display


def test_failed_restore_leaves_the_database_as_it_was(
    manager: BackupManager, target: Target, db_url: str
) -> None:
    manager.create("f1")
    damage(db_url)
    damaged = fingerprint(target)
    with pytest.raises(Boom):
        manager.restore("f1", hook=boom)  # dies before the restore commits / switches in
    assert fingerprint(target) == damaged
    if target.backend == "sqlite":
        leftovers = [p.name for p in target.sqlite_path.parent.iterdir() if ".restore-" in p.name]
        assert leftovers == []


def test_fingerprint_mismatch_after_restore_needs_attention(
    manager: BackupManager, target: Target
) -> None:
    m = manager.create("m1")
    fp = m.get_fingerprint().to_dict()
    fp["tables"]["users"]["rows"] = 5
    fp["digest"] = Fingerprint.from_dict({k: v for k, v in fp.items() if k != "digest"}).digest
    m.fingerprint = fp
    assert m.manifest_path is not None
    m.manifest_path.write_text(m.to_json())
    with pytest.raises(RestoreMismatch) as e:
        manager.restore("m1")
    assert e.value.exit_code == 3 and e.value.lines == ["users: 5 rows -> 3 rows"]
    assert str(e.value) == ("restore of backup m1 did not reproduce the backup: "
                            "users: 5 rows -> 3 rows")
    manager.restore("m1", check=False)  # the caller compares itself


def test_method_and_target_must_agree(target: Target, tmp_path: Path) -> None:
    wrong = "pg_dump" if target.backend == "sqlite" else "sqlite"
    with pytest.raises(ConfigError, match=f"method '{wrong}' cannot back up"):
        BackupManager(target, wrong, tmp_path)
    with pytest.raises(ConfigError, match="is not one of"):
        BackupManager(target, "tar", tmp_path)
    with pytest.raises(ConfigError, match="no target database"):
        BackupManager(None, "pg_dump", tmp_path).create()
    assert BackupManager(None, "pg_dump", tmp_path / "none").list() == []


@pytest.mark.postgresql
def test_pg_missing_pg_dump_and_unreachable_server(pg_url: str, tmp_path: Path) -> None:
    t = seed(pg_url)
    m = BackupManager(t, "pg_dump", tmp_path / "b", pg_bin=tmp_path / "nowhere")
    with pytest.raises(ConfigError, match=f"^pg_dump not found in {tmp_path / 'nowhere'}$"):
        m.create("n1")
    assert m.list() == [] and not (tmp_path / "b" / "n1").exists()
    from tests.pgcluster import free_port

    down = Target.from_url(f"postgresql://postgres@127.0.0.1:{free_port()}/{t.database}")
    m2 = BackupManager(down, "pg_dump", tmp_path / "b")
    with pytest.raises(TargetUnreachable, match="Connection refused"):  # exit 3: nothing done
        m2.create("n2")
    assert m2.list() == [] and not (tmp_path / "b" / "n2").exists()


@pytest.mark.postgresql
def test_pg_restore_into_database_with_other_sessions(pg_url: str, tmp_path: Path) -> None:
    """An idle application connection does not block the restore; the restore still drops
    what was created after the backup, including in other schemas."""
    t = seed(pg_url)
    before = fingerprint(t)
    m = BackupManager(t, "pg_dump", tmp_path / "b")
    m.create("s1")
    idle = t.connect(autocommit=True)
    try:
        execute(pg_url, "CREATE SCHEMA reports", "CREATE VIEW reports.v AS SELECT 1 AS one",
                "CREATE EXTENSION IF NOT EXISTS pgcrypto")
        m.restore("s1")
        assert fingerprint(t) == before
        assert scalar(pg_url, "SELECT count(*) FROM pg_namespace WHERE nspname = 'reports'") == 0
        assert scalar(pg_url, "SELECT count(*) FROM pg_extension WHERE extname = 'pgcrypto'") == 0
    finally:
        idle.close()


def test_sqlite_restore_when_file_is_gone_and_wal_mode(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'app.db'}"
    execute(url, "PRAGMA journal_mode = WAL")
    t = seed(url)
    before = fingerprint(t)
    m = BackupManager(t, "sqlite", tmp_path / "b")
    m.create("s1")
    keep = t.connect(autocommit=True)  # a reader leaves -wal/-shm behind it
    keep.execute("SELECT count(*) FROM users").fetchone()
    keep.close()
    t.sqlite_path.unlink()
    for suffix in ("-wal", "-shm"):
        Path(f"{t.sqlite_path}{suffix}").unlink(missing_ok=True)
    m.restore("s1")
    assert fingerprint(t) == before
