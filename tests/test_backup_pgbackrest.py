"""What only the pgBackRest method does, on a throwaway cluster with WAL archiving: the stanza,
server stop/start commands, and the check of one backup set and its WAL in the repository. Its
round trip (a point-in-time restore to the backup's restore point) and refusals are the backup
contract's: tests/test_backup_contract.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from statekeeper.backups import BackupManager, Manifest, pgbackrest
from statekeeper.backups import pgbackrest_verify as pgv
from statekeeper.backups.pgbackrest import PgBackRestMethod
from statekeeper.errors import BackupCorrupt, ConfigError
from statekeeper.targets import Target
from tests.test_backup_support import PGBACKREST_MARKS, execute, flip_byte, scalar, seed

pytestmark = PGBACKREST_MARKS


@pytest.fixture
def app(pgbackrest_archiving: tuple[Any, dict[str, Any]],
        tmp_path: Path) -> tuple[str, BackupManager]:
    cluster, kwargs = pgbackrest_archiving
    url = cluster.url(cluster.createdb("app"))
    seed(url)
    return url, BackupManager(Target.from_url(url), "pgbackrest", tmp_path / "backups",
                              **kwargs)


def test_missing_commands_and_stanza(app: tuple[str, BackupManager], tmp_path: Path) -> None:
    url, manager = app
    no_cmds = BackupManager(manager.target, "pgbackrest", tmp_path / "b2",
                            stanza=manager.stanza, pgbackrest_config=manager.pgbackrest_config)
    no_cmds.create("pb-n")
    with pytest.raises(ConfigError, match="stop_command and start_command must be set"):
        no_cmds.restore("pb-n")
    assert scalar(url, "SELECT count(*) FROM users") == 3  # nothing was stopped or restored
    with pytest.raises(ConfigError, match="stanza is not set"):
        BackupManager(manager.target, "pgbackrest", tmp_path).create()


@pytest.fixture(scope="module")
def two_sets(pgbackrest_archiving: tuple[Any, dict[str, Any]],
             tmp_path_factory: pytest.TempPathFactory) -> tuple[BackupManager, Manifest, Manifest]:
    """Two backups of one database, the second an incremental over the first."""
    cluster, kwargs = pgbackrest_archiving
    url = cluster.url(cluster.createdb("sets"))
    seed(url)
    manager = BackupManager(Target.from_url(url), "pgbackrest",
                            tmp_path_factory.mktemp("sets"), **kwargs)
    first = manager.create("pb-first")
    execute(url, "UPDATE positions SET qty = qty + 1")
    return manager, first, manager.create("pb-second")


def _check(manager: BackupManager, m: Manifest) -> str:
    """PgBackRestMethod.check of ``m``; what it verified."""
    method = PgBackRestMethod(manager.target, stanza=manager.stanza,
                              config=manager.pgbackrest_config)
    method.check(m)
    assert method.last_check is not None
    return f"{method.last_check.scope}: {method.last_check.how}"


def test_verify_reads_only_the_restored_set(
    pgbackrest_archiving: tuple[Any, dict[str, Any]],
    two_sets: tuple[BackupManager, Manifest, Manifest],
) -> None:
    cluster, _ = pgbackrest_archiving
    manager, first, second = two_sets
    sets = cluster.root / "repo" / "backup" / "sk"
    for m in (first, second):
        assert _check(manager, m).startswith(f"set: backup set {m.pgbackrest_label} alone")
    l1, l2 = str(first.pgbackrest_label), str(second.pgbackrest_label)

    # A file only the second set holds: the second fails, naming it; the first is unaffected.
    own = sorted(p for p in (sets / l2 / "pg_data").rglob("*.lz4") if p.stat().st_size > 1000)
    victim = own[-1]
    name = str(victim.relative_to(sets / l2))[:-len(".lz4")]
    original = victim.read_bytes()
    flip_byte(victim)
    try:
        with pytest.raises(BackupCorrupt, match=rf"^backup pb-second: pgBackRest backup {l2}: "
                                                rf"{name} is damaged \(sha1 .*{victim}$"):
            manager.verify("pb-second")
        assert manager.verify("pb-first") == first
    finally:
        victim.write_bytes(original)  # later tests in the session share the repository

    # A file of the first set that the second references: both fail, the second says where.
    files = pgv.parse_manifest(second.artifact_path.read_bytes()).files
    ref = next(f for f in files if f.reference == l1 and f.repo_size > 1000)
    held = sets / l1 / f"{ref.name}.lz4"
    original = held.read_bytes()
    flip_byte(held)
    try:
        with pytest.raises(BackupCorrupt, match=rf"{l2}: {ref.name} \(held by {l1}\) "
                                                "is damaged"):
            manager.verify("pb-second")
        with pytest.raises(BackupCorrupt, match=f"{l1}: {ref.name} is damaged"):
            manager.verify("pb-first")
    finally:
        held.write_bytes(original)
    assert manager.verify("pb-second") == second


def test_verify_finds_a_missing_wal_segment(
    pgbackrest_archiving: tuple[Any, dict[str, Any]],
    two_sets: tuple[BackupManager, Manifest, Manifest], monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The WAL from the backup's start through its restore point must be in the archive, and
    only that: pgbackrest verify 2.45 says such a backup is valid. Also with a pgBackRest that
    verifies one set itself (2.45 taken for one: it accepts --set and verifies everything)."""
    cluster, _ = pgbackrest_archiving
    manager, first, _second = two_sets
    segments = _check(manager, first).rsplit(" and WAL ", 1)[1].split(" ")[0].split("..")
    last = segments[-1]  # the segment of the restore point, after the backup's end
    archive = cluster.root / "repo" / "archive" / "sk" / "15-1" / last[:16]
    (gone,) = archive.glob(f"{last}-*")
    aside = gone.with_name("aside")
    gone.rename(aside)
    try:
        with pytest.raises(BackupCorrupt, match=f"^backup pb-first: pgBackRest backup "
                                                f"{first.pgbackrest_label}: WAL segment {last}, "
                                                f"which the restore needs, is missing from "
                                                f"{archive}$"):
            manager.verify("pb-first")
        assert manager.verify("pb-second").id == "pb-second"  # its WAL is elsewhere
        monkeypatch.setattr(pgbackrest, "VERIFY_SET_SINCE", (2, 45))
        with pytest.raises(BackupCorrupt, match=f"WAL segment {last}, which the restore needs"):
            manager.verify("pb-first")
    finally:
        aside.rename(gone)
    assert _check(manager, first) == (
        f"set: pgbackrest verify --set={first.pgbackrest_label} and WAL "
        f"{segments[0]}..{last} (content)")
