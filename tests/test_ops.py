"""Every change through statekeeper is in the ledger: each operation outside an upgrade in its
stream ``ops/<id>`` with its steps; destructive ones confirmed (--yes, or a prompt) or refused
with nothing recorded; --reason/--ticket and [upgrade] require_ticket; both checksums of a
migration. CLI against real SQLite targets and ledgers."""

from __future__ import annotations

import getpass
import hashlib
import socket
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

import cli.root as cli_root
from cli.main import cli
from ledger import canonical
from statekeeper import command, ops
from statekeeper.command import Settings
from statekeeper.opreplay import Operation, replay
from statekeeper.plan import Plan
from statekeeper.replay import RunEvent
from tests.upgrade_support import GOOD, make_project, seed


def run(base: Path, *args: str, input: str | None = None) -> Result:
    r = CliRunner().invoke(cli, ["--config", str(base / "statekeeper.toml"), *args],
                           input=input)
    assert "Traceback" not in r.output
    return r


@pytest.fixture
def proj(tmp_path: Path) -> Path:
    """A SQLite target at v2.5 (tagged by a migrate.tag operation) with GOOD pending."""
    url = f"sqlite:///{tmp_path / 'app.db'}"
    (tmp_path / "app.db").touch()
    seed("sqlite", url)
    return make_project(tmp_path / "p", "sqlite", url, GOOD).dir


def settings(base: Path) -> Settings:
    return Settings.load(str(base / "statekeeper.toml"))


def operations(base: Path) -> list[Operation]:
    with settings(base).open_ledger(signing=False) as lg:
        found = ops.scan_ops(lg)
    assert all(isinstance(o, Operation) for o in found), found
    return found  # type: ignore[return-value]


def head(base: Path) -> int:
    with settings(base).open_ledger(signing=False) as lg:
        return lg.head().seq


def events(base: Path, stream: str) -> list[tuple[str, dict[str, Any]]]:
    with settings(base).open_ledger(signing=False) as lg:
        return [(e.type, canonical.loads(e.payload)) for e in lg.read_stream(stream)]


