"""A whole-cluster backup method (pgBackRest) knows its scope: preflight refuses a ledger on the
target's cluster and other databases of it the operator has not acknowledged; a cluster-wide
lease keeps a second run on a database of the same cluster out while one may restore it; a
rollback never rewinds another database's completed upgrade silently. Real runs of the CLI on
the throwaway pgBackRest cluster of tests/test_backup_pgbackrest.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from statekeeper import command
from tests.test_backup_support import PGBACKREST_MARKS
from tests.upgrade_support import GOOD, SCENARIOS, Project, seed

pytestmark = PGBACKREST_MARKS


def databases(cluster: Any) -> list[str]:
    return cluster.psql(
        "SELECT datname FROM pg_database WHERE datallowconn AND NOT datistemplate").split()


def project(base: Path, cluster: Any, kwargs: dict[str, Any], db: str,
            migrations: dict[str, str], *, ledger_url: str, acknowledge: list[str]) -> Project:
    """A project on database ``db`` with the pgbackrest method; ``acknowledge``: the other
    databases of the cluster listed in [backup] cluster_databases."""
    base.mkdir(parents=True)
    (base / "migrations").mkdir()
    for name, text in migrations.items():
        (base / "migrations" / name).write_text(text)
    listed = ", ".join(f'"{d}"' for d in acknowledge)
    (base / "statekeeper.toml").write_text(
        f'[ledger]\nurl = "{ledger_url}"\nkey = "{base.parent / "key.pem"}"\n\n'
        f'[target]\nurl = "{cluster.url(db)}"\n\n[migrations]\ndir = "migrations"\n\n'
        f'[backup]\nmethod = "pgbackrest"\ndir = "backups"\nstanza = "{kwargs["stanza"]}"\n'
        f'pgbackrest_config = "{kwargs["pgbackrest_config"]}"\n'
        f'stop_command = "{kwargs["stop_command"]}"\n'
        f'start_command = "{kwargs["start_command"]}"\n'
        f"cluster_databases = [{listed}]\n"
    )
    p = Project(base, cluster.url(db), "postgresql")
    command.init(str(p.config), None, None, None, "migrations")
    command.migrate_tag(p.settings(), "v2.5")
    return p


def ids(migrations: dict[str, str]) -> list[str]:
    return sorted(name.removesuffix(".sql") for name in migrations)


def status(p: Project) -> Any:
    return command.status(p.settings())


def run_id(done: Any) -> str:
    """The run id of ``run <id>: <state>``, the last line of start's output."""
    return str(done.stdout.strip().splitlines()[-1].split()[1].rstrip(":"))


def two_databases(tmp_path: Path, cluster: Any, kwargs: dict[str, Any],
                  a_migrations: dict[str, str]) -> tuple[Project, Project]:
    """Databases a and b of one cluster, one SQLite ledger for both (the lease table is in
    it), every other database of the cluster acknowledged by each."""
    a, b = cluster.createdb("a"), cluster.createdb("b")
    for db in (a, b):
        seed("postgresql", cluster.url(db))
    ledger = f"sqlite:///{tmp_path / 'ledger.db'}"
    every = databases(cluster)
    pa = project(tmp_path / "a", cluster, kwargs, a, a_migrations, ledger_url=ledger,
                 acknowledge=[d for d in every if d != a])
    pb = project(tmp_path / "b", cluster, kwargs, b, GOOD, ledger_url=ledger,
                 acknowledge=[d for d in every if d != b])
    return pa, pb


