"""The run index (issue 15): start's busy check and resume's decision read only the runs they
need, and an index edited by hand is never believed, on SQLite and PostgreSQL ledgers."""

from __future__ import annotations

import json
from pathlib import Path

from statekeeper import command
from tests.test_cli_upgrade import one_error, run
from tests.test_ledger_support import RawDB
from tests.upgrade_support import GOOD, Project, make_project, seed


def _project(tmp_path: Path, ledger_url: str) -> Project:
    (tmp_path / "app.db").touch()
    target = f"sqlite:///{tmp_path / 'app.db'}"
    seed("sqlite", target)
    return make_project(tmp_path / "proj", "sqlite", target, dict(GOOD), backup=False,
                        ledger_url=ledger_url)


def _refused_as_unfinished(proj: Project, run_id: str) -> None:
    msg = one_error(run(proj, "start", "--to", "v2.6"), 5)
    assert msg.startswith(f"error: run {run_id} on this target is unfinished (migrating)"), msg


def _summary(db_url: str) -> tuple[int, str]:
    with RawDB(db_url) as db:
        rows = db.execute("SELECT upto, body FROM statekeeper_run_summary")
    assert len(rows) == 1
    return int(rows[0][0]), str(rows[0][1])


def test_an_edited_or_deleted_index_row_never_hides_an_unfinished_run(
    tmp_path: Path, db_url: str
) -> None:
    proj = _project(tmp_path, db_url)
    assert proj.cli("start", "--to", "v2.6", failpoint="migrate.started:2").returncode == 137
    run_id = command.status(proj.settings()).run_id
    _refused_as_unfinished(proj, run_id)  # builds the index and its summary
    assert [(r[0], r[4]) for r in json.loads(_summary(db_url)[1])] == [(run_id, "migrating")]
    with RawDB(db_url) as db:  # the summary edited to name no unsettled run: its MAC fails
        db.execute("UPDATE statekeeper_run_summary SET body = '[]'")
    _refused_as_unfinished(proj, run_id)
    assert run_id in _summary(db_url)[1]  # derived again from the per-run rows
    with RawDB(db_url) as db:  # the summary gone and the run's row edited: derived again
        db.execute("DELETE FROM statekeeper_run_summary")
        db.execute("UPDATE statekeeper_run_index SET state = 'completed' WHERE run_id = ?",
                   [run_id])
    _refused_as_unfinished(proj, run_id)
    with RawDB(db_url) as db:
        assert db.scalar("SELECT state FROM statekeeper_run_index WHERE run_id = ?",
                         [run_id]) == "migrating"
        db.execute("DELETE FROM statekeeper_run_summary")
        db.execute("DELETE FROM statekeeper_run_index")
    _refused_as_unfinished(proj, run_id)  # which runs exist comes from the ledger
    with RawDB(db_url) as db:  # a mark raised past the head would skip events: not trusted
        db.execute("DELETE FROM statekeeper_run_summary")
        db.execute("UPDATE statekeeper_run_index SET created_seq = 1000000 WHERE run_id = ''")
    _refused_as_unfinished(proj, run_id)
    # resume decides on the same run, finishes it, and the summary follows the ledger
    r = run(proj, "resume")
    assert r.exit_code == 0, r.output
    assert command.status(proj.settings()).state == "completed"
    assert one_error(run(proj, "start", "--to", "v2.6"), 2) == (
        "error: --to v2.6: the schema is already tagged v2.6")
    assert _summary(db_url)[1] == "[]"
    with RawDB(db_url) as db:
        assert db.scalar("SELECT state FROM statekeeper_run_index WHERE run_id = ?",
                         [run_id]) == "completed"
        genuine_old = db.execute("SELECT name, upto, hash, body, mac FROM statekeeper_run_summary")
    # A genuine summary of an earlier head, put back after a run became unsettled, is caught
    # up from its own seq: the run is still found.
    assert proj.cli("rollback", run_id, failpoint="revert.started:1").returncode == 137
    with RawDB(db_url) as db:
        db.execute("DELETE FROM statekeeper_run_summary")
        db.execute("INSERT INTO statekeeper_run_summary (name, upto, hash, body, mac) "
                   "VALUES (?, ?, ?, ?, ?)", list(genuine_old[0]))
    msg = one_error(run(proj, "start", "--to", "v2.6"), 5)
    assert msg.startswith(f"error: run {run_id} on this target is unfinished"), msg


def test_history_limit_and_status_read_the_latest_runs(tmp_path: Path, db_url: str) -> None:
    proj = _project(tmp_path, db_url)
    assert run(proj, "start", "--to", "v2.6").exit_code == 0
    first = command.status(proj.settings()).run_id
    assert run(proj, "rollback", first).exit_code == 0
    assert run(proj, "start", "--to", "v2.6").exit_code == 0
    second = command.status(proj.settings()).run_id
    assert second != first
    r = run(proj, "history", "--limit", "1", "--json")
    assert [x["run_id"] for x in json.loads(r.stdout)] == [second]
    r = run(proj, "history", "--limit", "5", "--json")
    assert [x["run_id"] for x in json.loads(r.stdout)] == [first, second]
    r = run(proj, "history", "--limit", "0")
    assert r.exit_code == 2 and "'--limit': 0 is not in the range x>=1" in r.stderr
