"""What only the pgBackRest method does, on a throwaway cluster with WAL archiving: the stanza,
server stop/start commands, and ``pgbackrest verify`` of the repository. Its round trip (a
point-in-time restore to the backup's restore point) and refusals are the backup contract's:
tests/test_backup_contract.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from statekeeper.backups import BackupManager
from statekeeper.errors import BackupCorrupt, ConfigError
from statekeeper.targets import Target
from tests.test_backup_support import PGBACKREST_MARKS, flip_byte, scalar, seed

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


def test_verify_finds_a_damaged_file_in_the_repository(
    pgbackrest_archiving: tuple[Any, dict[str, Any]], app: tuple[str, BackupManager]
) -> None:
    cluster, _ = pgbackrest_archiving
    _url, manager = app
    m = manager.create("pb-r")
    assert manager.verify("pb-r") == m
    base = cluster.root / "repo" / "backup" / "sk" / str(m.pgbackrest_label) / "pg_data" / "base"
    victim = next(p for p in sorted(base.rglob("*")) if p.is_file() and p.stat().st_size > 1000)
    original = victim.read_bytes()
    flip_byte(victim)
    try:
        with pytest.raises(BackupCorrupt, match=f"pgbackrest verify finds backup "
                                                f"{m.pgbackrest_label} invalid"):
            manager.verify("pb-r")
    finally:
        victim.write_bytes(original)  # later tests in the session share the repository
