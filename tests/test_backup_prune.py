"""``statekeeper backup prune`` and ``backup schedule``: [backup] keep / keep_days applied as a
``backup.prune`` operation, never deleting a backup a run may still restore or the ledger does
not know; the nightly job's cron line and systemd units. Real SQLite targets and ledgers."""

from __future__ import annotations

import json
import shutil
import subprocess
from datetime import timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

import cli.root as cli_root
from cli.main import cli
from statekeeper import clock, command
from statekeeper.backups import BackupManager
from statekeeper.errors import BackupError
from statekeeper.sizes import size_text
from statekeeper.targets import Target
from tests.test_ops import head, operations
from tests.upgrade_support import GOOD, Project, make_project, seed


def run(base: Path, *args: str, input: str | None = None) -> Result:
    r = CliRunner().invoke(cli, ["--config", str(base / "statekeeper.toml"), *args],
                           input=input)
    assert "Traceback" not in r.output
    return r


def configure(base: Path, backup: str) -> None:
    """Add ``backup`` (keys) to the [backup] section make_project wrote."""
    toml = base / "statekeeper.toml"
    toml.write_text(toml.read_text().replace("enabled = true\n", f"enabled = true\n{backup}\n"))


@pytest.fixture
def proj(tmp_path: Path) -> Path:
    url = f"sqlite:///{tmp_path / 'app.db'}"
    (tmp_path / "app.db").touch()
    seed("sqlite", url)
    return make_project(tmp_path / "p", "sqlite", url, GOOD).dir


def verdicts(r: Result) -> list[tuple[str, str, str]]:
    """(action, id, why) of each row of prune's table."""
    out = []
    for line in r.stdout.splitlines():
        if not line.startswith(("delete ", "keep ")):
            continue
        cells = line.split()
        out.append((cells[0], cells[1], " ".join(cells[7:])))
    return out


def test_size_text() -> None:
    assert [size_text(n) for n in (0, 1023, 1024, 1536, 1024 ** 2 - 1, 78_432_112,
                                   5 * 1024 ** 3)] == [
        "0 B", "1023 B", "1.0 KiB", "1.5 KiB", "1.0 MiB", "74.8 MiB", "5.0 GiB"]


