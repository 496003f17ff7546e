"""The runner holds without trusting what it reads: real SQLite files and PostgreSQL databases,
real `statekeeper` processes killed at failpoints, files swapped and directories broken under
them, and events forged with the key straight through the ledger library.

What each test attacks:
- the final tag names a schema that lacks a planned migration (changelog row gone or edited);
- a restore of an older dump swapped in together with its own manifest (a row would be lost);
- `--to` / `--from` that are not tag names, or `--from` naming another schema state;
- a rollback leaving behind the tags its run made (no migration took them away);
- a backup directory that is unwritable, a file, or gone: a step failure, never a stuck run;
- one run's unreplayable stream must not stop history/status/start for the other targets;
- `resume` finishing an operator's `rollback` exits 0, as `rollback` does.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from cli.main import cli
from statekeeper import command
from statekeeper.fingerprint import diff
from tests.upgrade_support import SCENARIOS, Project, make_project, seed, seeded_db

SETPRIV = shutil.which("setpriv")
# root without the capabilities that let it ignore file modes: chmod means what it says
UNPRIVILEGED = (SETPRIV or "setpriv", "--bounding-set=-dac_override,-dac_read_search",
                "--inh-caps=-dac_override,-dac_read_search", "--")


def _project(tmp_path: Path, backend: str, request: pytest.FixtureRequest,
             migrations: dict[str, str], name: str = "proj", **kw: Any) -> Project:
    url = seeded_db(tmp_path, backend, f"{name}_db", request)
    return make_project(tmp_path / name, backend, url, migrations, **kw)


@dataclass
class Ran:
    returncode: int
    stdout: str
    stderr: str


def sk(proj: Project, *args: str) -> Ran:
    """The CLI in this process (fast); runs that must die at a failpoint use ``proj.cli``."""
    r = CliRunner(env={"STATEKEEPER_CONFIG": None, "STATEKEEPER_FAILPOINT": None}).invoke(
        cli, ["--config", str(proj.config), *args], prog_name="statekeeper")
    if r.exception is not None and not isinstance(r.exception, SystemExit):
        raise AssertionError(f"statekeeper {' '.join(args)} raised") from r.exception
    return Ran(r.exit_code, r.stdout, r.stderr)


def _error_line(p: Any, code: int) -> str:
    assert p.returncode == code, (p.returncode, p.stdout, p.stderr)
    assert "Traceback" not in p.stderr + p.stdout
    lines = p.stderr.splitlines()
    assert len(lines) == 1, p.stderr
    return str(lines[0])


def _sql(proj: Project, statement: str, params: tuple[Any, ...] = ()) -> list[Any]:
    conn = proj.target().connect(autocommit=True)
    try:
        if proj.backend == "sqlite":
            return list(conn.execute(statement, params).fetchall())
        cur = conn.execute(statement.replace("?", "%s"), params)
        return list(cur.fetchall()) if cur.description else []
    finally:
        conn.close()


def _tags(proj: Project) -> list[str]:
    from statekeeper.migrations import Migrator

    return [t.name for t in Migrator(proj.target(), proj.dir / "migrations").tags()]


def _events(proj: Project, run_id: str) -> list[tuple[str, dict[str, Any]]]:
    import ledger

    with proj.settings().open_ledger(signing=False) as lg:
        return [(e.type, ledger.canonical.loads(e.payload))
                for e in lg.read_stream(f"upgrade/{run_id}")]


def _forge(proj: Project, stream: str, type_: str, payload: dict[str, Any]) -> Any:
    """Append a properly signed event with the ledger library and the key (the `ledger append`
    command refuses the streams statekeeper replays)."""
    import ledger

    s = proj.settings()
    lg = ledger.Ledger(s.ledger_url, signer=ledger.load_signer(s.key_path),
                       base_dir=s.config.base_dir)
    try:
        return lg.append(stream, ledger.NewEvent(type_, payload))[-1]
    finally:
        lg.close()


# -- 1a. the final tag only over the planned changelog ---------------------------------------
@pytest.mark.parametrize("tamper", ["row deleted", "checksum edited"])
def test_final_tag_refused_when_a_planned_migration_is_not_in_the_changelog(
    tmp_path: Path, backend: str, request: pytest.FixtureRequest, tamper: str
) -> None:
    proj = _project(tmp_path, backend, request, SCENARIOS["forward"])
    before = proj.fingerprint()
    # killed after the migrations, before the health checks and the final tag
    crashed = proj.cli("start", "--to", "v2.6", failpoint="health.before")
    assert crashed.returncode == 137, crashed.stdout + crashed.stderr
    assert proj.applied_ids() == ["001_bump_qty", "002_orders", "003_user_status"]
    if tamper == "row deleted":
        _sql(proj, "DELETE FROM statekeeper_changelog WHERE id = ?", ("002_orders",))
    else:
        _sql(proj, "UPDATE statekeeper_changelog SET checksum = ? WHERE id = ?",
             ("0" * 64, "002_orders"))

    r = sk(proj, "resume")
    assert r.returncode == 1, r.stdout + r.stderr  # failed, rolled back cleanly
    if tamper == "row deleted":
        why = (f"migration 002_orders is not in the changelog of {proj.target().shown}: "
               "refusing to tag the schema v2.6")
    else:
        why = (f"migration 002_orders is in the changelog of {proj.target().shown} with "
               "sha256 000000000000, the run planned ")
    assert f"    FAIL  tag:v2.6: {why}" in r.stdout
    last = r.stdout.splitlines()[-1]
    # the cause was shown once, on its FAIL line; the last line names the step
    assert last.split(": ", 1)[1] == "rolled_back (tag:v2.6 failed)", last
    assert "v2.6" not in _tags(proj)
    after = proj.fingerprint()
    assert after == before, diff(before, after)
    st = command.status(proj.settings())
    assert st.state == "rolled_back" and st.open_step is None


# -- 1b. a restore only of the artifact the ledger recorded ----------------------------------
def _older_backup(proj: Project, backup_id: str) -> Path:
    """A real backup of the same database, taken now (before the row the test adds)."""
    from statekeeper.backups import BackupManager

    method = "sqlite" if proj.backend == "sqlite" else "pg_dump"
    m = BackupManager(proj.target(), method, proj.dir / "old-backups").create(backup_id)
    assert m.directory is not None
    return m.directory


def _swap(old: Path, run_backup: Path, run_id: str, manifest: bool) -> None:
    """Put the older dump where the run's backup is; with ``manifest``, its own manifest too
    (naming the run's backup id: it is plain JSON beside the file)."""
    data = json.loads((old / "manifest.json").read_text())
    shutil.copyfile(old / data["artifact"], run_backup / data["artifact"])
    if manifest:
        data["id"] = run_id
        (run_backup / "manifest.json").write_text(json.dumps(data, indent=2, sort_keys=True))


@pytest.mark.parametrize(("backend", "with_manifest"), [
    ("sqlite", True), ("postgresql", True),
    # without its manifest the swap fails the manifest check too; the run must still stop at
    # once (a corrupt artifact is not retried) and lose nothing
    ("sqlite", False),
], ids=["sqlite-dump+manifest", "postgresql-dump+manifest", "sqlite-dump-only"])
def test_restore_refuses_an_older_dump_swapped_in(
    tmp_path: Path, backend: str, request: pytest.FixtureRequest, with_manifest: bool
) -> None:
    # 002 has no down part and 003 fails: the way back is the backup
    proj = _project(tmp_path, backend, request, SCENARIOS["restore"])
    old = _older_backup(proj, "older")
    _sql(proj, "INSERT INTO users (id, email, name) VALUES (4, 'dee@example.com', 'Dee')")
    before = proj.fingerprint()
    assert before.tables["users"].rows == 4

    crashed = proj.cli("start", "--to", "v2.6", failpoint="migrate.before")
    assert crashed.returncode == 137, crashed.stdout + crashed.stderr
    run_id = command.status(proj.settings()).run_id
    recorded = command.status(proj.settings()).backup
    assert recorded is not None
    run_backup = proj.dir / "backups" / recorded["backup_id"]
    genuine = tmp_path / "genuine"
    shutil.copytree(run_backup, genuine)
    _swap(old, run_backup, recorded["backup_id"], with_manifest)

    r = sk(proj, "resume")
    assert r.returncode == 3, r.stdout + r.stderr  # failed: needs a human
    fail = [ln for ln in r.stdout.splitlines() if ln.startswith("    FAIL  restore: ")]
    assert len(fail) == 1, r.stdout  # refused once, never retried
    if with_manifest:
        assert f"the ledger recorded {recorded['sha256'][:12]} ({recorded['size']} bytes) for " \
               "this run's backup: refusing to restore it" in fail[0]
    st = command.status(proj.settings())
    assert st.state == "failed" and st.failure is not None
    assert st.failure.startswith("restore refused: backup ")
    # nothing was restored: Dee is still there (with the migrations that ran, to be undone)
    assert _sql(proj, "SELECT count(*) FROM users")[0][0] == 4
    assert proj.applied_ids() == ["001_bump_qty", "002_orders"]

    # the operator puts the genuine backup back; resume retries the rollback, which now ends
    # with the database exactly as before the upgrade
    shutil.rmtree(run_backup)
    shutil.copytree(genuine, run_backup)
    r = sk(proj, "resume", run_id)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "    ok    restore" in r.stdout
    after = proj.fingerprint()
    assert after == before, diff(before, after)


def test_restore_refuses_an_artifact_others_could_swap(tmp_path: Path) -> None:
    """The restore reads the artifact again after hashing it: a backup directory that group
    or others may write is refused, since a file swapped in between would be restored."""
    proj = _project(tmp_path, "sqlite", None, SCENARIOS["restore"])  # type: ignore[arg-type]
    crashed = proj.cli("start", "--to", "v2.6", failpoint="migrate.before:3")
    assert crashed.returncode == 137, crashed.stdout + crashed.stderr
    recorded = command.status(proj.settings()).backup
    assert recorded is not None
    run_backup = proj.dir / "backups" / recorded["backup_id"]
    applied = proj.applied_ids()
    os.chmod(run_backup, 0o770)
    r = sk(proj, "resume")
    assert r.returncode == 3, r.stdout + r.stderr
    assert f"backup {recorded['backup_id']}: {run_backup} is writable by group or others: " \
        "the artifact could be swapped after it is checked; refusing to restore" in r.stdout
    assert proj.applied_ids() == applied  # nothing restored
    os.chmod(run_backup, 0o700)
    r = sk(proj, "resume")
    assert r.returncode == 1, r.stdout + r.stderr
    assert "    ok    restore" in r.stdout


# -- 2. --to / --from ------------------------------------------------------------------------
TAG_RULE = ("is not valid (letters, digits and . _ : / @ + -, starting with a letter or "
            "digit, at most 200 characters)")


@pytest.mark.parametrize("verb", ["start", "plan"])
@pytest.mark.parametrize(("args", "message"), [
    (["--to", "v 2.6"], f"error: --to 'v 2.6' {TAG_RULE}"),
    (["--to", "-v2.6"], f"error: --to '-v2.6' {TAG_RULE}"),
    (["--to", "v2.6;drop"], f"error: --to 'v2.6;drop' {TAG_RULE}"),
    (["--to", "x" * 201], f"error: --to '{'x' * 201}' {TAG_RULE}"),
    (["--to", "v2.6", "--from", ""], f"error: --from '' {TAG_RULE}"),
    (["--to", "v2.6", "--from", "v2.5\n"], f"error: --from 'v2.5\\n' {TAG_RULE}"),
])
def test_to_and_from_must_be_tag_names(tmp_path: Path, verb: str, args: list[str],
                                       message: str) -> None:
    (tmp_path / "app.db").touch()
    url = f"sqlite:///{tmp_path / 'app.db'}"
    seed("sqlite", url)
    proj = make_project(tmp_path / "proj", "sqlite", url, SCENARIOS["forward"])
    head = command.ledger_verify(proj.settings()).head.seq
    before = proj.fingerprint()
    assert _error_line(sk(proj, verb, *args), 2) == message
    assert command.history(proj.settings()) == []
    assert command.ledger_verify(proj.settings()).head.seq == head  # nothing was written
    assert proj.fingerprint() == before and _tags(proj) == ["v2.5"]


def test_from_must_name_the_schema_as_it_is(tmp_path: Path, backend: str,
                                            request: pytest.FixtureRequest) -> None:
    proj = _project(tmp_path, backend, request, SCENARIOS["forward"])
    s = proj.settings()
    command.migrate_up(s, target_id="001_bump_qty")  # applied after v2.5, not tagged yet
    r = sk(proj, "start", "--to", "v2.6")
    assert _error_line(r, 2) == (
        "error: the schema changed since its last tag v2.5 (the tag names the schema with no "
        "migration applied, it is now after 001_bump_qty): tag it with 'statekeeper migrate "
        "tag VERSION' or pass --from VERSION"
    )
    command.migrate_tag(s, "v2.5.1")
    assert _error_line(sk(proj, "start", "--to", "v2.6", "--from", "v2.5"), 2) == (
        "error: --from v2.5: tag v2.5 names the schema with no migration applied, but the "
        "schema is now after 001_bump_qty (tagged v2.5.1); pass the version it is at, or "
        "leave --from out"
    )
    assert _error_line(sk(proj, "start", "--to", "v2.6", "--from", "v2.4"), 2) == (
        "error: --from v2.4: the schema is tagged v2.5.1, not v2.4 (pass --from v2.5.1, or "
        "leave --from out)"
    )
    assert _error_line(sk(proj, "plan", "--to", "v2.6", "--from", "v2.5"), 2).startswith(
        "error: --from v2.5: tag v2.5 names")
    assert command.history(s) == []  # refused before anything was recorded
    assert _tags(proj) == ["v2.5", "v2.5.1"] and proj.applied_ids() == ["001_bump_qty"]
    r = sk(proj, "start", "--to", "v2.6", "--from", "v2.5.1")
    assert r.returncode == 0, r.stdout + r.stderr
    run_ = command.status(s)
    assert (run_.from_version, run_.to_version) == ("v2.5.1", "v2.6")
    assert run_.migrations_applied() == ["002_orders", "003_user_status"]


def test_a_new_name_for_an_untagged_schema_is_accepted(tmp_path: Path) -> None:
    (tmp_path / "app.db").touch()
    url = f"sqlite:///{tmp_path / 'app.db'}"
    seed("sqlite", url)
    proj = make_project(tmp_path / "proj", "sqlite", url, SCENARIOS["forward"])
    command.migrate_up(proj.settings(), target_id="001_bump_qty")
    r = sk(proj, "start", "--to", "v2.6", "--from", "v2.5.1")  # names the current schema
    assert r.returncode == 0, r.stdout + r.stderr
    assert _tags(proj) == ["v2.5", "v2.5.1", "v2.6"]


# -- 2. a rollback takes back the tags its run made ------------------------------------------
def test_rolling_back_a_run_without_migrations_removes_its_tag(
    tmp_path: Path, backend: str, request: pytest.FixtureRequest
) -> None:
    proj = _project(tmp_path, backend, request, {})  # nothing to migrate: a tag-only upgrade
    before = proj.fingerprint()
    assert sk(proj, "start", "--to", "v2.6").returncode == 0
    assert _tags(proj) == ["v2.5", "v2.6"]
    run_id = command.status(proj.settings()).run_id
    r = sk(proj, "rollback", run_id)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "    ok    untag:v2.6: tag removed" in r.stdout
    assert _tags(proj) == ["v2.5"]  # the schema is v2.5 again, by name as well
    assert proj.fingerprint() == before
    # and the same version can be upgraded to again
    assert sk(proj, "start", "--to", "v2.6").returncode == 0


def test_a_failed_run_takes_back_the_from_tag_it_made(tmp_path: Path, backend: str,
                                                      request: pytest.FixtureRequest) -> None:
    url = seeded_db(tmp_path, backend, "app", request)
    proj = make_project(tmp_path / "proj", backend, url,
                        {"001_bad.sql": "UPDATE users SET no_such_column = 1;\n"})
    _sql(proj, "DELETE FROM statekeeper_tags")  # a schema nobody has named yet
    r = sk(proj, "start", "--to", "v2", "--from", "v1")
    assert r.returncode == 1, r.stdout + r.stderr
    assert "    ok    tag:v1" in r.stdout and "    ok    untag:v1: tag removed" in r.stdout
    assert _tags(proj) == []  # as before the run
    # a from tag that existed before is never touched
    _sql(proj, "DELETE FROM statekeeper_tags")
    command.migrate_tag(proj.settings(), "v1")
    assert sk(proj, "start", "--to", "v2").returncode == 1
    assert _tags(proj) == ["v1"]


@pytest.mark.parametrize("failpoint", ["untag.started", "untag.done"])
def test_a_crash_while_untagging_is_settled_on_resume(tmp_path: Path, failpoint: str) -> None:
    (tmp_path / "app.db").touch()
    url = f"sqlite:///{tmp_path / 'app.db'}"
    seed("sqlite", url)
    proj = make_project(tmp_path / "proj", "sqlite", url, {})
    assert sk(proj, "start", "--to", "v2.6").returncode == 0
    run_id = command.status(proj.settings()).run_id
    crashed = proj.cli("rollback", run_id, failpoint=failpoint)
    assert crashed.returncode == 137, crashed.stdout + crashed.stderr
    r = sk(proj, "resume", run_id)
    # 5. finishing the operator's rollback is what was asked: exit 0, as rollback's own
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.splitlines()[-1] == f"run {run_id}: rolled_back"
    assert _tags(proj) == ["v2.5"]
    untags = [p for t, p in _events(proj, run_id)
              if t in ("step.succeeded", "step.failed") and p["kind"] == "untag"]
    if failpoint == "untag.done":  # it had happened: settled by its probe, not redone
        assert [(u["step"], u.get("recovered")) for u in untags] == [("untag:v2.6", True)]
    else:  # interrupted before: redone once
        assert [u.get("recovered") for u in untags] == [True, None]


# -- 3. the environment failing a step -------------------------------------------------------
@pytest.mark.skipif(SETPRIV is None, reason="setpriv (util-linux) is needed to drop root's "
                    "DAC override")
def test_an_unwritable_backup_directory_fails_the_step_and_rolls_back(
    tmp_path: Path, backend: str, request: pytest.FixtureRequest
) -> None:
    proj = _project(tmp_path, backend, request, SCENARIOS["forward"])
    before = proj.fingerprint()
    backups = proj.dir / "backups"
    backups.mkdir()
    backups.chmod(0o500)
    try:
        r = proj.cli("start", "--to", "v2.6", prefix=UNPRIVILEGED)
    finally:
        backups.chmod(0o700)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "unexpected" not in r.stderr and r.stderr == ""
    run_id = command.status(proj.settings()).run_id
    assert (f"    FAIL  backup: Permission denied: {backups / run_id}") in r.stdout
    assert r.stdout.splitlines()[-1] == f"run {run_id}: rolled_back (backup failed)"
    st = command.status(proj.settings())
    assert st.state == "rolled_back" and st.open_step is None
    assert st.leases[-1]["type"] == "lease.released" and "error" not in st.leases[-1]
    assert proj.fingerprint() == before
    assert sk(proj, "start", "--to", "v2.6").returncode == 0  # nothing left behind


@pytest.mark.parametrize("breakage", ["a regular file", "under a regular file"])
def test_a_backup_directory_that_is_not_one_fails_the_step(tmp_path: Path,
                                                           breakage: str) -> None:
    (tmp_path / "app.db").touch()
    url = f"sqlite:///{tmp_path / 'app.db'}"
    seed("sqlite", url)
    proj = make_project(tmp_path / "proj", "sqlite", url, SCENARIOS["forward"])
    before = proj.fingerprint()
    if breakage == "a regular file":
        (proj.dir / "backups").write_text("not a directory\n")
    else:
        (proj.dir / "blocker").write_text("not a directory\n")
        cfg = proj.config.read_text().replace('dir = "backups"', 'dir = "blocker/backups"')
        proj.config.write_text(cfg)
    r = sk(proj, "start", "--to", "v2.6")
    assert r.returncode == 1, r.stdout + r.stderr
    assert "    FAIL  backup: " in r.stdout and "Not a directory" in r.stdout
    assert command.status(proj.settings()).state == "rolled_back"
    assert proj.fingerprint() == before


def test_a_vanished_backup_directory_ends_failed_not_open(tmp_path: Path, backend: str,
                                                          request: pytest.FixtureRequest
                                                          ) -> None:
    proj = _project(tmp_path, backend, request, SCENARIOS["restore"])
    crashed = proj.cli("start", "--to", "v2.6", failpoint="migrate.before")
    assert crashed.returncode == 137
    shutil.rmtree(proj.dir / "backups")  # a clean-up job, a lost mount
    r = sk(proj, "resume")
    assert r.returncode == 3, r.stdout + r.stderr  # the only way back is gone: a human decides
    assert r.stderr == ""
    st = command.status(proj.settings())
    assert st.state == "failed" and st.open_step is None
    assert st.failure is not None and "not found in" in st.failure


# -- 4. one unreplayable stream does not stop the others -------------------------------------
FORGERIES: dict[str, tuple[str, dict[str, Any], str]] = {
    "unknown event type": ("run.annotated", {"note": "hello"},
                           "unknown event type 'run.annotated'"),
    "illegal transition": ("state.changed", {"trigger": "verified", "from": "completed",
                                             "to": "completed"},
                           "transition 'verified' is not allowed from state 'completed'"),
    "payload without its fields": ("step.started", {"step": "x"},
                                   "step.started: field 'kind' is missing"),
}


@pytest.mark.parametrize("forgery", list(FORGERIES))
def test_each_unreplayable_event_is_named_with_its_seq(tmp_path: Path, forgery: str) -> None:
    (tmp_path / "app.db").touch()
    url = f"sqlite:///{tmp_path / 'app.db'}"
    seed("sqlite", url)
    proj = make_project(tmp_path / "proj", "sqlite", url, SCENARIOS["forward"])
    assert sk(proj, "start", "--to", "v2.6").returncode == 0
    run_id = command.status(proj.settings()).run_id
    type_, payload, why = FORGERIES[forgery]
    ev = _forge(proj, f"upgrade/{run_id}", type_, payload)
    reason = f"event #{ev.stream_seq} (seq {ev.seq}): {why}"
    assert _error_line(sk(proj, "status", run_id), 4) == (
        f"error: run {run_id} cannot be replayed: {reason}")
    h = sk(proj, "history", "--json")
    assert h.returncode == 0
    assert json.loads(h.stdout)[0]["error"] == f"cannot be replayed: {reason}"


@pytest.mark.parametrize("ledger_backend", ["sqlite", "postgresql"])
def test_an_unreplayable_run_is_reported_and_blocks_only_its_own_target(
    tmp_path: Path, request: pytest.FixtureRequest, ledger_backend: str
) -> None:
    forgery = "unknown event type"
    if ledger_backend == "sqlite":
        ledger_url = f"sqlite:///{tmp_path / 'shared-ledger.db'}"
    else:
        cluster = request.getfixturevalue("pg_cluster")
        ledger_url = cluster.url(cluster.createdb("ledger"))
    key = str(tmp_path / "key.pem")
    # target A is a SQLite file, target B a PostgreSQL database; one ledger, one key
    a = _project(tmp_path, "sqlite", request, SCENARIOS["forward"], name="a",
                 ledger_url=ledger_url, key=key)
    b = _project(tmp_path, "postgresql", request, SCENARIOS["forward"], name="b",
                 ledger_url=ledger_url, key=key)
    assert sk(a, "start", "--to", "v2.6").returncode == 0
    run_a = command.status(a.settings()).run_id
    assert sk(b, "start", "--to", "v2.6").returncode == 0
    run_b = command.status(b.settings()).run_id
    type_, payload, why = FORGERIES[forgery]
    ev = _forge(a, f"upgrade/{run_a}", type_, payload)
    reason = f"event #{ev.stream_seq} (seq {ev.seq}): {why}"

    assert [x["run_id"] for x in json.loads(sk(b, "history", "--json").stdout)] == [run_b]
    h = sk(b, "history", "--all-targets")
    assert h.returncode == 0, h.stdout + h.stderr
    assert h.stderr == f"warning: 1 run cannot be replayed ({run_a})\n"
    rows = h.stdout.splitlines()
    row_a = next(i for i, ln in enumerate(rows) if ln.startswith(run_a))
    assert rows[row_a].split()[1:4] == ["?", "?", "unreadable"]
    assert rows[row_a + 1] == f"  cannot be replayed: {reason}"
    assert any(ln.startswith(run_b) and " completed " in ln for ln in rows)
    hj = json.loads(sk(b, "history", "--json", "--all-targets").stdout)
    assert [(x["run_id"], x["state"]) for x in hj] == [(run_a, "unreadable"),
                                                      (run_b, "completed")]
    assert hj[0]["seq"] == ev.seq and hj[0]["target"] == a.target().display

    assert sk(b, "status", run_b).returncode == 0
    assert sk(b, "status").returncode == 0  # the latest run is B's
    assert _error_line(sk(b, "status", run_a), 4) == (
        f"error: run {run_a} cannot be replayed: {reason}")
    # B's target upgrades again; A's refuses: whether its run finished cannot be told
    mig = b.dir / "migrations" / "004_more.sql"
    mig.write_text("CREATE TABLE more (id INTEGER PRIMARY KEY);\n"
                   "-- statekeeper:down\nDROP TABLE more;\n")
    r = sk(b, "start", "--to", "v2.7")
    assert r.returncode == 0, r.stdout + r.stderr
    assert sk(b, "rollback", command.status(b.settings()).run_id).returncode == 0
    before_a = a.fingerprint()
    assert _error_line(sk(a, "start", "--to", "v2.7"), 4) == (
        f"error: run {run_a} on this target cannot be replayed ({reason}); whether it "
        "finished is unknown, so nothing is done to the target")
    for args in (("resume", run_a), ("rollback", run_a)):
        assert _error_line(sk(a, *args), 4) == f"error: run {run_a} cannot be replayed: {reason}"
    assert a.fingerprint() == before_a and _tags(a) == ["v2.5", "v2.6"]


def test_a_forged_run_created_naming_another_run_is_unreadable(tmp_path: Path) -> None:
    (tmp_path / "app.db").touch()
    url = f"sqlite:///{tmp_path / 'app.db'}"
    seed("sqlite", url)
    proj = make_project(tmp_path / "proj", "sqlite", url, SCENARIOS["forward"])
    assert sk(proj, "start", "--to", "v2.6").returncode == 0
    real = command.status(proj.settings())
    plan = dict(_events(proj, real.run_id)[0][1])
    ev = _forge(proj, "upgrade/20260101-000000-f0f0f0", "run.created", plan)
    hist = command.history(proj.settings())
    assert [(r.run_id, r.state) for r in hist] == [(real.run_id, "completed"),
                                                  ("20260101-000000-f0f0f0", "unreadable")]
    assert hist[1].reason == (f"event #1 (seq {ev.seq}): run.created names run "
                              f"{real.run_id!r}")
    # the forged one claims this target: a new start here refuses, nothing else does
    assert _error_line(sk(proj, "start", "--to", "v2.7"), 4).startswith(
        "error: run 20260101-000000-f0f0f0 on this target cannot be replayed")
    assert sk(proj, "status", real.run_id).returncode == 0


# -- 5. resume finishing an operator's rollback ----------------------------------------------
@pytest.mark.parametrize("failpoint", ["revert.started:2", "compare.before"])
def test_resume_that_finishes_an_operator_rollback_exits_0(
    tmp_path: Path, backend: str, request: pytest.FixtureRequest, failpoint: str
) -> None:
    proj = _project(tmp_path, backend, request, SCENARIOS["forward"])
    before = proj.fingerprint()
    assert sk(proj, "start", "--to", "v2.6").returncode == 0
    run_id = command.status(proj.settings()).run_id
    crashed = proj.cli("rollback", run_id, failpoint=failpoint)
    assert crashed.returncode == 137, crashed.stdout + crashed.stderr
    r = sk(proj, "resume", run_id)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.splitlines()[-1] == f"run {run_id}: rolled_back"
    assert proj.fingerprint().schema == before.schema and proj.applied_ids() == []
    # asking again about a run already rolled back as asked: still 0
    assert sk(proj, "resume", run_id).returncode == 0


def test_resume_after_a_crashed_resume_rollback_exits_0(tmp_path: Path) -> None:
    (tmp_path / "app.db").touch()
    url = f"sqlite:///{tmp_path / 'app.db'}"
    seed("sqlite", url)
    proj = make_project(tmp_path / "proj", "sqlite", url, SCENARIOS["forward"])
    assert proj.cli("start", "--to", "v2.6", failpoint="migrate.started:2").returncode == 137
    assert proj.cli("resume", "--rollback", failpoint="revert.started").returncode == 137
    r = sk(proj, "resume")  # no --rollback this time: it finishes what the operator asked
    assert r.returncode == 0, r.stdout + r.stderr
    assert command.status(proj.settings()).state == "rolled_back"


def test_resume_finishing_a_failure_rollback_still_exits_1(tmp_path: Path) -> None:
    (tmp_path / "app.db").touch()
    url = f"sqlite:///{tmp_path / 'app.db'}"
    seed("sqlite", url)
    proj = make_project(tmp_path / "proj", "sqlite", url, SCENARIOS["revert"])
    assert proj.cli("start", "--to", "v2.6", failpoint="revert.started").returncode == 137
    r = sk(proj, "resume")
    assert r.returncode == 1, r.stdout + r.stderr  # the upgrade failed: that is the news


# -- 4. replay of any (mutated) history is a run or a HistoryError --------------------------
REPLAY_EXAMPLES = 300
Choose = Any  # (label, options) -> one of options


def _simulate(choose: Choose) -> list[Any]:
    """A legal history, built as the runner builds one: ask the policy, record the answer
    (steps succeed or fail as chosen), until a terminal state or a length cap."""
    from statekeeper.policy import Done, Transition, next_action
    from statekeeper.replay import RunEvent, apply, destination
    from statekeeper.steps import Step

    n_mig = choose("migrations", [0, 1, 2])
    plan = {
        "run_id": "r1", "from_version": "v1", "to_version": "v2", "target": "t",
        "migrations": [{"id": f"00{i}_m", "checksum": f"c{i}",
                        "reversible": choose(f"reversible {i}", [True, False])}
                       for i in range(n_mig)],
        "backup": choose("backup", [{"enabled": True, "method": "sqlite"},
                                    {"enabled": False, "method": None}]),
        "health_checks": [],
    }
    events: list[RunEvent] = []
    run = None

    def add(type_: str, payload: dict[str, Any]) -> None:
        nonlocal run
        ev = RunEvent(len(events) + 1, type_, payload, "2026-01-01T00:00:00.000000Z",
                      seq=len(events) + 10)
        run = apply(run, ev)
        events.append(ev)

    add("run.created", plan)
    for n in range(40):
        assert run is not None
        if run.state == "completed" and choose("operator rollback", [False, True]):
            add("state.changed", {"trigger": "rollback", "from": "completed",
                                  "to": "rolling_back", "restore": True})
            continue
        a = next_action(run)
        if isinstance(a, Done):
            break
        if isinstance(a, Transition):
            change = {"trigger": a.trigger, "from": run.state,
                      "to": destination(run.state, a.trigger)}
            add("state.changed", {**change, "reason": a.reason} if a.reason else change)
            continue
        assert isinstance(a, Step)
        add("step.started", {"step": a.name, "kind": a.kind, **a.args})
        if choose(f"fail {n}", [False, False, False, True]):
            add("step.failed", {"step": a.name, "kind": a.kind, "error": "boom",
                                "integrity": choose(f"integrity {n}", [False, True])})
            continue
        result: dict[str, Any] = {}
        if a.kind == "backup":
            result = {"backup_id": a.args["backup_id"], "sha256": "0" * 64, "size": 1}
        elif a.kind == "compare":
            result = {"equal": choose(f"equal {n}", [True, False]),
                      "diff": ["users: 3 rows -> 2 rows"]}
        elif a.kind == "tag":
            result = {"tag": a.args["tag"], "created": choose(f"created {n}", [True, False])}
        add("step.succeeded", {"step": a.name, "kind": a.kind, "result": result})
    return events


def _replays_or_refuses(events: list[Any]) -> None:
    """The property: a HistoryError, or a run that the policy and the readers can act on
    (never a KeyError/TypeError: the CLI's "unexpected error", a run nobody can move)."""
    from statekeeper.errors import HistoryError
    from statekeeper.policy import next_action
    from statekeeper.replay import apply

    run = None
    for ev in events:  # after each event: a crash there leaves that prefix for resume
        try:
            run = apply(run, ev)
        except HistoryError:
            return
        run.migrations_applied()
        run.tags_made()
        _ = (run.backup, run.failure, run.ended_at)
        if run.open_step is not None:
            with pytest.raises(ValueError, match="in doubt"):
                next_action(run)
        else:
            next_action(run)


WRONG = [None, 7, True, "x", [], {}, ["x", 1], {"x": 1}]


def _variants(events: list[Any]) -> Any:
    """Every event with one field dropped or given a wrong value (result fields too)."""
    from statekeeper.replay import RunEvent

    for i, ev in enumerate(events):
        paths = [(k,) for k in ev.payload]
        paths += [("result", k) for k in (ev.payload.get("result") or {})]
        for path in paths:
            for value in [..., *WRONG]:
                payload = json.loads(json.dumps(ev.payload))
                holder = payload if len(path) == 1 else payload["result"]
                if value is ...:
                    holder.pop(path[-1])
                else:
                    holder[path[-1]] = value
                yield [*events[:i], RunEvent(ev.position, ev.type, payload, ev.at, ev.seq),
                       *events[i + 1:]]


@pytest.mark.parametrize("script", [
    {},  # forward, completes
    {"migrations": 2, "fail 8": True},  # the second migration fails: revert the first
    {"migrations": 2, "reversible 0": False, "fail 8": True},  # restore
    {"migrations": 2, "reversible 0": False, "fail 8": True, "fail 10": True,
     "integrity 10": True},  # the restore refused: failed
    {"migrations": 1, "operator rollback": True},  # completed, then rolled back by an operator
    {"migrations": 0, "operator rollback": True, "created 5": True},  # tag-only, untagged
])
def test_every_field_dropped_or_mistyped_replays_or_is_refused(script: dict[str, Any]) -> None:
    events = _simulate(lambda label, options: script.get(label, options[0]))
    n = 0
    for variant in _variants(events):
        _replays_or_refuses(variant)
        n += 1
    assert n > 100  # the enumeration really ran


@st.composite
def _mutated_history(draw: Any) -> list[Any]:
    from statekeeper.replay import RunEvent

    events = _simulate(lambda label, options: draw(st.sampled_from(options), label=label))
    for _ in range(draw(st.integers(1, 3))):
        i = draw(st.integers(0, len(events) - 1))
        ev = events[i]
        how = draw(st.sampled_from(["drop", "wrong", "type", "insert", "swap"]))
        payload = dict(ev.payload)
        if how == "drop" and payload:
            payload.pop(draw(st.sampled_from(sorted(payload))))
        elif how == "wrong" and payload:
            payload[draw(st.sampled_from(sorted(payload)))] = draw(st.sampled_from(WRONG))
        elif how == "type":
            ev = RunEvent(ev.position, draw(st.sampled_from(
                ["step.started", "step.succeeded", "step.failed", "state.changed",
                 "run.resumed", "lease.released", "run.created", "run.annotated"])),
                payload, ev.at, ev.seq)
        elif how == "insert":
            events.insert(i, events[draw(st.integers(0, len(events) - 1))])
            continue
        elif how == "swap" and i + 1 < len(events):
            events[i], events[i + 1] = events[i + 1], events[i]
            continue
        events[i] = RunEvent(ev.position, ev.type, payload, ev.at, ev.seq)
    return [RunEvent(n + 1, e.type, e.payload, e.at, e.seq) for n, e in enumerate(events)]


@settings(max_examples=REPLAY_EXAMPLES, deadline=None)
@given(_mutated_history())
def test_any_mutated_history_replays_or_is_refused(events: list[Any]) -> None:
    _replays_or_refuses(events)
