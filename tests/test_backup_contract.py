"""The backup-method contract, written once and run per method (as eventsourcing's
``AggregateRecorderTestCase`` is run per recorder): create -> probe -> verify -> damage ->
restore -> the fingerprint equals the one before; a backup restored into another database, or
with a tampered artifact, is refused before anything is touched.

A method joins by subclassing :class:`BackupMethodContract`. What only one method does stays in
its own file: tests/test_backup.py (the manager, SQLite and pg_dump) and
tests/test_backup_pgbackrest.py (stanza, WAL archiving, the repository, server stop/start)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import pytest

from statekeeper.backups import BackupManager, Manifest
from statekeeper.errors import BackupCorrupt, WrongDatabase
from statekeeper.fingerprint import diff, fingerprint
from statekeeper.targets import Target
from tests.test_backup_support import (
    EXPECTED_DAMAGE,
    PGBACKREST_MARKS,
    damage,
    execute,
    flip_byte,
    scalar,
    seed,
)


class BackupMethodContract:
    """What every backup method must do. A subclass names its ``method`` and provides the
    ``url`` fixture (a fresh database of a kind the method serves) and ``other_url`` (another
    database of that kind)."""

    method: str
    #: counts tables that the damage (and ``extra_damage``) created: 0 after the restore
    created_tables_sql = "SELECT count(*) FROM pg_tables WHERE tablename IN ('audit_tmp', 't')"

    @pytest.fixture
    def url(self) -> str:
        raise NotImplementedError

    @pytest.fixture
    def other_url(self) -> str:
        raise NotImplementedError

    @pytest.fixture
    def options(self) -> dict[str, Any]:
        """The method's own BackupManager keywords."""
        return {}

    def manager(self, url: str, backup_dir: Path, options: dict[str, Any]) -> BackupManager:
        return BackupManager(Target.from_url(url), self.method, backup_dir, **options)

    def extra_damage(self, url: str) -> list[str]:
        """Damage of the method's own kind, after :func:`damage`; the diff lines it must show."""
        return []

    def after_restore(self, manager: BackupManager, url: str, m: Manifest) -> None:
        """The method's own checks once the round trip is done."""

    def test_round_trip_gives_the_same_fingerprint(
        self, url: str, options: dict[str, Any], tmp_path: Path
    ) -> None:
        manager = self.manager(url, tmp_path / "backups", options)
        target = Target.from_url(url)
        before = fingerprint(target)
        m = manager.create("before-upgrade")
        assert m.id == "before-upgrade" and m.method == self.method
        assert m.fingerprint_digest == before.digest and m.get_fingerprint() == before
        assert m.artifact_path.is_file() and m.artifact_path.stat().st_size == m.size
        assert m.manifest_path is not None and m.manifest_path.is_file()
        assert manager.probe("before-upgrade") == m and manager.verify("before-upgrade") == m

        damage(url)
        extra = self.extra_damage(url)
        hurt = diff(before, fingerprint(target))
        for line in EXPECTED_DAMAGE + extra:
            assert line in hurt  # the damage is seen before restoring

        r = manager.restore("before-upgrade")
        after = fingerprint(target)
        assert after == before and diff(before, after) == [] and r.fingerprint == before
        assert r.damage == hurt
        assert scalar(url, "SELECT count(*) FROM positions") == 120
        assert scalar(url, "SELECT value FROM settings WHERE key = 'mode'") == "live"
        assert scalar(url, self.created_tables_sql) == 0  # what the failed migration added
        self.after_restore(manager, url, m)

    def test_refusals_touch_nothing(
        self, url: str, other_url: str, options: dict[str, Any], tmp_path: Path
    ) -> None:
        manager = self.manager(url, tmp_path / "backups", options)
        target = Target.from_url(url)
        m = manager.create("c1")
        damage(url)
        damaged = fingerprint(target)

        execute(other_url, "CREATE TABLE unrelated (x int)")
        other = Target.from_url(other_url)
        into_other = self.manager(other_url, manager.backup_dir, options)
        with pytest.raises(WrongDatabase, match="pass --allow-other-database") as e:
            into_other.restore("c1")
        assert e.value.exit_code == 2
        assert "unrelated" in str(fingerprint(other).tables)

        flip_byte(m.artifact_path)
        with pytest.raises(BackupCorrupt) as e2:
            manager.verify("c1")
        assert str(e2.value).startswith(f"backup c1: artifact {m.artifact_path} does not match "
                                        "its manifest (sha256 ")
        assert e2.value.exit_code == 4
        with pytest.raises(BackupCorrupt):
            manager.restore("c1")
        assert fingerprint(target) == damaged  # nothing was stopped, touched or restored
        assert manager.probe("c1") is not None  # same size: only a re-hash can tell