def test_a_ledger_on_the_targets_cluster_is_refused_in_preflight(
    pgbackrest_archiving: tuple[Any, dict[str, Any]], tmp_path: Path
) -> None:
    cluster, kwargs = pgbackrest_archiving
    db = cluster.createdb("app")
    seed("postgresql", cluster.url(db))
    ledger_db = cluster.createdb("ledger")
    p = project(tmp_path / "app", cluster, kwargs, db, GOOD,
                ledger_url=cluster.sqlalchemy_url(ledger_db), acknowledge=[])
    sysid = cluster.psql("SELECT system_identifier FROM pg_control_system()")
    plan = p.cli("plan", "--to", "v2.6", check=True).stdout
    assert f"this rollback restores the whole cluster {sysid}: databases " in plan
    assert db in plan and ledger_db in plan
    r = p.cli("start", "--to", "v2.6")
    assert r.returncode != 0
    out = r.stdout + r.stderr
    assert "preflight failed" in out
    assert f"the ledger (postgresql+psycopg://postgres@127.0.0.1:{cluster.port}/{ledger_db}) " \
           f"lives on the target's cluster {sysid}" in out
    # and every other database not acknowledged is named, the ledger's among them
    assert "not in [backup] cluster_databases" in out and f"{ledger_db}" in out
    assert p.applied_ids() == []  # nothing ran, nothing was backed up
    assert not any((p.dir / "backups").glob("*/manifest.json"))


def test_a_second_run_on_the_cluster_is_refused_while_a_rollback_may_restore_it(
    pgbackrest_archiving: tuple[Any, dict[str, Any]], tmp_path: Path
) -> None:
    cluster, kwargs = pgbackrest_archiving
    a, b = two_databases(tmp_path, cluster, kwargs, SCENARIOS["restore"])
    # a's third migration fails; its rollback dies just before restoring the whole cluster
    crashed = a.cli("start", "--to", "v2.6", failpoint="restore.started")
    assert crashed.returncode == 137, crashed.stdout + crashed.stderr
    run_a = status(a).run_id
    refused = b.cli("start", "--to", "v2.6")
    assert refused.returncode == 5, refused.stdout + refused.stderr  # lock held
    assert "error: cluster " in refused.stderr and f"locked by run {run_a}" in refused.stderr
    assert f"statekeeper resume {run_a}" in refused.stderr
    assert command.history(b.settings()) == []  # b recorded no run
    assert [r.run_id for r in command.history(b.settings(), all_targets=True)] == [run_a]
    assert b.applied_ids() == []
    log = cluster.root / "server.log"
    seen = log.stat().st_size
    resumed = a.cli("resume", run_a)
    assert "rolled_back" in resumed.stdout, resumed.stdout + resumed.stderr
    # restored with the server up (hot_standby, a superuser): recovery paused at the restore
    # point, where the run took its lock again before it resumed replay and so promoted
    with log.open("rb") as f:
        f.seek(seen)
        said = f.read().decode("utf-8", "replace")
    assert "pausing at the end of recovery" in said, said[-2000:]
    assert said.index("pausing at the end of recovery") < said.index("archive recovery complete")
    done = b.cli("start", "--to", "v2.6")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "this rollback restores the whole cluster" in done.stdout
    assert b.applied_ids() == ids(GOOD)


def test_a_rollback_never_rewinds_a_later_completed_upgrade_of_the_cluster(
    pgbackrest_archiving: tuple[Any, dict[str, Any]], tmp_path: Path
) -> None:
    cluster, kwargs = pgbackrest_archiving
    irreversible = {**GOOD, "002_orders.sql": SCENARIOS["restore"]["002_orders.sql"]}
    a, b = two_databases(tmp_path, cluster, kwargs, irreversible)
    run_a = run_id(a.cli("start", "--to", "v2.6", check=True))
    run_b = run_id(b.cli("start", "--to", "v2.6", check=True))
    r = a.cli("rollback", run_a, "--restore")
    assert r.returncode == 2, r.stdout + r.stderr
    assert f"run {run_b} on " in r.stderr and "a database of the same cluster" in r.stderr
    assert b.applied_ids() == ids(GOOD)  # b was not rewound
    assert command.status(b.settings(), run_b).state == "completed"
    assert a.applied_ids() == ids(irreversible)
    other = b.cli("rollback", run_a, "--restore")  # a run is rolled back on its own target only
    assert other.returncode == 2 and f"run {run_a} upgraded " in other.stderr, other.stderr
    assert b.applied_ids() == ids(GOOD)

