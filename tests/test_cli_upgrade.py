"""The upgrade commands end to end against real targets (SQLite file, PostgreSQL database):
exit codes, the exact messages an operator reads, what the ledger records, and no secrets."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from cli.main import cli
from statekeeper import command
from statekeeper.fingerprint import diff
from tests.test_interrupts import wait_stopped
from tests.upgrade_support import GOOD, ROOT, SCENARIOS, Project, make_project, seed


def run(proj: Project, *args: str) -> Result:
    result = CliRunner(env={"STATEKEEPER_CONFIG": None, "STATEKEEPER_FAILPOINT": None}).invoke(
        cli, ["--config", str(proj.config), *args], prog_name="statekeeper"
    )
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"statekeeper {' '.join(args)} raised") from result.exception
    assert "Traceback" not in result.output
    return result


def one_error(result: Result, code: int) -> str:
    assert result.exit_code == code, (result.exit_code, result.output)
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.fixture(params=["sqlite", "postgresql"])
def target_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        (tmp_path / "app.db").touch()
        url = f"sqlite:///{tmp_path / 'app.db'}"
    else:
        cluster = request.getfixturevalue("pg_cluster")
        url = cluster.url(cluster.createdb("cli"))
    seed(request.param, url)
    return url


def project(tmp_path: Path, url: str, migrations: dict[str, str], **kw: Any) -> Project:
    backend = "sqlite" if url.startswith("sqlite") else "postgresql"
    return make_project(tmp_path / "proj", backend, url, migrations, **kw)


def test_start_completes_and_records_everything(tmp_path: Path, target_url: str) -> None:
    proj = project(tmp_path, target_url, SCENARIOS["forward"])
    r = run(proj, "start", "--to", "v2.6")
    assert r.exit_code == 0, r.output
    last = r.stdout.splitlines()[-1]
    assert last.startswith("run ") and last.endswith(": completed")
    assert "    ok    migrate:002_orders" in r.stdout

    st = json.loads(run(proj, "status", "--json").stdout)
    assert st["state"] == "completed" and st["from"] == "v2.5" and st["to"] == "v2.6"
    assert st["migrations_applied"] == ["001_bump_qty", "002_orders", "003_user_status"]
    assert st["last_step"]["name"] == "tag:v2.6"

    hist = json.loads(run(proj, "history", "--json").stdout)
    assert [(h["run_id"], h["state"]) for h in hist] == [(st["run_id"], "completed")]
    assert hist[0]["ended"] is not None

    # the ledger verifies against the checkpoint written at the terminal state
    cp = proj.dir / ".statekeeper" / "checkpoints" / f"{st['run_id']}.checkpoint"
    assert cp.exists()
    assert run(proj, "ledger", "verify", "--against", str(cp)).exit_code == 0

    # every side effect was announced before it ran and closed after
    settings = proj.settings()
    run_ = command.status(settings)
    kinds = [(s.name, s.status) for s in run_.steps]
    assert kinds[0] == ("preflight", "succeeded")
    assert ("backup", "succeeded") in kinds
    assert all(status == "succeeded" for _, status in kinds)
    backup = run_.backup
    assert backup is not None and len(backup["sha256"]) == 64 and backup["size"] > 0
    assert [t["to"] for t in run_.transitions] == [
        "preflight", "backing_up", "tagging", "migrating", "deploying", "verifying", "completed"
    ]
    from statekeeper.migrations import Migrator

    tags = [t.name for t in Migrator(proj.target(), proj.dir / "migrations").tags()]
    assert tags == ["v2.5", "v2.6"]


def test_failed_migration_rolls_back_to_the_same_fingerprint(tmp_path: Path,
                                                             target_url: str) -> None:
    proj = project(tmp_path, target_url, SCENARIOS["revert"])
    before = proj.fingerprint()
    r = run(proj, "start", "--to", "v2.6")
    assert r.exit_code == 1, r.output
    if proj.backend == "postgresql":
        assert 'column "no_such_column" does not exist' in r.stdout
    else:
        assert "no such column: no_such_column" in r.stdout
    assert "    ok    revert:002_orders" in r.stdout
    assert "    ok    compare: fingerprint equals the one before the upgrade" in r.stdout
    assert r.stdout.splitlines()[-1].split(": ", 1)[1].startswith("rolled_back (migrate:003")
    after = proj.fingerprint()
    assert after == before, diff(before, after)
    assert proj.applied_ids() == []


def test_irreversible_migration_is_undone_by_restoring_the_backup(tmp_path: Path,
                                                                  target_url: str) -> None:
    proj = project(tmp_path, target_url, SCENARIOS["restore"])
    before = proj.fingerprint()
    plan = run(proj, "plan", "--to", "v2.6")
    assert "002_orders" in plan.stdout and "IRREVERSIBLE" in plan.stdout
    r = run(proj, "start", "--to", "v2.6")
    assert r.exit_code == 1, r.output
    assert "    ok    restore" in r.stdout
    assert "revert:" not in r.stdout
    assert proj.fingerprint() == before
    assert proj.applied_ids() == []


def test_plan_lists_steps_and_checksums(tmp_path: Path, target_url: str) -> None:
    proj = project(tmp_path, target_url, SCENARIOS["forward"])
    p = json.loads(run(proj, "plan", "--to", "v2.6", "--json").stdout)
    assert p["from_version"] == "v2.5" and p["to_version"] == "v2.6"
    assert [m["id"] for m in p["migrations"]] == ["001_bump_qty", "002_orders", "003_user_status"]
    assert all(len(m["checksum"]) == 64 and m["reversible"] for m in p["migrations"])
    method = "sqlite" if proj.backend == "sqlite" else "pg_dump"
    assert p["steps"] == ["preflight", f"backup ({method})", "tag v2.5", "migrate 001_bump_qty",
                          "migrate 002_orders", "migrate 003_user_status", "health checks",
                          "tag v2.6"]
    assert command.history(proj.settings()) == []  # plan changes nothing


def test_rollback_of_a_completed_run_keeps_data_written_since(tmp_path: Path,
                                                              target_url: str) -> None:
    proj = project(tmp_path, target_url, SCENARIOS["forward"])
    before = proj.fingerprint()
    assert run(proj, "start", "--to", "v2.6").exit_code == 0
    run_id = json.loads(run(proj, "status", "--json").stdout)["run_id"]
    conn = proj.target().connect(autocommit=True)
    conn.execute("INSERT INTO users (id, email, name) VALUES (4, 'dee@example.com', 'Dee')")
    conn.close()
    r = run(proj, "rollback", run_id)
    assert r.exit_code == 0, r.output
    assert "    ok    compare: fingerprint equals the one before the upgrade" in r.stdout
    assert "restore" not in r.stdout
    assert r.stdout.splitlines()[-1] == f"run {run_id}: rolled_back"
    after = proj.fingerprint()
    assert after.schema == before.schema
    assert after.tables["users"].rows == 4  # Dee, who signed up after the upgrade, stays
    assert proj.applied_ids() == []
    assert [t.name for t in _tags(proj)] == ["v2.5"]
    r = run(proj, "rollback", run_id)
    assert one_error(r, 2) == (
        f"error: run {run_id} is rolled_back: only a completed run can be rolled back "
        "(an unfinished one: 'statekeeper resume RUN_ID --rollback')"
    )


def _tags(proj: Project) -> list[Any]:
    from statekeeper.migrations import Migrator

    return Migrator(proj.target(), proj.dir / "migrations").tags()


def test_rollback_over_an_irreversible_migration_needs_restore(tmp_path: Path,
                                                               target_url: str) -> None:
    migs = {k: v for k, v in SCENARIOS["restore"].items() if not k.startswith("003")}
    proj = project(tmp_path, target_url, migs)
    before = proj.fingerprint()
    assert run(proj, "start", "--to", "v2.6").exit_code == 0
    run_id = command.status(proj.settings()).run_id
    assert one_error(run(proj, "rollback", run_id), 2) == (
        f"error: run {run_id} applied 002_orders, which has no down part: undoing it means "
        "restoring the backup, which discards every change made since it was taken; pass "
        "--restore to accept that"
    )
    assert command.status(proj.settings()).state == "completed"  # nothing was done
    r = run(proj, "rollback", run_id, "--restore")
    assert r.exit_code == 0, r.output
    assert "    ok    restore" in r.stdout
    assert proj.fingerprint() == before


def test_second_start_while_a_run_is_active_exits_5(tmp_path: Path, target_url: str) -> None:
    proj = project(tmp_path, target_url, SCENARIOS["forward"])
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    # the first run stops itself (SIGSTOP) inside its second migration, alive and holding
    # everything it holds, for as long as the test needs, no longer
    env["STATEKEEPER_FAILPOINT"] = "migrate.started:2@stop"
    first = subprocess.Popen([sys.executable, "-m", "cli", "--config", str(proj.config), "start",
                              "--to", "v2.6"], env=env, stdout=subprocess.PIPE, text=True)
    try:
        wait_stopped(first)
        runs = command.history(proj.settings())
        assert runs and runs[0].state == "migrating", "the first run never got going"
        assert runs[0].open_step is not None and runs[0].open_step.kind == "migrate"
        r = run(proj, "start", "--to", "v2.6")
        msg = one_error(r, 5)
        assert msg.startswith(
            f"error: target is locked by run {runs[0].run_id} (host {socket.gethostname()}, "
            f"pid {first.pid}, since "
        ), msg
    finally:
        first.send_signal(signal.SIGCONT)
        out, _ = first.communicate(timeout=120)
    assert first.returncode == 0, out
    assert proj.applied_ids() == [n.removesuffix(".sql") for n in sorted(GOOD)]


def test_start_refuses_while_a_crashed_run_is_unfinished(tmp_path: Path, target_url: str) -> None:
    proj = project(tmp_path, target_url, SCENARIOS["forward"])
    crashed = proj.cli("start", "--to", "v2.6", failpoint="migrate.started:2")
    assert crashed.returncode == 137
    run_id = command.status(proj.settings()).run_id
    r = run(proj, "start", "--to", "v2.6")
    assert one_error(r, 5) == (
        f"error: run {run_id} on this target is unfinished (migrating): finish it with "
        f"'statekeeper resume {run_id}' or undo it with 'statekeeper resume {run_id} --rollback'"
    )
    r = run(proj, "resume", run_id, "--rollback")
    assert r.exit_code == 0, r.output  # ended as asked
    assert "took over the lease from dead pid" in r.stdout
    assert "    redo  migrate:002_orders (interrupted by a crash before it took effect)" in r.stdout
    assert proj.applied_ids() == []
    assert run(proj, "start", "--to", "v2.6").exit_code == 0


@pytest.mark.parametrize(("args", "message"), [
    (["start"], None),
    (["start", "--to", "v2.5"], "error: --to v2.5: the schema is already tagged v2.5"),
    (["resume"], "error: no unfinished run on this target to resume"),
    (["status", "nope"], "error: no run 'nope' in the ledger"),
    (["rollback", "nope"], "error: no run 'nope' in the ledger"),
    (["debug", "failpoints", "--bogus"], None),
])
def test_usage_errors_exit_2(tmp_path: Path, target_url: str, args: list[str],
                             message: str | None) -> None:
    proj = project(tmp_path, target_url, SCENARIOS["forward"])
    r = run(proj, *args)
    assert r.exit_code == 2, r.output
    if message is not None:
        assert one_error(r, 2) == message


def test_no_tag_to_upgrade_from(tmp_path: Path) -> None:
    (tmp_path / "app.db").touch()
    url = f"sqlite:///{tmp_path / 'app.db'}"
    seed("sqlite", url)
    proj = Project(tmp_path, url, "sqlite")
    (tmp_path / "migrations").mkdir()
    (tmp_path / "statekeeper.toml").write_text(
        f'[target]\nurl = "{url}"\n[migrations]\ndir = "migrations"\n')
    command.init(str(proj.config), None, None, None, "migrations")
    assert one_error(run(proj, "start", "--to", "v2"), 2) == (
        "error: the changelog has no tag to upgrade from: pass --from VERSION (or tag the "
        "current schema with 'statekeeper migrate tag VERSION')"
    )
    r = run(proj, "start", "--to", "v2", "--from", "v1")
    assert r.exit_code == 0, r.output


def test_bad_config_is_one_line_exit_2(tmp_path: Path) -> None:
    proj = Project(tmp_path, "sqlite:///x.db", "sqlite")
    (tmp_path / "statekeeper.toml").write_text('[target]\nurl = "mysql://x@h/db"\n')
    assert one_error(run(proj, "plan", "--to", "v2"), 2) == (
        f"error: {tmp_path / 'statekeeper.toml'}: [target] url 'mysql://x@h/db': unsupported "
        "scheme 'mysql' (use sqlite:///path or postgresql://user@host:port/db)"
    )
    (tmp_path / "statekeeper.toml").write_text('[target]\nurl = "sqlite:///app.db"\nmigrate = 1\n')
    assert one_error(run(proj, "plan", "--to", "v2"), 2).startswith(
        f"error: {tmp_path / 'statekeeper.toml'}: unknown key [target] migrate")


def test_illegal_history_is_an_integrity_error(tmp_path: Path, target_url: str) -> None:
    import ledger

    proj = project(tmp_path, target_url, SCENARIOS["forward"])
    assert run(proj, "start", "--to", "v2.6").exit_code == 0
    run_id = command.status(proj.settings()).run_id
    # a properly signed event that the machine does not allow: completed -> completed
    # (appended with the key through the library: `ledger append` refuses upgrade streams)
    s = proj.settings()
    lg = ledger.Ledger(s.ledger_url, signer=ledger.load_signer(s.key_path),
                       base_dir=s.config.base_dir)
    ev = lg.append(f"upgrade/{run_id}", ledger.NewEvent(
        "state.changed", {"trigger": "verified", "from": "completed", "to": "completed"}))[-1]
    lg.close()
    msg = one_error(run(proj, "status", run_id), 4)
    assert msg == (f"error: run {run_id} cannot be replayed: event #{ev.stream_seq} (seq "
                   f"{ev.seq}): transition 'verified' is not allowed from state 'completed'")


def test_passwords_never_reach_ledger_output_or_backups(tmp_path: Path, pg_cluster: Any) -> None:
    db = pg_cluster.createdb("secret")
    url = f"postgresql://postgres:s3cr3t-pw@127.0.0.1:{pg_cluster.port}/{db}"
    seed("postgresql", url)
    proj = project(tmp_path, url, SCENARIOS["revert"])
    r = run(proj, "start", "--to", "v2.6")
    assert r.exit_code == 1
    export = proj.dir / "all.jsonl"
    assert run(proj, "ledger", "export", "--out", str(export)).exit_code == 0
    seen = [r.output, export.read_text(), run(proj, "status", "--json").output,
            run(proj, "history", "--json").output]
    seen += [p.read_text() for p in (proj.dir / "backups").rglob("*.json")]
    for text in seen:
        assert "s3cr3t-pw" not in text
    assert "postgres:***@" in export.read_text()


def test_frozen_clock_pins_event_times_and_durations(tmp_path: Path) -> None:
    from freezegun import freeze_time

    (tmp_path / "app.db").touch()
    url = f"sqlite:///{tmp_path / 'app.db'}"
    seed("sqlite", url)
    proj = project(tmp_path, url, SCENARIOS["forward"])
    with freeze_time("2026-03-04 05:06:07.000008"):
        run_ = command.start(proj.settings(), "v2.6")
    assert run_.state == "completed"
    assert run_.created_at == "2026-03-04T05:06:07.000008Z"
    assert {s.started_at for s in run_.steps} == {"2026-03-04T05:06:07.000008Z"}
    assert {s.duration_ms for s in run_.steps} == {0}


LOSSY_001 = "UPDATE positions SET qty = qty + 1000;\n-- statekeeper:down\nSELECT 1;\n"


def test_down_parts_that_lose_data_fall_back_to_the_backup(tmp_path: Path,
                                                           target_url: str) -> None:
    proj = project(tmp_path, target_url, {**SCENARIOS["revert"], "001_bump_qty.sql": LOSSY_001})
    before = proj.fingerprint()
    r = run(proj, "start", "--to", "v2.6")
    assert r.exit_code == 1, r.output
    out = r.stdout
    assert "    ok    compare: fingerprint differs: positions" in out
    assert out.index("compare: fingerprint differs") < out.index("    ok    restore")
    # after the restore the proof is what the backup holds (equal to preflight here)
    assert "    ok    compare#2: fingerprint equals the backup's" in out
    assert proj.fingerprint() == before


def test_no_way_back_ends_failed_and_names_the_tables(tmp_path: Path, target_url: str) -> None:
    proj = project(tmp_path, target_url, {**SCENARIOS["revert"], "001_bump_qty.sql": LOSSY_001},
                   backup=False)
    r = run(proj, "start", "--to", "v2.6")
    assert r.exit_code == 3, r.output
    st = json.loads(run(proj, "status", "--json").stdout)
    assert st["state"] == "failed"
    assert st["failure"].startswith("database differs from before the upgrade: positions")
    human = run(proj, "status")
    assert human.exit_code == 0
    assert "reason: database differs from before the upgrade: positions" in human.stdout
    # a human fixes the data, then resume retries the rollback and it ends cleanly
    conn = proj.target().connect(autocommit=True)
    conn.execute("UPDATE positions SET qty = qty - 1000")
    conn.close()
    r = run(proj, "resume")
    assert r.exit_code == 1, r.output
    assert json.loads(run(proj, "status", "--json").stdout)["state"] == "rolled_back"
    # the target is free again: a new run starts (and fails the same way, nothing fixed)
    assert run(proj, "start", "--to", "v2.6").exit_code == 3
    assert [r.state for r in command.history(proj.settings())] == ["rolled_back", "failed"]


def test_start_refuses_while_a_run_awaits_a_human(tmp_path: Path) -> None:
    (tmp_path / "app.db").touch()
    url = f"sqlite:///{tmp_path / 'app.db'}"
    seed("sqlite", url)
    proj = project(tmp_path, url, {**SCENARIOS["revert"], "001_bump_qty.sql": LOSSY_001},
                   backup=False)
    assert run(proj, "start", "--to", "v2.6").exit_code == 3
    run_id = command.status(proj.settings()).run_id
    msg = one_error(run(proj, "start", "--to", "v2.6"), 3)
    assert msg.startswith(f"error: run {run_id} on this target failed and needs a human: "
                          "database differs from before the upgrade: positions")
    assert msg.endswith(f"fix what it names, then 'statekeeper resume {run_id}'")


NO_TX_001 = ("-- statekeeper:no-transaction\nUPDATE positions SET qty = qty + 1000;\n"
             "-- statekeeper:down\nUPDATE positions SET qty = qty - 1000;\n")


def test_interrupted_no_transaction_migration_is_never_rerun(tmp_path: Path,
                                                             target_url: str) -> None:
    proj = project(tmp_path, target_url, {**SCENARIOS["forward"], "001_bump_qty.sql": NO_TX_001})
    before = proj.fingerprint()
    crashed = proj.cli("start", "--to", "v2.6", failpoint="migrate.middle")
    assert crashed.returncode == 137
    r = run(proj, "resume")
    assert r.exit_code == 1, r.output  # rolled back: nobody can say how much of it ran
    assert ("    FAIL  migrate:001_bump_qty: interrupted; it runs outside a transaction, so its "
            "effect is unknown") in r.stdout
    assert "    ok    restore" in r.stdout
    after = proj.fingerprint()
    assert after == before, diff(before, after)  # not +1000 once, let alone twice


def test_a_failure_recorded_just_before_a_crash_is_not_retried(tmp_path: Path,
                                                               target_url: str) -> None:
    proj = project(tmp_path, target_url, SCENARIOS["revert"])
    # transitions: begin, preflight_passed, backed_up, tagged, then fail (the 5th)
    crashed = proj.cli("start", "--to", "v2.6", failpoint="transition.before:5")
    assert crashed.returncode == 137
    assert "    FAIL  migrate:003_user_status" in crashed.stdout
    r = run(proj, "resume")
    assert r.exit_code == 1, r.output
    assert "migrate:003" not in r.stdout.split("[migrating -> rolling_back]")[0]
    assert "  [migrating -> rolling_back]: migrate:003_user_status failed: " in r.stdout


def test_a_lease_left_by_a_process_that_died_before_its_run_began(tmp_path: Path) -> None:
    from statekeeper.lease import TABLE

    (tmp_path / "app.db").touch()
    url = f"sqlite:///{tmp_path / 'app.db'}"
    seed("sqlite", url)
    proj = project(tmp_path, url, SCENARIOS["forward"])
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    store = proj.settings().open_lease_store()
    with store.recorder.side_transaction() as tx:
        tx.execute(f"INSERT INTO {TABLE} (target, run_id, host, pid, token, acquired_at, "
                   "heartbeat_at) VALUES ({p}, {p}, {p}, {p}, {p}, {p}, {p})",
                   (proj.target().display, "20260101-000000-dead00", socket.gethostname(),
                    dead.stdout.strip(), "t", "x", "x"))
    store.dispose()
    r = run(proj, "start", "--to", "v2.6")
    assert r.exit_code == 0, r.output
    run_ = command.status(proj.settings())
    taken = [ls for ls in run_.leases if ls["type"] == "lease.taken_over"]
    assert taken and taken[0]["from_pid"] == int(dead.stdout)


def test_plan_and_validate_report_the_directory_problems(tmp_path: Path) -> None:
    (tmp_path / "app.db").touch()
    url = f"sqlite:///{tmp_path / 'app.db'}"
    seed("sqlite", url)
    proj = project(tmp_path, url, {**SCENARIOS["forward"], "3_again.sql": "SELECT 1;\n"})
    mig = proj.dir / "migrations"
    for args in (("plan", "--to", "v2.6"), ("migrate", "validate")):
        assert one_error(run(proj, *args), 2).startswith(
            "error: migrations 3_again and 003_user_status have the same version 3 (")
    (mig / "3_again.sql").rename(mig / "004_more.sql.orig")
    for args in (("plan", "--to", "v2.6"), ("migrate", "validate")):
        assert one_error(run(proj, *args), 2) == (
            f"error: {mig / '004_more.sql.orig'} is not a migration but looks like one: only "
            f"*.sql files directly in {mig} run (rename it to end in .sql to run it, or move "
            "it out of the directory)")


def test_a_directory_changed_after_the_run_was_planned_is_refused_at_preflight(
    tmp_path: Path
) -> None:
    (tmp_path / "app.db").touch()
    url = f"sqlite:///{tmp_path / 'app.db'}"
    seed("sqlite", url)
    proj = project(tmp_path, url, SCENARIOS["forward"])
    assert proj.cli("start", "--to", "v2.6", failpoint="preflight.before").returncode == 137
    (proj.dir / "migrations" / "004_late.sql").write_text("SELECT 1;\n")
    r = proj.cli("resume")
    assert ("the migrations directory changed since this run was planned: 004_late is "
            "pending but not in the plan (added since) (start a new run to apply it)"
            ) in r.stdout + r.stderr, r.stdout + r.stderr
    assert r.returncode == 1


def test_start_runs_exactly_the_saved_plan_or_nothing(tmp_path: Path, target_url: str) -> None:
    """The plan reviewed in a change ticket is the plan run: a migration added, edited or a
    saved plan tampered with between `plan --out` and `start --plan` is refused, nothing done."""
    proj = project(tmp_path, target_url, SCENARIOS["forward"])
    saved = tmp_path / "approved.json"
    shown = run(proj, "plan", "--to", "v2.6", "--out", str(saved))
    assert shown.exit_code == 0, shown.output
    doc = json.loads(saved.read_text())
    assert (saved.stat().st_mode & 0o777) == 0o600
    assert shown.stdout.splitlines()[-1] == f"plan sha256 {doc['digest']} (saved to {saved})"
    before = proj.fingerprint()

    mig = proj.dir / "migrations"
    (mig / "004_late.sql").write_text("SELECT 1;\n")
    edited = GOOD["001_bump_qty.sql"].replace("+ 1000", "+ 2000", 1)
    (mig / "001_bump_qty.sql").write_text(edited)
    line = one_error(run(proj, "start", "--to", "v2.6", "--plan", str(saved)), 2)
    assert line.startswith(f"error: the plan changed since {saved} was written (")
    assert "migration 004_late is new" in line
    assert "migration 001_bump_qty: its up part changed (sha256 " in line
    assert line.endswith("): review 'statekeeper plan' again; nothing was done")
    assert command.history(proj.settings()) == [] and proj.fingerprint() == before

    (mig / "004_late.sql").unlink()
    (mig / "001_bump_qty.sql").write_text(GOOD["001_bump_qty.sql"])
    doc["plan"]["to_version"] = "v9"  # the file, edited to approve something else
    forged = tmp_path / "forged.json"
    forged.write_text(json.dumps(doc))
    assert one_error(run(proj, "start", "--to", "v2.6", "--plan", str(forged)), 2) == (
        f"error: --plan {forged}: its digest does not match the plan it holds (edited after "
        "'statekeeper plan' wrote it)")
    assert one_error(run(proj, "start", "--to", "v2.6", "--plan", str(mig)), 2).startswith(
        f"error: --plan {mig}: ")

    done = run(proj, "start", "--to", "v2.6", "--plan", str(saved))
    assert done.exit_code == 0, done.output
    assert command.status(proj.settings()).plan.digest() == doc["digest"]


@pytest.mark.postgresql
def test_server_notices_are_kept_in_the_run_artifacts(tmp_path: Path, pg_cluster: Any) -> None:
    """A "relation already exists, skipping" NOTICE is often the real cause of a later
    failure: every NOTICE and WARNING a migration raised is kept (0600) beside the run, with
    the file's line, and the ledger records how many and the file's sha256."""
    import hashlib

    url = pg_cluster.url(pg_cluster.createdb("notices"))
    seed("postgresql", url)
    migs = {**SCENARIOS["forward"], "001_bump_qty.sql": (
        "CREATE TABLE IF NOT EXISTS users (id int);\n"
        "DO $$ BEGIN RAISE WARNING 'qty bumped for % rows', 4; END $$;\n"
        + GOOD["001_bump_qty.sql"])}
    proj = project(tmp_path, url, migs)
    r = run(proj, "start", "--to", "v2.6")
    assert r.exit_code == 0, r.output
    run_ = command.status(proj.settings())
    step = next(s for s in run_.steps if s.name == "migrate:001_bump_qty")
    assert step.result is not None and step.result["notices"] == 2
    kept = Path(step.result["notices_file"])
    assert kept == proj.dir / ".statekeeper" / "runs" / run_.run_id / "migrations" / \
        "001_bump_qty.notices"
    text = kept.read_text()
    mig = proj.dir / "migrations" / "001_bump_qty.sql"
    assert text == (f'{mig}:1: NOTICE:  relation "users" already exists, skipping\n'
                    f"{mig}:2: WARNING:  qty bumped for 4 rows\n")
    assert step.result["notices_sha256"] == hashlib.sha256(text.encode()).hexdigest()
    assert (kept.stat().st_mode & 0o777) == 0o600
    assert f"ok    migrate:001_bump_qty (2 server notices: {kept})" in r.stdout

    # a failing migration's notices are kept too: here the NOTICE says why the next
    # statement fails (the table it meant to create was there already, without the column)
    (proj.dir / "migrations" / "004_audit.sql").write_text(
        "CREATE TABLE IF NOT EXISTS orders (id int);\nSELECT audited FROM orders;\n")
    failed = run(proj, "start", "--to", "v2.7")
    assert failed.exit_code == 1, failed.output
    second = command.status(proj.settings())
    kept = proj.dir / ".statekeeper" / "runs" / second.run_id / "migrations" / "004_audit.notices"
    assert kept.read_text() == (f'{proj.dir / "migrations" / "004_audit.sql"}:1: NOTICE:  '
                                'relation "orders" already exists, skipping\n')


def test_a_saved_plan_is_refused_when_any_byte_of_its_plan_was_edited(tmp_path: Path) -> None:
    """A reviewer reads the file: an edit that the parser would tolerate (a key it ignores,
    a field it reads leniently) is an edit all the same."""
    (tmp_path / "app.db").touch()
    url = f"sqlite:///{tmp_path / 'app.db'}"
    seed("sqlite", url)
    proj = project(tmp_path, url, SCENARIOS["forward"])
    saved = tmp_path / "plan.json"
    assert run(proj, "plan", "--to", "v2.6", "--out", str(saved)).exit_code == 0
    doc = json.loads(saved.read_text())
    edits = [("irreversible", ["001_bump_qty"]), ("looks_harmless", True)]
    for key, value in edits:
        forged = tmp_path / f"{key}.json"
        forged.write_text(json.dumps({**doc, "plan": {**doc["plan"], key: value}}))
        assert one_error(run(proj, "start", "--to", "v2.6", "--plan", str(forged)), 2).endswith(
            "its digest does not match the plan it holds (edited after 'statekeeper plan' "
            "wrote it)")
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    assert one_error(run(proj, "start", "--to", "v2.6", "--plan", str(deep)), 2) == (
        f"error: --plan {deep}: not a saved plan (nested too deeply)")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    assert one_error(run(proj, "start", "--to", "v2.6", "--plan", str(fifo)), 2) == (
        f"error: --plan {fifo}: not a regular file")
    # the same files planned from another checkout are the same plan
    # (the application's name defaults to the directory's: the same here)
    other = make_project(tmp_path / "elsewhere" / "proj", "sqlite", url, SCENARIOS["forward"],
                         tag=None)
    assert run(other, "plan", "--to", "v2.6", "--json").exit_code == 0
    there = json.loads(run(other, "plan", "--to", "v2.6", "--json").stdout)
    assert there["digest"] == doc["digest"] and there["config"] != doc["plan"]["config"]
    assert command.history(proj.settings()) == []


def test_a_sqlite_ledger_never_loads_sqlalchemy(tmp_path: Path, target_url: str) -> None:
    """SQLAlchemy is a PostgreSQL ledger's: importing it cost a run with a SQLite ledger ~0.3 s
    of ~1 s (benchmarks/upgrade_bench.py), on either target. Each command is the real CLI in
    its own process, whose import log (PYTHONPROFILEIMPORTTIME) names every module it loaded."""
    proj = project(tmp_path, target_url, SCENARIOS["forward"])
    env = {"PYTHONPROFILEIMPORTTIME": "1"}
    upgraded = False
    for args in (("init",), ("start", "--to", "v2.6"), ("start", "--to", "v2.6"), ("status",),
                 ("history", "--limit", "5"), ("resume",), ("plan", "--to", "v2.6"),
                 ("ledger", "verify")):
        p = proj.cli(*args, env=env)
        assert "import time:" in p.stderr  # the log is there: an absence below means something
        if args == ("start", "--to", "v2.6") and not upgraded:
            # the whole upgrade ran (lease, run index, ledger appends), not an early refusal
            assert p.returncode == 0 and p.stdout.rstrip().endswith(": completed"), p.stdout
            upgraded = True
        loaded = [ln for ln in p.stderr.splitlines() if "sqlalchemy" in ln]
        assert not loaded, (args, p.returncode, loaded[:3])


def test_status_and_history_show_the_configured_targets_runs_in_a_shared_ledger(
        tmp_path: Path) -> None:
    """Eight projects may share one ledger: 'status' in project A after B's run must still
    say how A's upgrade ended, and 'history' list A's runs; --all-targets shows them all."""
    ledger = f"sqlite:///{tmp_path / 'shared' / 'ledger.db'}"
    key = str(tmp_path / "shared" / "key.pem")
    (tmp_path / "shared").mkdir(mode=0o700)
    projs = {}
    for name, migs in (("a", SCENARIOS["revert"]), ("b", SCENARIOS["forward"]),
                       ("c", SCENARIOS["forward"])):
        (tmp_path / f"{name}.db").touch()
        url = f"sqlite:///{tmp_path / f'{name}.db'}"
        seed("sqlite", url)
        projs[name] = make_project(tmp_path / name, "sqlite", url, migs, ledger_url=ledger,
                                   key=key)
    a, b, c = projs["a"], projs["b"], projs["c"]
    failed = a.cli("start", "--to", "v2.6")
    assert failed.returncode != 0
    assert b.cli("start", "--to", "v2.6").returncode == 0
    run_a = json.loads(a.cli("status", "--json").stdout)
    run_b = json.loads(b.cli("status", "--json").stdout)
    assert run_a["state"] == "rolled_back" and run_a["target"] == a.target().display
    assert run_b["state"] == "completed" and run_b["target"] == b.target().display
    assert json.loads(a.cli("status", "--all-targets", "--json").stdout)["run_id"] == \
        run_b["run_id"]
    for args in ((), ("--limit", "1"), ("--limit", "5")):
        listed = json.loads(a.cli("history", "--json", *args).stdout)
        assert [r["run_id"] for r in listed] == [run_a["run_id"]], args
    both = json.loads(a.cli("history", "--json", "--all-targets").stdout)
    assert [r["run_id"] for r in both] == [run_a["run_id"], run_b["run_id"]]
    table = a.cli("history", "--all-targets").stdout.splitlines()
    assert table[0].endswith(" target") and table[2].endswith(str(tmp_path / "b.db"))
    none = c.cli("status")
    assert none.returncode == 0
    assert none.stdout == ("no runs yet on this target (the ledger has other targets' runs: "
                           "--all-targets)\n")
    assert c.cli("history").stdout == none.stdout
    assert json.loads(c.cli("status", "--json").stdout)["run_id"] is None
