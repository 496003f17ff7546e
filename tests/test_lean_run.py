"""A lean run (issue 15): one target connection per run, one ledger commit per step boundary,
and still a session per migration as far as the migration can tell."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.upgrade_support import make_project, seeded_db

_LOCKS = ("(SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' "
          "AND pid = pg_backend_pid() AND granted)")

MIGRATIONS = {
    # leaves session state behind: a search path, a role, a temporary table, a prepared
    # statement; a connection of its own per migration would never show it to the next one
    "001_leaky.sql": (
        "CREATE SCHEMA elsewhere;\n"
        "CREATE TABLE seen (n int, pid int, locks bigint);\n"
        f"INSERT INTO seen SELECT 1, pg_backend_pid(), {_LOCKS};\n"
        "SET search_path = elsewhere;\n"
        "SET statement_timeout = 1;\n"
        "CREATE TEMP TABLE scratch (x int);\n"
        "PREPARE q AS SELECT 1;\n"
        "-- statekeeper:down\nDROP TABLE public.seen; DROP SCHEMA elsewhere;\n"
    ),
    "002_after.sql": (
        "CREATE TEMP TABLE scratch (x int);\n"
        "PREPARE q AS SELECT 2;\n"
        "CREATE TABLE after_reset (x int);\n"
        "INSERT INTO after_reset SELECT count(*) FROM pg_sleep(0.01);\n"
        f"INSERT INTO seen SELECT 2, pg_backend_pid(), {_LOCKS};\n"
        "-- statekeeper:down\nDROP TABLE after_reset;\n"
    ),
}


@pytest.mark.usefixtures("pg_cluster")
def test_a_run_uses_one_session_reset_after_each_migration(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    url = seeded_db(tmp_path, "postgresql", "lean", request)
    proj = make_project(tmp_path / "proj", "postgresql", url, MIGRATIONS, backup=False)
    p = proj.cli("start", "--to", "v2.6")
    assert p.returncode == 0, p.stdout + p.stderr

    t = proj.target()
    conn = t.connect(autocommit=True)
    try:
        seen = conn.execute("SELECT n, pid, locks FROM seen ORDER BY n").fetchall()
        where = conn.execute("SELECT to_regclass('public.after_reset') IS NOT NULL, "
                             "to_regclass('elsewhere.after_reset') IS NULL").fetchone()
    finally:
        conn.close()
    # both migrations ran on one session, the one holding the target lock
    assert [r[0] for r in seen] == [1, 2]
    assert seen[0][1] == seen[1][1]
    assert [r[2] for r in seen] == [1, 1]
    # the second did not inherit the first's search path, timeout, temp table or statement
    assert where == (True, True)


def test_one_commit_per_step_boundary(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """Each step.started closes the append it is in (so it is sealed and durable before the
    step's effect), and a run's appends are its creation, one per step, and its end."""
    url = seeded_db(tmp_path, "sqlite", "app", request)
    migs = {"001_a.sql": "CREATE TABLE a (x int);\n", "002_b.sql": "CREATE TABLE b (x int);\n"}
    proj = make_project(tmp_path / "proj", "sqlite", url, migs, backup=False)
    p = proj.cli("start", "--to", "v2.6")
    assert p.returncode == 0, p.stdout + p.stderr

    from statekeeper.runner import STREAM_PREFIX

    with proj.settings().open_ledger(signing=False) as lg:
        events: list[Any] = [e for e in lg.read() if e.stream.startswith(STREAM_PREFIX)]
    started = [e for e in events if e.type == "step.started"]
    assert started and all(e.closes for e in started)
    appends = [e for e in events if e.closes]
    assert len(appends) == len(started) + 2
    assert appends[0].type == "lease.acquired"  # run.created with it
    assert events[-1].type == "lease.released" and events[-1].closes
