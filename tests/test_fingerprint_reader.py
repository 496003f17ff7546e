"""The PostgreSQL fingerprint's fast reader (psql children in one exported snapshot) against the
connection reader, and the proof properties a restore relies on: a changed row, a swapped pair
of values, a duplicated, an added and a removed row each change the fingerprint; the backup's
recorded fingerprint is that of what its dump restores."""

from __future__ import annotations

import subprocess
from pathlib import Path

import psycopg
import pytest

from statekeeper.backups import BackupManager
from statekeeper.dialects import pg_fingerprint as pg_fingerprint_module
from statekeeper.dialects.pg_fingerprint import pg_fingerprint
from statekeeper.errors import TargetError
from statekeeper.fingerprint import Fingerprint, fingerprint
from statekeeper.targets import Target
from tests.pgcluster import PG_BIN, PgCluster
from tests.test_backup_support import execute, seed

pytestmark = pytest.mark.postgresql


@pytest.fixture(autouse=True)
def psql_for_every_table(monkeypatch: pytest.MonkeyPatch) -> None:
    """The seeded tables are small, which the connection reads itself: psql reads them here."""
    monkeypatch.setattr(pg_fingerprint_module, "_SMALL", 0)


def _read(url: str, target: Target | None) -> Fingerprint:
    conn = psycopg.connect(url)
    try:
        with conn.transaction():
            return pg_fingerprint(conn, target=target)
    finally:
        conn.close()


def test_psql_reader_gives_the_connection_readers_checksums(
    pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Same bytes, same checksums: fingerprints recorded before the fast reader still
    compare equal. Without psql the connection reader is used, with the same result."""
    t = seed(pg_url)
    execute(pg_url, "INSERT INTO users VALUES (9, E'tab\\there\\nnewline \\\\ é', NULL)")
    slow = _read(pg_url, None)
    fast = _read(pg_url, t)
    assert fast.to_dict() == slow.to_dict()
    assert fast.tables["users"].rows == 4
    monkeypatch.setenv("STATEKEEPER_PG_BIN", str(tmp_path))  # no psql there
    assert fingerprint(t) == slow


def test_a_failing_reader_is_one_clear_error(pg_url: str) -> None:
    t = seed(pg_url)
    conn = psycopg.connect(pg_url)
    try:
        with pytest.raises(TargetError, match=r"^fingerprint of table \S+: psql: "
                                              r"invalid snapshot identifier"):
            pg_fingerprint(conn, target=t, snapshot="00000003-0000001B-1")
    finally:
        conn.close()


def test_every_row_change_changes_it(pg_url: str) -> None:
    t = seed(pg_url)
    seen = {fingerprint(t).digest}
    for change in (
        "UPDATE positions SET qty = qty + 1 WHERE id = 5",  # a changed row
        # a swapped pair: each column holds the same values as before, in other rows
        "UPDATE users u SET name = o.name FROM users o "
        "WHERE (u.id, o.id) IN ((1, 2), (2, 1))",
        "INSERT INTO events_log VALUES ('t2', 'tick')",  # a duplicated row (no primary key)
        "INSERT INTO events_log VALUES ('t2', 'tick')",  # and its third copy
        "INSERT INTO users VALUES (7, 'eve', 'e@example.com')",  # an added row
        "DELETE FROM positions WHERE id = 7",  # a removed row
    ):
        execute(pg_url, change)
        digest = fingerprint(t).digest
        assert digest not in seen, change
        seen.add(digest)


def test_backup_fingerprint_is_what_the_dump_restores(
    pg_url: str, pg_cluster: PgCluster, tmp_path: Path
) -> None:
    t = seed(pg_url)
    m = BackupManager(t, "pg_dump", tmp_path / "b").create("fp1")
    execute(pg_url, "UPDATE positions SET qty = 0")  # after the backup: not in it
    other_url = pg_cluster.url(pg_cluster.createdb("restored"))
    subprocess.run([str(PG_BIN / "pg_restore"), "--no-owner", f"--dbname={other_url}",
                    str(m.artifact_path)], check=True, capture_output=True)
    assert fingerprint(Target.from_url(other_url)) == m.get_fingerprint()
    assert fingerprint(t) != m.get_fingerprint()
