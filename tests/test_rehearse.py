"""`statekeeper rehearse`: the upgrade, its rollback and the proof on a clone, on a real
SQLite file and a real PostgreSQL database; production is compared before and after (its
fingerprint, changelog and tags, its ledger's runs), and `start --require-rehearsal` trusts
only a passing rehearsal of exactly this plan on a target that has not changed since."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from statekeeper import command
from tests.upgrade_support import GOOD, SCENARIOS, Project, make_project, seeded_db


def _project(tmp_path: Path, backend: str, request: pytest.FixtureRequest,
             migrations: dict[str, str]) -> Project:
    url = seeded_db(tmp_path, backend, "app", request)
    return make_project(tmp_path / "proj", backend, url, migrations)


def _production(proj: Project) -> tuple[Any, list[str], list[str]]:
    tags = [t.name for t in command.migrate_status(proj.settings())[1]]
    return proj.fingerprint(), proj.applied_ids(), tags


def _clones(proj: Project, request: pytest.FixtureRequest) -> list[str]:
    """What rehearsals left: clone databases on the server, scratch directories."""
    left = [p.name for p in (proj.dir / ".statekeeper" / "rehearsals").glob("*") if p.is_dir()]
    if proj.backend == "postgresql":
        cluster = request.getfixturevalue("pg_cluster")
        names = cluster.psql("SELECT string_agg(datname, ',') FROM pg_database WHERE datname "
                             "LIKE '%\\_\\_rehearse\\_%'")
        left += [n for n in names.split(",") if n]
    return left


def _rehearsal(proj: Project, *more: str) -> Any:
    """`rehearse --json` that passed: its result, the document validated against the schema."""
    import jsonschema

    doc = proj.cli_json("rehearse", "--to", "v2.6", *more)
    schema = json.loads((Path(__file__).parent.parent / "docs" / "result.schema.json").read_text())
    jsonschema.validate(doc, schema)
    assert doc["ok"] is True and doc["command"] == "rehearse"
    return doc["rehearsal"]


def _rehearsal_ops(proj: Project) -> list[Any]:
    from statekeeper.opreplay import Operation
    from statekeeper.ops import scan_ops

    with proj.settings().open_ledger(signing=False) as lg:
        return [o for o in scan_ops(lg) if isinstance(o, Operation) and o.op == "rehearse"]


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_failing_upgrade_fails_in_rehearsal_with_production_untouched(
        tmp_path: Path, backend: str, request: pytest.FixtureRequest) -> None:
    proj = _project(tmp_path, backend, request, SCENARIOS["revert"])
    before = _production(proj)
    r = proj.cli("rehearse", "--to", "v2.6", "--json")
    assert r.returncode == 1, r.stdout + r.stderr
    out = json.loads(r.stdout)["rehearsal"]
    assert out["passed"] is False and out["passes"]["forward"]["state"] == "rolled_back"
    failed = [s for s in out["passes"]["forward"]["steps"] if s["status"] == "failed"]
    assert failed[0]["name"] == "migrate:003_user_status"
    assert "003_user_status.sql:2:" in failed[0]["error"]  # the file and line, on real data
    assert r.stderr.startswith("error: the upgrade would fail: migrate:003_user_status failed")
    assert _production(proj) == before
    assert command.history(proj.settings()) == []  # no run, no lease on production
    [op] = _rehearsal_ops(proj)
    assert op.status == "failed" and op.args["plan_digest"] == out["plan_digest"]
    assert _clones(proj, request) == []
    assert command.ledger_verify(proj.settings()).events > 0
    refused = proj.cli("start", "--to", "v2.6", "--require-rehearsal")
    assert refused.returncode == 2
    assert refused.stderr == (f"error: --require-rehearsal: the last rehearsal of this plan, "
                              f"{op.op_id}, did not pass: run 'statekeeper rehearse --to v2.6' "
                              "first\n")


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_passing_rehearsal_lets_exactly_that_upgrade_start(
        tmp_path: Path, backend: str, request: pytest.FixtureRequest) -> None:
    proj = _project(tmp_path, backend, request, SCENARIOS["forward"])
    before = _production(proj)
    out = _rehearsal(proj)
    assert out["passed"] is True and out["lossy"] == []
    assert {k: p["state"] for k, p in out["passes"].items()} == {
        "forward": "completed", "rollback": "rolled_back", "again": "completed"}
    want = "copy" if backend == "sqlite" else "template"  # nothing else connected
    assert out["clone"]["method"] == want
    assert all(s["ms"] is not None for s in out["passes"]["forward"]["steps"])
    assert _production(proj) == before and command.history(proj.settings()) == []
    assert _clones(proj, request) == []

    mig = proj.dir / "migrations" / "001_bump_qty.sql"
    mig.write_text(GOOD["001_bump_qty.sql"].replace("1000", "2000"))
    r = proj.cli("start", "--to", "v2.6", "--require-rehearsal")
    assert r.returncode == 2 and "no rehearsal of this plan (these migration files" in r.stderr
    mig.write_text(GOOD["001_bump_qty.sql"])

    conn = proj.target().connect(autocommit=True)  # production changes after the rehearsal
    conn.execute("INSERT INTO settings (key, value) VALUES ('late', 'x')")
    if backend == "sqlite":
        conn.commit()
    r = proj.cli("start", "--to", "v2.6", "--require-rehearsal")
    assert r.returncode == 2, r.stdout + r.stderr
    assert "--require-rehearsal: the target changed since rehearsal " in r.stderr
    if backend == "postgresql":  # a session on production: the clone is restored from a dump
        again = _rehearsal(proj)
        assert again["clone"]["method"] == "restore" and again["passed"] is True
    else:
        proj.cli("rehearse", "--to", "v2.6", check=True)
    conn.close()
    done = proj.cli("start", "--to", "v2.6", "--require-rehearsal")
    assert done.returncode == 0, done.stdout + done.stderr


def test_a_down_part_that_loses_data_is_reported_lossy(tmp_path: Path,
                                                       request: pytest.FixtureRequest) -> None:
    # its up part zeroes a column its down part cannot give back
    lossy = {**GOOD, "002_orders.sql": "UPDATE positions SET qty = 0;\n" + GOOD["002_orders.sql"]}
    proj = _project(tmp_path, "sqlite", request, lossy)
    before = _production(proj)
    r = proj.cli("rehearse", "--to", "v2.6", "--json")
    assert r.returncode == 1, r.stdout + r.stderr
    out = json.loads(r.stdout)["rehearsal"]
    assert out["lossy"] == ["002_orders"]
    assert out["passes"]["rollback"]["state"] == "rolled_back"  # it ran, it just lost data
    assert "the rollback does not give back the database as it was (down parts of 002_orders)" \
        in r.stderr
    assert _production(proj) == before


def test_a_killed_rehearsal_leaves_production_untouched_and_its_clone_cleanable(
        tmp_path: Path, request: pytest.FixtureRequest) -> None:
    proj = _project(tmp_path, "postgresql", request, SCENARIOS["forward"])
    before = _production(proj)
    r = proj.cli("rehearse", "--to", "v2.6", failpoint="migrate.middle")
    assert r.returncode == 137, r.stdout + r.stderr
    assert _production(proj) == before and command.history(proj.settings()) == []
    left = _clones(proj, request)
    assert len(left) == 2 and any("__rehearse_" in n for n in left)  # scratch dir and clone
    cleaned = proj.cli("rehearse", "--clean", check=True)
    assert cleaned.stdout.count("removed ") == 2
    assert _clones(proj, request) == []
    assert _rehearsal(proj)["passed"] is True
    assert _production(proj) == before


def test_require_rehearsal_trusts_only_the_latest_rehearsal_of_these_checks(
        tmp_path: Path, request: pytest.FixtureRequest) -> None:
    proj = _project(tmp_path, "sqlite", request, SCENARIOS["forward"])
    assert _rehearsal(proj)["passed"] is True
    toml = proj.config.read_text()
    # a health check whose expected value changed is not the check that was rehearsed
    proj.config.write_text(toml.replace('expect = "3"', 'expect = "4"', 1))
    r = proj.cli("start", "--to", "v2.6", "--require-rehearsal")
    assert r.returncode == 2 and "no rehearsal of this plan (" in r.stderr, r.stderr
    # ... and it fails in rehearsal: that later failure outweighs the earlier pass
    assert proj.cli("rehearse", "--to", "v2.6").returncode == 1
    proj.config.write_text(toml)
    assert proj.cli("rehearse", "--to", "v2.6").returncode == 0
    failing = proj.dir / "migrations" / "003_user_status.sql"
    failing.write_text(SCENARIOS["revert"]["003_user_status.sql"])
    assert proj.cli("rehearse", "--to", "v2.6").returncode == 1
    failing.write_text(GOOD["003_user_status.sql"])
    assert proj.cli("start", "--to", "v2.6", "--require-rehearsal").returncode == 0


def test_a_rehearsal_leaves_other_checkouts_clones_alone(
        tmp_path: Path, pg_cluster: Any, request: pytest.FixtureRequest) -> None:
    """Two checkouts of one application rehearse the same database: one at a time on the
    server, and neither removes the other's (kept) clone."""
    url = seeded_db(tmp_path, "postgresql", "app", request)
    one = make_project(tmp_path / "one", "postgresql", url, SCENARIOS["forward"])
    two = make_project(tmp_path / "two", "postgresql", url, SCENARIOS["forward"], tag=None)
    kept = _rehearsal(one, "--keep")
    name = kept["clone"]["clone"].rsplit("/", 1)[1]
    assert _rehearsal(two)["passed"] is True
    assert pg_cluster.psql(f"SELECT count(*) FROM pg_database WHERE datname = '{name}'") == "1"
    held = _session(pg_cluster.url("postgres"))
    try:
        held.execute("SELECT pg_advisory_lock(hashtextextended(%s, 0))",
                     (f"statekeeper rehearse {url.rsplit('/', 1)[1]}",))
        r = two.cli("rehearse", "--to", "v2.6")
        assert r.returncode == 2 and "another rehearsal of " in r.stderr, r.stderr
    finally:
        held.close()
    assert "removed database " + name in one.cli("rehearse", "--clean", check=True).stdout


def _session(url: str) -> Any:
    from statekeeper.targets import Target

    return Target.from_url(url).connect(autocommit=True)