def sha256(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def test_init_is_the_first_operation_and_a_rerun_records_nothing(tmp_path: Path) -> None:
    cfg = tmp_path / "statekeeper.toml"
    r = CliRunner().invoke(cli, ["--config", str(cfg), "init", "--reason", "new project",
                                 "--ticket", "CHG-1"])
    assert r.exit_code == 0, r.output
    done = r.stdout.splitlines()
    assert done[-1].startswith("recorded as operation ")
    with settings(tmp_path).open_ledger(signing=False) as lg:
        evs = list(lg.read(1))
    assert [(e.seq, e.stream.split("/")[0], e.type) for e in evs] == [
        (1, "ledger", "ledger.genesis"), (2, "ops", "op.created"), (3, "ops", "step.started"),
        (4, "ops", "step.succeeded"), (5, "ops", "op.ended")]
    (op,) = operations(tmp_path)
    assert (op.op, op.status, op.reason, op.ticket, op.target) == (
        "init", "succeeded", "new project", "CHG-1", None)
    assert (op.user, op.host) == (getpass.getuser(), socket.gethostname())
    result = op.steps[0].result or {}
    assert set(result["created"]) == {"config", "migrations_dir", "signing_key", "ledger"}
    assert "BEGIN" not in repr(result) and "PRIVATE" not in repr(result)  # no key material
    r = run(tmp_path, "init")
    assert r.exit_code == 0 and "recorded as operation" not in r.stdout
    assert head(tmp_path) == 5


def test_each_operation_in_its_stream_with_its_steps(proj: Path) -> None:
    mig = proj / "migrations"
    _, op_tag = operations(proj)  # make_project ran init and tagged v2.5
    assert (op_tag.op, [s.kind for s in op_tag.steps]) == ("migrate.tag", ["tag"])

    r = run(proj, "migrate", "up", "--to", "002_orders", "--reason", "hotfix", "--ticket",
            "CHG-7")
    assert r.exit_code == 0, r.output
    assert r.stdout.splitlines()[-1].startswith("recorded as operation ")
    assert run(proj, "backup", "create", "--id", "b1").exit_code == 0
    r = run(proj, "migrate", "down", "--to-tag", "v2.5", "--yes")
    assert r.exit_code == 0, r.output
    r = run(proj, "backup", "restore", "b1", "--yes", "--ticket", "INC-3")
    assert r.exit_code == 0, r.output
    command.keys_generate(proj / "k2.pem")
    r = run(proj, "keys", "rotate", "--new-key", str(proj / "k2.pem"))
    assert r.exit_code == 0, r.output
    assert run(proj, "--key", str(proj / "k2.pem"), "ledger", "verify").exit_code == 0

    _, _, up, create, down, restore, rotate = operations(proj)
    assert [(o.op, o.status) for o in (up, create, down, restore, rotate)] == [
        ("migrate.up", "succeeded"), ("backup.create", "succeeded"),
        ("migrate.down", "succeeded"), ("backup.restore", "succeeded"),
        ("keys.rotate", "succeeded")]
    assert (up.reason, up.ticket, up.confirmed, up.args["to"]) == ("hotfix", "CHG-7", None,
                                                                   "002_orders")
    assert [s.name for s in up.steps] == ["migrate:001_bump_qty", "migrate:002_orders"]
    for s in up.steps + down.steps:
        f = mig / f"{s.args['migration']}.sql"
        assert s.args["file_sha256"] == (s.result or {})["file_sha256"] == sha256(f)
        assert len(s.args["checksum"]) == 64 and s.args["checksum"] != sha256(f)
    assert [s.name for s in down.steps] == ["revert:002_orders", "revert:001_bump_qty"]
    assert (down.confirmed, down.args["to_tag"]) == ("--yes", "v2.5")
    assert create.backup is not None and create.backup["backup_id"] == "b1"
    assert len(create.backup["sha256"]) == 64 and create.target == down.target
    (rs,) = restore.steps
    res = rs.result or {}
    assert (rs.kind, restore.confirmed, restore.ticket, res["backup_id"]) == (
        "restore", "--yes", "INC-3", "b1")
    assert res["fingerprint_after"] == create.backup["fingerprint"]["digest"]
    # the backup holds 001 and 002 (taken after up), the down removed them: restored
    assert res["fingerprint_before"] != res["fingerprint_after"] and res["undone"]
    (ks,) = rotate.steps
    assert set(ks.result or {}) == {"old_key_id", "new_key_id", "seq"}
    assert rotate.target is None and rotate.args == {k: v for k, v in (ks.result or {}).items()
                                                     if k != "seq"}


def test_destructive_ones_need_yes_or_a_prompt(proj: Path, monkeypatch: pytest.MonkeyPatch
                                               ) -> None:
    assert run(proj, "backup", "create", "--id", "b1").exit_code == 0
    assert run(proj, "migrate", "up").exit_code == 0
    before = head(proj)
    r = run(proj, "backup", "restore", "b1")
    assert (r.exit_code, r.stdout, r.stderr) == (2, "", (
        "error: backup restore discards data and needs confirmation: not on a terminal, so "
        "pass --yes (nothing was done)\n"))
    r = run(proj, "migrate", "down", "--to-tag", "v2.5")
    assert (r.exit_code, r.stderr) == (2, (
        "error: migrate down discards data and needs confirmation: not on a terminal, so "
        "pass --yes (nothing was done)\n"))
    monkeypatch.setattr(cli_root, "interactive", lambda: True)
    r = run(proj, "migrate", "down", "--to-tag", "v2.5", input="n\n")
    assert r.exit_code == 2
    assert "revert 3 migrations on sqlite:///" in r.stderr
    assert r.stderr.splitlines()[-1] == "error: migrate down not confirmed: nothing was done"
    assert head(proj) == before  # nothing recorded
    assert [m.applied for m in command.migrate_status(settings(proj))[0]] == [True] * 3
    r = run(proj, "backup", "restore", "b1", input="y\n")
    assert r.exit_code == 0, r.output
    last = operations(proj)[-1]
    assert (last.op, last.confirmed, last.status) == ("backup.restore", "prompt", "succeeded")
    undone = (last.steps[0].result or {})["undone"]
    assert any("orders" in line for line in undone)  # what the restore discarded


def test_reason_ticket_and_require_ticket(proj: Path) -> None:
    toml = proj / "statekeeper.toml"
    base = toml.read_text()
    for args, err in [
        (("--ticket", "CHG 1"), "--ticket 'CHG 1' is not valid (letters, digits and . _ : / # "
                                "-, 1 to 100 characters)"),
        (("--reason", "two\nlines"), "--reason must be one line of text: it contains '\\n'"),
        (("--reason", "x" * 501), "--reason is 501 characters long: at most 500"),
        (("--reason", " "), "--reason is empty: say why, in one line"),
    ]:
        r = run(proj, "start", "--to", "v2.6", *args)
        assert (r.exit_code, r.stderr) == (2, f"error: {err}\n")
    toml.write_text(base + '\n[upgrade]\nrequire_ticket = "yes"\n')
    r = run(proj, "migrate", "tag", "v2.5.1")
    assert (r.exit_code, r.stderr) == (
        2, f"error: {toml}: [upgrade] require_ticket must be a boolean, not string\n")
    toml.write_text(base + "\n[upgrade]\nrequire_ticket = true\n")
    before = head(proj)
    for cmd in (("start", "--to", "v2.6"), ("migrate", "up"), ("backup", "create"),
                ("backup", "restore", "x", "--yes"), ("resume",), ("rollback", "r1"),
                ("keys", "rotate", "--new-key", "k2.pem")):
        r = run(proj, *cmd)
        assert r.exit_code == 2, cmd
        assert r.stderr.startswith(f"error: {toml}: [upgrade] require_ticket = true: pass "
                                   "--ticket ID (the change request the "), cmd
    assert head(proj) == before
    r = run(proj, "start", "--to", "v2.6", "--ticket", "CHG-42", "--reason", "quarterly")
    assert r.exit_code == 0, r.output
    run_id = r.stdout.splitlines()[-1].split()[1].rstrip(":")
    evs = events(proj, f"upgrade/{run_id}")
    created = evs[0][1]
    assert (created["ticket"], created["reason"]) == ("CHG-42", "quarterly")
    plan = Plan.from_payload(created)
    for m in plan.migrations:
        assert m.file_sha256 == sha256(proj / "migrations" / f"{m.id}.sql")
    migrated = [p["result"] for t, p in evs if t == "step.succeeded" and p["kind"] == "migrate"]
    assert [m["file_sha256"] for m in migrated] == [
        sha256(proj / "migrations" / n) for n in sorted(GOOD)]
    r = run(proj, "rollback", run_id, "--ticket", "CHG-43")
    assert r.exit_code == 0, r.output
    st = command.status(settings(proj), run_id)
    assert (st.reason, st.ticket, st.user) == ("quarterly", "CHG-42", getpass.getuser())
    assert [(x["mode"], x.get("ticket")) for x in st.resumptions] == [("rollback", "CHG-43")]
    reverts = [s for s in st.steps if s.kind == "revert"]
    assert reverts and all(s.args["file_sha256"] == (s.result or {})["file_sha256"]
                           for s in reverts)


def test_a_run_holding_the_lease_refuses_operations(proj: Path) -> None:
    from statekeeper.targets import Target

    s = settings(proj)
    display = Target.from_url(s.config.require_target(), s.config.base_dir).display
    store = s.open_lease_store()
    lease, _ = store.acquire(display, "20260101-000000-abcdef", takeover=False)
    before = head(proj)
    try:
        r = run(proj, "migrate", "up")
        assert r.exit_code == 5
        assert r.stderr.startswith("error: target is locked by run 20260101-000000-abcdef "
                                   f"(host {socket.gethostname()}, pid ")
        assert r.stderr.endswith(": an operation waits for the run to end ('statekeeper "
                                 "status 20260101-000000-abcdef')\n")
    finally:
        lease.release()
        store.dispose()
    assert head(proj) == before


def test_a_failed_operation_ends_failed_and_a_crash_leaves_it_interrupted(proj: Path) -> None:
    (proj / "migrations" / "004_bad.sql").write_text("UPDATE nowhere SET x = 1;\n")
    r = run(proj, "migrate", "up")
    assert r.exit_code == 1
    assert r.stderr.startswith("error: migration 004_bad failed")
    op = operations(proj)[-1]
    assert (op.op, op.status) == ("migrate.up", "failed")
    assert [s.status for s in op.steps] == ["succeeded"] * 3 + ["failed"]
    assert op.error is not None and op.error.startswith("migration 004_bad failed")
    # a crash: the events up to a step left open, no op.ended
    evs = [RunEvent(i, t, p, f"2026-01-01T00:00:0{i}Z", i, {"user": "u", "host": "h"})
           for i, (t, p) in enumerate([
               ("op.created", {"op_id": "x", "op": "backup.restore", "target": None,
                               "args": {}, "version": "0", "confirmed": "prompt"}),
               ("step.started", {"step": "restore", "kind": "restore", "backup_id": "b"}),
           ], 1)]
    crashed = replay(evs)
    assert (crashed.status, crashed.open_step is not None, crashed.user) == (
        "interrupted", True, "u")


def test_histories_without_file_sha256_still_replay() -> None:
    p = {"run_id": "r", "from_version": "a", "to_version": "b", "backup": {"enabled": False},
         "migrations": [{"id": "001", "checksum": "c" * 64, "reversible": True}]}
    plan = Plan.from_payload(p)
    assert plan.migrations[0].file_sha256 is None
    assert "file_sha256" not in plan.to_payload()["migrations"][0]


def test_a_restore_refuses_a_backup_the_ledger_recorded_otherwise(proj: Path) -> None:
    """The artifact and its manifest replaced together (the manifest lives beside the file):
    the ledger's record of the backup, made when it was taken, is what is trusted."""
    import json

    assert run(proj, "backup", "create", "--id", "b2").exit_code == 0
    before = head(proj)
    d = proj / "backups" / "b2"
    man = json.loads((d / "manifest.json").read_text())
    art = d / man["artifact"]
    art.write_bytes(art.read_bytes() + b"\0" * 4096)  # still a SQLite file
    man["sha256"], man["size"] = sha256(art), art.stat().st_size
    (d / "manifest.json").write_text(json.dumps(man))
    r = run(proj, "backup", "restore", "b2", "--yes")
    assert r.exit_code == 4, r.output
    assert r.output.strip().splitlines()[-1] == (
        f"error: backup b2: the artifact has sha256 {man['sha256'][:12]} ({man['size']} bytes);"
        f" the ledger recorded {operations(proj)[-1].backup['sha256'][:12]} "  # type: ignore[index]
        f"({man['size'] - 4096} bytes) when it was taken: refusing to restore it")
    assert head(proj) == before  # nothing recorded, nothing restored
