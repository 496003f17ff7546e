"""`statekeeper migrate baseline` (issue 12): a database whose first migrations were applied
by hand is given a trustworthy starting point. The real CLI, on SQLite and PostgreSQL."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from cli.main import cli
from statekeeper.ops import scan_ops
from tests.upgrade_support import GOOD, ROOT, Project, make_project, seeded_db

FIRST_TWO = {k: GOOD[k] for k in ("001_bump_qty.sql", "002_orders.sql")}


@pytest.fixture
def by_hand(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> Project:
    """A v2.5 database the user built with psql: 001 and 002 applied outside statekeeper
    (neither is idempotent: running one again changes the data or fails), an empty
    changelog, and three migration files."""
    url = seeded_db(tmp_path, backend, "app", request)
    p = make_project(tmp_path / "p", backend, url, GOOD, tag=None)
    p.apply_sql_directly(FIRST_TWO)
    return p


def sk(p: Project, *args: str, code: int | None = 0) -> Result:
    """The CLI in this process (a child costs ~0.5 s of start-up per command)."""
    r = CliRunner().invoke(cli, ["--config", str(p.config), *args])
    assert code is None or r.exit_code == code, r.output
    return r


def _ops(p: Project) -> list[Any]:
    with contextlib.closing(p.settings().open_ledger(signing=False)) as lg:
        return [op for op in scan_ops(lg) if op.op == "migrate.baseline"]


def test_baseline_then_start_applies_only_the_later_migrations(by_hand: Project) -> None:
    p = by_hand
    before = p.fingerprint()
    r = sk(p, "migrate", "baseline", "--tag", "v2.5", "--through", "002_orders",
           "--reason", "adopting statekeeper")
    assert "2 migrations recorded as applied, none run" in r.stdout
    assert p.applied_ids() == ["001_bump_qty", "002_orders"]
    assert p.fingerprint().digest == before.digest  # no SQL ran

    (op,) = _ops(p)
    (step,) = op.steps
    assert (op.status, op.reason, op.args["force"]) == ("succeeded", "adopting statekeeper",
                                                       False)
    assert step.result["fingerprint_digest"] == before.digest
    files = {m.id: m for m in _files(p)}
    assert [(m["migration"], m["checksum"], m["file_sha256"]) for m in step.args["migrations"]] \
        == [(i, files[i].checksum, files[i].file_sha256) for i in ("001_bump_qty", "002_orders")]

    run = json.loads(sk(p, "plan", "--to", "v2.6", "--json").stdout)
    assert run["from_version"] == "v2.5"
    assert [m["id"] for m in run["migrations"]] == ["003_user_status"]
    sk(p, "start", "--to", "v2.6")
    assert p.applied_ids() == ["001_bump_qty", "002_orders", "003_user_status"]

    sk(p, "ledger", "verify")
    out = p.dir / "report.json"
    sk(p, "report", "--format", "json", "--out", str(out))
    doc = json.loads(out.read_text())
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads((ROOT / "docs" / "report.schema.json").read_text())
    jsonschema.Draft202012Validator(schema).validate(doc)
    entry = next(e for e in doc["entries"] if e.get("op") == "migrate.baseline")
    assert [(m["migration"], m["direction"]) for m in entry["migrations"]] == [
        ("001_bump_qty", "baselined"), ("002_orders", "baselined")]
    assert before.digest[:16] in entry["steps"][0]["detail"]


def _files(p: Project) -> list[Any]:
    from statekeeper.migrations import load_migrations

    return load_migrations(p.dir / "migrations", p.backend)


def test_refused_without_force_and_force_is_recorded(by_hand: Project) -> None:
    p = by_hand
    bad = sk(p, "migrate", "baseline", "--tag", "v2.5", "--through", "002_order", code=2)
    assert (bad.exit_code, bad.stderr.count("\n")) == (2, 1)
    assert "--through 002_order: no migration '002_order'" in bad.stderr

    sk(p, "migrate", "baseline", "--tag", "v2.4", "--through", "001_bump_qty")
    again = sk(p, "migrate", "baseline", "--tag", "v2.5", "--through", "002_orders", code=2)
    assert (again.exit_code, again.stderr.count("\n")) == (2, 1)
    assert "already has entries" in again.stderr and "--force" in again.stderr
    assert p.applied_ids() == ["001_bump_qty"] and len(_ops(p)) == 1  # nothing written

    sk(p, "migrate", "baseline", "--tag", "v2.5", "--through", "002_orders", "--force",
       "--ticket", "CHG-12")
    assert p.applied_ids() == ["001_bump_qty", "002_orders"]
    _first, forced = _ops(p)
    assert (forced.ticket, forced.args["force"], forced.steps[0].args["written"]) == (
        "CHG-12", True, ["002_orders"])
    # the 001 row agreed with the files and stays; nothing was replaced
    assert "replaced" not in forced.steps[0].args

    # a forced baseline that moves the starting point back replaces what disagrees, and says so
    sk(p, "migrate", "baseline", "--tag", "v2.4b", "--through", "001_bump_qty", "--force")
    *_, back = _ops(p)
    replaced = back.steps[0].args["replaced"]
    assert [r["migration"] for r in replaced["migrations"]] == ["002_orders"]
    assert [t["tag"] for t in replaced["tags"]] == ["v2.5"]
    assert p.applied_ids() == ["001_bump_qty"]
    sk(p, "ledger", "verify")
