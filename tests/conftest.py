"""Shared fixtures: a throwaway PostgreSQL cluster and backend-parametrized ledgers."""

from __future__ import annotations

import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.pgcluster import PG_BIN, PgCluster

HAVE_PG = (PG_BIN / "initdb").exists()


def _bytecode_cache_for_children() -> None:
    """Hundreds of tests run the real CLI in a child process. Under PYTHONDONTWRITEBYTECODE
    (set in the CI image) each child compiled the whole package from source again (~0.15 s of
    CPU each); the children share one bytecode cache instead, outside the source tree."""
    cache = Path(tempfile.gettempdir()) / f"statekeeper-tests-pycache-{os.getuid()}"
    try:
        cache.mkdir(mode=0o700, exist_ok=True)
        st = cache.lstat()
    except OSError:
        return
    # another user's directory (or a symlink) in a shared /tmp would feed us its bytecode
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o022:
        return
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    os.environ.setdefault("PYTHONPYCACHEPREFIX", str(cache))


_bytecode_cache_for_children()


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgCluster]:
    """One cluster for the session; each test takes its own database from it."""
    if not HAVE_PG:
        pytest.fail(f"PostgreSQL binaries not found in {PG_BIN} (set STATEKEEPER_PG_BIN)")
    cluster = PgCluster().start()
    try:
        yield cluster
    finally:
        cluster.destroy()


@pytest.fixture(scope="session")
def pgbackrest_archiving() -> Iterator[tuple[PgCluster, dict[str, object]]]:
    """One cluster archiving into a pgBackRest repository for the session, shared by the
    backup contract and tests/test_backup_pgbackrest.py: (cluster, BackupManager keywords)."""
    from tests.test_backup_support import pgbackrest_cluster

    cluster, _config, kwargs = pgbackrest_cluster()
    try:
        yield cluster, kwargs
    finally:
        cluster.destroy()


@pytest.fixture
def pg_url(pg_cluster: PgCluster) -> str:
    """A fresh, empty PostgreSQL database (libpq-style URL)."""
    return pg_cluster.url(pg_cluster.createdb("t"))


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def db_url(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    """An empty database URL on each backend: a SQLite file or a fresh PostgreSQL database;
    ``sqlite-layout1``: an empty SQLite ledger as made before issue 15 (a seal table)."""
    if backend.startswith("sqlite"):
        if backend == "sqlite-layout1":
            from tests.test_ledger_support import make_sqlite_layout_1

            make_sqlite_layout_1(tmp_path / "ledger.db")
        return f"sqlite:///{tmp_path / 'ledger.db'}"
    cluster: PgCluster = request.getfixturevalue("pg_cluster")
    return cluster.url(cluster.createdb("ledger"))


@pytest.fixture
def signer(tmp_path: Path):  # type: ignore[no-untyped-def]
    import ledger

    return ledger.generate_key_file(tmp_path / "signing.pem")


@pytest.fixture
def ledger_db(db_url: str, signer):  # type: ignore[no-untyped-def]
    import ledger

    lg = ledger.Ledger(db_url, signer=signer)
    yield lg
    lg.close()




# The suite's longest tests, longest first (pytest --durations on 2 cores). With pytest-xdist a
# long test drawn last keeps one worker busy while the other has nothing left to do, so these
# start first, then the tests marked slow, then the rest in the order collected. Only the order
# changes: a stale entry costs time, never coverage.
LONGEST_FIRST = (
    "tests/test_migrations_liquibase.py::test_killed_liquibase",
    "tests/test_migrations_liquibase.py::test_baseline",
    "tests/test_ansible_rollout.py::",
    "tests/test_config_fuzz.py::test_random_documents",
    "tests/test_cluster_scope.py::",
    "tests/test_docs_tutorial.py::",
    "tests/test_config_urls.py::",
    "tests/test_restore_server_down.py::",
    "tests/test_backup_contract.py::TestPgBackRest",
    "tests/test_backup_pgbackrest.py::",
    "tests/test_file_modes.py::test_a_whole_upgrade",
    "tests/test_rehearse.py::",
    "tests/test_crash_matrix.py::test_sigkill_at_random_instants",
    "tests/test_migrations_liquibase.py::",
    "tests/test_config_schema.py::test_each_key_changes_behaviour[backup.cluster_databases]",
)


@pytest.hookimpl(trylast=True)  # after pytest's own grouping by fixture
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        for i, prefix in enumerate(LONGEST_FIRST):
            if item.nodeid.startswith(prefix):
                return i
        return len(LONGEST_FIRST) + (0 if item.get_closest_marker("slow") else 1)

    items.sort(key=rank)  # stable: the collected order within a rank