class TestSqlite(BackupMethodContract):
    method = "sqlite"
    created_tables_sql = "SELECT count(*) FROM sqlite_master WHERE name = 'audit_tmp'"

    @pytest.fixture
    def url(self, tmp_path: Path) -> str:
        url = f"sqlite:///{tmp_path / 'app.db'}"
        seed(url)
        return url

    @pytest.fixture
    def other_url(self, tmp_path: Path) -> str:
        return f"sqlite:///{tmp_path / 'other.db'}"


@pytest.mark.postgresql
class TestPgDump(BackupMethodContract):
    method = "pg_dump"

    @pytest.fixture
    def url(self, pg_url: str) -> str:
        seed(pg_url)
        return pg_url

    @pytest.fixture
    def other_url(self, pg_cluster: Any) -> str:
        return str(pg_cluster.url(pg_cluster.createdb("other")))

    def extra_damage(self, url: str) -> list[str]:
        # what only PostgreSQL has: schemas, triggers, large objects
        execute(url, "CREATE SCHEMA scratch", "CREATE TABLE scratch.t (x int)",
                "DROP TRIGGER orders_touch ON trading.orders", "SELECT lo_unlink(oid) FROM "
                "pg_largeobject_metadata", "SELECT lo_from_bytea(0, 'new')")
        return []


class TestPgBackRest(BackupMethodContract):
    """A point-in-time restore of the whole cluster to the backup's restore point: rows deleted
    after it come back. One archiving cluster per test process (conftest's
    ``pgbackrest_archiving``), shared with tests/test_backup_pgbackrest.py."""

    method = "pgbackrest"
    pytestmark: ClassVar[list[pytest.MarkDecorator]] = [*PGBACKREST_MARKS, pytest.mark.slow]

    @pytest.fixture
    def url(self, pgbackrest_archiving: tuple[Any, dict[str, Any]]) -> str:
        cluster, _ = pgbackrest_archiving
        url = str(cluster.url(cluster.createdb("app")))
        seed(url)
        return url

    @pytest.fixture
    def other_url(self, pgbackrest_archiving: tuple[Any, dict[str, Any]]) -> str:
        cluster, _ = pgbackrest_archiving
        return str(cluster.url(cluster.createdb("other")))

    @pytest.fixture
    def options(self, pgbackrest_archiving: tuple[Any, dict[str, Any]]) -> dict[str, Any]:
        return dict(pgbackrest_archiving[1])

    def extra_damage(self, url: str) -> list[str]:
        execute(url, "DELETE FROM events_log")  # after the restore point: must come back
        return ["events_log: 3 rows -> 0 rows"]

    def after_restore(self, manager: BackupManager, url: str, m: Manifest) -> None:
        assert m.stanza == "sk" and m.restore_point == "statekeeper-before-upgrade"
        assert m.pgbackrest_label and m.pgbackrest_type in ("full", "incr")
        assert m.restore_point_lsn
        assert scalar(url, "SELECT count(*) FROM events_log") == 3
        assert scalar(url, "SELECT pg_is_in_recovery()") is False
        # The cluster is usable and archiving again after the promotion: a second backup works.
        execute(url, "INSERT INTO settings VALUES ('after', 'restore')")
        m2 = manager.create("after-restore")
        assert m2.pgbackrest_label != m.pgbackrest_label
        assert m2.get_fingerprint().tables["settings"].rows == 3