def test_prune_keeps_the_newest_confirms_and_records(proj: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    configure(proj, "keep = 2")
    for i in range(1, 5):
        assert run(proj, "backup", "create", "--id", f"b{i}").exit_code == 0
    size = size_text((proj / "backups" / "b1" / "database.sqlite").stat().st_size)
    before = head(proj)
    r = run(proj, "backup", "prune")
    assert (r.exit_code, r.stdout, r.stderr) == (2, "", (
        "error: backup prune discards data and needs confirmation: not on a terminal, so "
        "pass --yes (nothing was done)\n"))
    r = run(proj, "backup", "prune", "--dry-run")
    assert r.exit_code == 0, r.output
    assert r.stdout.splitlines()[0].split() == ["ID", "CREATED", "METHOD", "SIZE", "WHY"]
    assert verdicts(r) == [("delete", "b1", "beyond the newest 2"),
                           ("delete", "b2", "beyond the newest 2"),
                           ("keep", "b3", "one of the newest 2 (keep = 2)"),
                           ("keep", "b4", "one of the newest 2 (keep = 2)")]
    assert f" sqlite  {size}  " in r.stdout.splitlines()[1]
    both = size_text(2 * (proj / "backups" / "b1" / "database.sqlite").stat().st_size)
    assert r.stdout.splitlines()[-1] == (
        f"would delete 2 backups ({both}), keep 2 backups (dry run: nothing deleted or "
        "recorded)")
    assert head(proj) == before and (proj / "backups" / "b1").is_dir()
    monkeypatch.setattr(cli_root, "interactive", lambda: True)
    r = run(proj, "backup", "prune", input="n\n")
    assert r.exit_code == 2
    assert f"delete 2 backups ({both}) from {proj / 'backups'}: b1, b2?" in r.stderr
    assert r.stderr.splitlines()[-1] == "error: backup prune not confirmed: nothing was done"
    assert head(proj) == before
    monkeypatch.setattr(cli_root, "interactive", lambda: False)
    r = run(proj, "backup", "prune", "--yes", "--reason", "disk", "--ticket", "CHG-9")
    assert r.exit_code == 0, r.output
    assert r.stdout.splitlines()[-2].startswith("deleted 2 backups (")
    assert r.stdout.splitlines()[-1].startswith("recorded as operation ")
    assert sorted(p.name for p in (proj / "backups").iterdir()) == ["b3", "b4"]
    op = operations(proj)[-1]
    assert (op.op, op.status, op.confirmed, op.reason, op.ticket) == (
        "backup.prune", "succeeded", "--yes", "disk", "CHG-9")
    assert op.args == {"keep": 2, "keep_days": 0, "backups": ["b1", "b2"]}
    assert [(s.name, s.kind, s.args["why"]) for s in op.steps] == [
        ("prune:b1", "prune", "beyond the newest 2"), ("prune:b2", "prune", "beyond the newest 2")]
    assert op.backups_pruned() == ["b1", "b2"] and len(op.steps[0].args["sha256"]) == 64
    out = proj / "report.json"
    assert run(proj, "report", "--format", "json", "--out", str(out)).exit_code == 0
    details = [st["detail"] for e in json.loads(out.read_text())["entries"]
               for st in e.get("steps", []) if st["name"].startswith("prune:")]
    assert details == [f"deleted sqlite backup b{i}, {size}, sha256 "
                       f"{op.steps[i - 1].args['sha256'][:16]} (beyond the newest 2)"
                       for i in (1, 2)]
    after = head(proj)
    r = run(proj, "backup", "prune", "--yes")
    assert (r.exit_code, r.stdout.splitlines()[-1]) == (0, "nothing to prune: 2 backups kept")
    assert head(proj) == after  # nothing to do records nothing
    r = run(proj, "backup", "prune", "--dry-run", "--json")
    data = json.loads(r.stdout)
    assert (data["deleted"], [b["id"] for b in data["backups"]], data["op_id"]) == (
        [], ["b3", "b4"], None)
    # an id prune freed can be taken again: the new backup is the one the ledger vouches for
    assert run(proj, "backup", "create", "--id", "b1").exit_code == 0
    r = run(proj, "backup", "restore", "b1", "--yes")
    assert r.exit_code == 0, r.output
    r = run(proj, "backup", "prune", "--dry-run")
    assert [(a, b) for a, b, _ in verdicts(r)] == [("delete", "b3"), ("keep", "b4"),
                                                    ("keep", "b1")]


def test_keep_days_counts_back_from_now_and_keeps_the_newest(
        proj: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    configure(proj, "keep_days = 7")
    for i in (1, 2):
        assert run(proj, "backup", "create", "--id", f"b{i}").exit_code == 0
    r = run(proj, "backup", "prune", "--yes")
    assert verdicts(r) == [("keep", "b1", "younger than 7 days (keep_days = 7)"),
                           ("keep", "b2", "younger than 7 days (keep_days = 7)")]
    later = clock.now() + timedelta(days=8)
    monkeypatch.setattr(clock, "now", lambda: later)
    r = run(proj, "backup", "prune", "--yes")
    assert r.exit_code == 0, r.output
    assert verdicts(r)[0] == ("delete", "b1", "older than 7 days")
    assert verdicts(r)[1] == ("keep", "b2", "the newest backup")


def test_prune_never_deletes_what_a_run_may_restore_or_the_ledger_does_not_know(
        proj: Path) -> None:
    configure(proj, "keep = 1")
    p = Project(proj, "", "sqlite")
    assert run(proj, "backup", "create", "--id", "old1").exit_code == 0
    assert run(proj, "backup", "create", "--id", "old2").exit_code == 0
    r = run(proj, "start", "--to", "v2.6")
    assert r.exit_code == 0, r.output
    s = p.settings()
    target = Target.from_url(s.config.require_target(), s.config.base_dir)
    BackupManager(target, "sqlite", proj / "backups").create("unknown1")  # not recorded
    (proj / "migrations" / "004_more.sql").write_text("CREATE TABLE more (x INTEGER);\n")
    crashed = p.cli("start", "--to", "v2.7", failpoint="migrate.started")
    assert crashed.returncode == 137, crashed.stderr
    assert run(proj, "backup", "create", "--id", "last").exit_code == 0
    manifest = proj / "backups" / "old2" / "manifest.json"
    data = json.loads(manifest.read_text())
    data["sha256"] = "0" * 64
    manifest.write_text(json.dumps(data))
    runs = [x.run_id for x in command.history(s)]
    r = run(proj, "backup", "prune", "--yes")
    assert r.exit_code == 0, r.output
    got = {bid: (action, why) for action, bid, why in verdicts(r)}
    assert got == {
        "old1": ("delete", "beyond the newest 1"),
        "old2": ("keep", "its manifest's sha256 differs from the one operation "
                 f"{_creator(proj, 'old2')} recorded ('statekeeper backup verify')"),
        runs[0]: ("keep", f"the backup of run {runs[0]}, the last completed run of its target "
                  "('statekeeper rollback RUN_ID --restore')"),
        "unknown1": ("keep", "the ledger records no backup of this id (not statekeeper's to "
                     "delete)"),
        runs[1]: ("keep", f"the backup of run {runs[1]}, unfinished (migrating)"),
        "last": ("keep", "one of the newest 1 (keep = 1)"),
    }
    assert not (proj / "backups" / "old1").exists()


def _creator(proj: Path, backup_id: str) -> str:
    for o in operations(proj):
        if o.op == "backup.create" and o.args.get("backup_id") == backup_id:
            return o.op_id
    raise AssertionError(backup_id)


@pytest.mark.parametrize(("body", "err"), [
    ("keep = 0", "[backup] keep must be at least 1, not 0"),
    ("keep_days = -1", "[backup] keep_days must be at least 0, not -1"),
    ("keep_days = 40000", "[backup] keep_days must be at most 36500, not 40000"),
    ("keep = true", "[backup] keep must be an integer, not boolean"),
    ("keep = 2.5", "[backup] keep must be an integer, not float"),
])
def test_bad_retention_keys(proj: Path, body: str, err: str) -> None:
    configure(proj, body)
    r = run(proj, "backup", "prune", "--dry-run")
    assert (r.exit_code, r.stderr) == (2, f"error: {proj / 'statekeeper.toml'}: {err}\n")


def test_no_rule_and_pgbackrest(proj: Path) -> None:
    r = run(proj, "backup", "prune", "--yes")
    assert (r.exit_code, r.stderr) == (2, (
        f"error: {proj / 'statekeeper.toml'}: [backup] keep (and/or keep_days) is not set: "
        "backup prune has no rule to apply (nothing was done)\n"))
    configure(proj, "keep = 1")
    for i in (1, 2):
        assert run(proj, "backup", "create", "--id", f"b{i}").exit_code == 0
    manifest = proj / "backups" / "b1" / "manifest.json"
    data = json.loads(manifest.read_text())
    data["method"] = "pgbackrest"  # as if taken with the pgbackrest method
    manifest.write_text(json.dumps(data))
    r = run(proj, "backup", "prune", "--yes")
    assert r.exit_code == 0, r.output
    assert verdicts(r)[0] == ("keep", "b1", "a pgBackRest backup (the repository's retention, "
                              "repo1-retention-full, expires it)")
    s = command.Settings.load(str(proj / "statekeeper.toml"))
    with pytest.raises(BackupError, match="repository's retention"):
        command.backup_manager(s).delete("b1")
    elsewhere = proj / "elsewhere"
    (proj / "backups" / "b2").rename(elsewhere)
    (proj / "backups" / "b2").symlink_to(elsewhere)
    with pytest.raises(BackupError, match="is a symbolic link: not deleting through it"):
        command.backup_manager(s).delete("b2")
    assert (elsewhere / "manifest.json").is_file()


def test_schedule_cron_and_systemd(proj: Path, tmp_path: Path) -> None:
    toml = proj / "statekeeper.toml"
    exe = "/usr/local/bin/statekeeper"
    r = run(proj, "backup", "schedule", "--cron", "--command", exe, "--at", "3:05")
    assert r.exit_code == 0, r.output
    user = r.stdout.splitlines()[0].split("as ")[-1].rstrip(")")
    assert r.stdout == (
        f"# statekeeper-backup: nightly backup at 03:05 (crontab -e as {user})\n"
        f"5 3 * * * cd {proj} && {exe} --config {toml} backup create --reason scheduled\n")
    configure(proj, "keep = 7")
    r = run(proj, "backup", "schedule", "--cron", "--command", exe)
    assert r.stdout.splitlines()[1] == (
        f"15 2 * * * cd {proj} && {exe} --config {toml} backup create --reason scheduled && "
        f"{exe} --config {toml} backup prune --yes --reason scheduled")
    r = run(proj, "backup", "schedule", "--systemd", "--command", exe, "--ticket", "CHG-1")
    assert r.exit_code == 0, r.output
    out = r.stdout
    assert f"ExecStart={exe} --config {toml} backup create --reason scheduled --ticket CHG-1\n" \
        f"ExecStart={exe} --config {toml} backup prune --yes --reason scheduled --ticket " \
        "CHG-1\n" in out
    assert "OnCalendar=*-*-* 02:15:00\nPersistent=true\n" in out
    assert out.splitlines()[-1] == ("# then: systemctl daemon-reload && systemctl enable --now "
                                    "statekeeper-backup.timer")
    if shutil.which("systemd-analyze"):
        real = shutil.which("true") or "/bin/true"
        r = run(proj, "backup", "schedule", "--systemd", "--command", real)
        units = tmp_path / "units"
        units.mkdir()
        name = None
        for line in r.stdout.splitlines(keepends=True):
            if line.startswith("# /etc/systemd/system/"):
                name = line.split("/")[-1].strip()
                continue
            if name and not line.startswith("# then"):
                with (units / name).open("a") as f:
                    f.write(line)
        p = subprocess.run(["systemd-analyze", "verify", *sorted(map(str, units.iterdir()))],
                           capture_output=True, text=True, timeout=60)
        assert p.returncode == 0, p.stderr
    for args, err in [
        (("--cron", "--at", "25:00"), "--at '25:00' is not a time of day (HH:MM, 24-hour, e.g. "
                                     "02:15)"),
    ]:
        r = run(proj, "backup", "schedule", *args)
        assert (r.exit_code, r.stderr) == (2, f"error: {err}\n")
    r = run(proj, "backup", "schedule")
    assert r.exit_code == 2 and "say which: --cron or --systemd" in r.stderr
    toml.write_text(toml.read_text() + "\n[upgrade]\nrequire_ticket = true\n")
    r = run(proj, "backup", "schedule", "--cron")
    assert r.exit_code == 2
    assert r.stderr.startswith(f"error: {toml}: [upgrade] require_ticket = true: pass --ticket")


def test_an_unfinished_restore_keeps_its_backup_and_an_unreadable_history_refuses() -> None:
    from statekeeper import retention
    from statekeeper.errors import HistoryError, IntegrityError
    from statekeeper.opreplay import replay
    from statekeeper.replay import RunEvent

    evs = [RunEvent(i, t, p, f"2026-01-01T00:00:0{i}.000000Z", i, {"user": "u", "host": "h"})
           for i, (t, p) in enumerate([
               ("op.created", {"op_id": "x", "op": "backup.restore", "target": None,
                               "args": {"backup_id": "b7"}, "version": "0",
                               "confirmed": "--yes"}),
               ("step.started", {"step": "restore", "kind": "restore", "backup_id": "b7"}),
           ], 1)]
    known = retention.read_ledger([], [replay(evs)])
    assert known.protected == {"b7": "restore operation x is interrupted"}
    bad = HistoryError(3, "unknown event type 'x'")
    bad.op_id = "y"  # type: ignore[attr-defined]
    with pytest.raises(IntegrityError, match=r"^operation y cannot be replayed .*: whether it "
                       r"holds a backup is unknown, so nothing is pruned$"):
        retention.read_ledger([], [bad])


def test_a_prune_that_stopped_half_way_is_finished_by_the_next(
        proj: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import statekeeper.backups.manager as manager

    configure(proj, "keep = 1")
    for i in (1, 2):
        assert run(proj, "backup", "create", "--id", f"b{i}").exit_code == 0
    real = manager.shutil.rmtree

    def fail(path: object, *a: object, **k: object) -> None:
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(manager.shutil, "rmtree", fail)
    r = run(proj, "backup", "prune", "--yes")
    assert r.exit_code == 1
    assert r.stderr == (f"error: backup b1: cannot delete {proj / 'backups' / 'b1'}: "
                        f"Permission denied: {proj / 'backups' / 'b1'}\n")
    op = operations(proj)[-1]
    assert (op.op, op.status, [s.status for s in op.steps]) == (
        "backup.prune", "failed", ["failed"])
    assert (proj / "backups" / "b1").is_dir()  # leftovers: no manifest, so not a backup
    assert [m.id for m in command.backup_list(command.Settings.load(
        str(proj / "statekeeper.toml")))] == ["b2"]
    monkeypatch.setattr(manager.shutil, "rmtree", real)
    r = run(proj, "backup", "prune", "--yes")
    assert r.exit_code == 0, r.output
    assert r.stdout.splitlines()[-2] == ("removed the leftovers of an interrupted prune, kept "
                                         "1 backup")
    assert not (proj / "backups" / "b1").exists()
    last = operations(proj)[-1]
    assert (last.args["leftovers"], last.backups_pruned()) == (["b1"], ["b1"])
    after = head(proj)
    assert run(proj, "backup", "prune", "--yes").stdout.splitlines()[-1] == (
        "nothing to prune: 1 backup kept")
    assert head(proj) == after
