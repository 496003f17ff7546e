"""The multi-host model of docs/operations.md (issue 12): one shared PostgreSQL ledger, one
lease per target. A host that dies mid-upgrade keeps its lease while its heartbeat is fresh
(another host is refused, exit 5, naming it); once the heartbeat is older than 60 s another
host's ``resume --rollback`` takes the lease over (recorded) and rolls the run back; a host
whose configuration names the target differently is refused (exit 2)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from click.testing import CliRunner

from cli.main import cli
from statekeeper import clock, command
from statekeeper.failpoints import EXIT_CODE
from tests.pgcluster import PgCluster
from tests.upgrade_support import GOOD, Project, make_project, seed


def _sk(p: Project, *args: str) -> tuple[int, str]:
    r = CliRunner().invoke(cli, ["--config", str(p.config), *args])
    return r.exit_code, r.stderr


def test_a_dead_host_s_run_is_rolled_back_from_another_host(
    pg_cluster: PgCluster, tmp_path: Path
) -> None:
    ledger_db = pg_cluster.createdb("ledger")
    ledger_url = pg_cluster.sqlalchemy_url(ledger_db)
    target = pg_cluster.url(pg_cluster.createdb("app"))
    seed("postgresql", target)
    key = str(tmp_path / "key.pem")
    app1 = make_project(tmp_path / "app1", "postgresql", target, GOOD, backup=False,
                        ledger_url=ledger_url, key=key)
    app2 = make_project(tmp_path / "app2", "postgresql", target, GOOD, backup=False,
                        ledger_url=ledger_url, key=key, tag=None)  # same target, tagged once

    crashed = app1.cli("start", "--to", "v2.6", failpoint="migrate.done:1")
    assert crashed.returncode == EXIT_CODE, crashed.stderr
    (run,) = command.history(app1.settings())

    def lease(host: str, age_s: int) -> None:
        beat = clock.stamp(clock.now() - timedelta(seconds=age_s))
        pg_cluster.psql(f"UPDATE statekeeper_leases SET host = '{host}', "
                        f"heartbeat_at = '{beat}'", db=ledger_db)

    # app1 "is" another machine now, its heartbeat 5 s old: it may be alive, so app2 waits
    lease("app1.example.com", 5)
    code, err = _sk(app2, "resume", run.run_id, "--rollback")
    assert (code, err) == (5, f"error: target is locked by run {run.run_id} (host "
                              f"app1.example.com, pid {_pid(app2)}, since {_since(app2)})\n")
    # another spelling of the target is another target: refused before any lease is touched
    other = app2.config.read_text().replace("127.0.0.1", "localhost")
    (app2.dir / "other.toml").write_text(other)
    r = CliRunner().invoke(cli, ["--config", str(app2.dir / "other.toml"), "resume", run.run_id])
    assert r.exit_code == 2 and f"run {run.run_id} upgraded " in r.stderr, r.stderr

    lease("app1.example.com", 61)  # no heartbeat for over a minute: dead
    code, err = _sk(app2, "resume", run.run_id, "--rollback")
    assert code == 0, err
    done = command.status(app2.settings(), run.run_id)
    assert done.state == "rolled_back" and app2.applied_ids() == []
    (taken,) = [ls for ls in done.leases if ls["type"] == "lease.taken_over"]
    assert taken["from_host"] == "app1.example.com"
    assert taken["reason"].startswith("holder heartbeat expired (on another host")
    assert _sk(app2, "ledger", "verify")[0] == 0


def _row(p: Project) -> tuple[str, str]:
    store = p.settings().open_lease_store()
    try:
        h = store.holder(p.target().display)
        assert h is not None
        return str(h.pid), h.acquired_at
    finally:
        store.dispose()


def _pid(p: Project) -> str:
    return _row(p)[0]


def _since(p: Project) -> str:
    return _row(p)[1]
