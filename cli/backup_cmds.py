"""``statekeeper backup``: create, list, verify and restore verified backups."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import click

from statekeeper import command
from statekeeper.sizes import size_text

from .root import (
    Obj,
    OpNote,
    confirmer,
    emit_json,
    json_option,
    pass_obj,
    why_options,
    yes_option,
)

F = Callable[..., Any]


def target_opt(f: F) -> F:
    return click.option(
        "--target", "target_url", metavar="URL",
        help="Target database URL (overrides [target] url).",
    )(f)


def _table(rows: Sequence[tuple[str, ...]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        click.echo("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())


def _fp_summary(m: Any) -> str:
    tables = m.fingerprint.get("tables", {})
    rows = sum(int(t.get("rows", 0)) for t in tables.values())
    return f"{m.fingerprint_digest[:16]} ({len(tables)} tables, {rows} rows)"


@click.group("backup")
def backup() -> None:
    """Verified backups of the target database ([backup] method: pg_dump, pgbackrest, sqlite).

    create, restore and prune are recorded in the ledger as operations (stream ops/ID: who,
    why, the backup's sha256 and fingerprints); restore and prune ask for confirmation (--yes
    when not on a terminal). schedule prints the cron line or systemd units of a nightly
    backup.

    Exit codes: 0 success; 1 the backup or restore failed (nothing half-done);
    2 usage or configuration error, unknown backup id, restore into another database, restore
    or prune not confirmed, no [backup] keep/keep_days to prune by; 3 a restore needs
    attention (fingerprint differs, or a cluster restore stopped half-way), or the ledger
    failed mid-way; 4 an artifact does not match its manifest (corrupt or missing), or the
    ledger does not verify (or holds a run or operation prune cannot replay); 5 a run or
    another process holds the target; 6 the target or the ledger cannot be reached (nothing
    was done).
    """


@backup.command("create")
@target_opt
@click.option("--id", "backup_id", metavar="ID",
              help="Backup id (default: UTC timestamp and a random suffix).")
@why_options
@json_option
@pass_obj
def backup_create(obj: Obj, target_url: str | None, backup_id: str | None,
                  reason: str | None, ticket: str | None, as_json: bool) -> None:
    """Back up the target; the manifest is written only once the artifact is complete."""
    note = OpNote(obj)
    m = command.backup_create(obj.settings, target_url, backup_id, reason=reason,
                              ticket=ticket, observer=note)
    if as_json:
        obj.emit(**m.to_dict(include_fingerprint=False), op_id=note.op_id)
        return
    click.echo(f"created backup {m.id} ({m.method}, {size_text(m.size)}) in {m.directory}")
    click.echo(f"  sha256       {m.sha256}")
    click.echo(f"  fingerprint  {_fp_summary(m)}")
    if m.restore_point:
        click.echo(f"  pgbackrest   {m.pgbackrest_label}, restore point {m.restore_point}")
    note.echo()


@backup.command("list")
@target_opt
@json_option
@pass_obj
def backup_list(obj: Obj, target_url: str | None, as_json: bool) -> None:
    """List complete backups, oldest first (a backup without its manifest is not listed)."""
    items = command.backup_list(obj.settings, target_url)
    if as_json:
        emit_json([m.to_dict(include_fingerprint=False) for m in items])
        return
    if not items:
        click.echo(f"no backups in {obj.settings.config.backup_dir()}")
        return
    rows = [("ID", "CREATED", "METHOD", "SIZE", "DATABASE", "FINGERPRINT")]
    rows += [(m.id, m.created_at[:19].replace("T", " "), m.method, size_text(m.size),
              m.database, m.fingerprint_digest[:16]) for m in items]
    _table(rows)


@backup.command("verify")
@click.argument("backup_id", metavar="ID")
@target_opt
@json_option
@pass_obj
def backup_verify(obj: Obj, backup_id: str, target_url: str | None, as_json: bool) -> None:
    """Re-hash backup ID's artifact against its manifest (exit 4 if it differs or is gone)."""
    m = command.backup_verify(obj.settings, backup_id, target_url)
    if as_json:
        obj.emit(**m.to_dict(include_fingerprint=False))
        return
    click.echo(f"backup {m.id} OK: {m.artifact_path} matches its manifest "
               f"({size_text(m.size)}, sha256 {m.sha256[:16]})")


@backup.command("restore")
@click.argument("backup_id", metavar="ID")
@target_opt
@click.option("--allow-other-database", is_flag=True,
              help="Restore even into a database other than the one backed up.")
@yes_option
@click.option("--without-ledger", is_flag=True,
              help="The ledger is lost or unreachable: restore anyway, recording nothing.")
@why_options
@json_option
@pass_obj
def backup_restore(obj: Obj, backup_id: str, target_url: str | None,
                   allow_other_database: bool, yes: bool, without_ledger: bool,
                   reason: str | None, ticket: str | None, as_json: bool) -> None:
    """Put the target back exactly as it was at backup ID, and prove it by fingerprint.

    Every change made since the backup is discarded: asks for confirmation on a terminal,
    needs --yes otherwise. The backup is verified first. pg_dump: every user schema is
    dropped and the dump replayed in one transaction. pgbackrest: stop, point-in-time
    restore to the backup's restore point, start. sqlite: the file is replaced atomically.
    """
    note = OpNote(obj)
    r = command.backup_restore(obj.settings, backup_id, target_url, allow_other_database,
                               reason=reason, ticket=ticket, yes=yes, confirm=confirmer(),
                               observer=note, without_ledger=without_ledger)
    if as_json:
        obj.emit(id=r.manifest.id, duration_ms=r.duration_ms,
                 fingerprint=r.fingerprint.digest if r.fingerprint else None,
                 undone=r.damage, op_id=note.op_id)
        return
    click.echo(f"restored backup {r.manifest.id} into {r.target} "
               f"in {r.duration_ms / 1000:.1f} s")
    for line in r.damage:
        click.echo(f"  undone: {line}")
    click.echo(f"  fingerprint {r.manifest.fingerprint_digest[:16]} matches the backup")
    note.echo()


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'s' if n != 1 else ''}"


@backup.command("prune")
@target_opt
@click.option("--dry-run", is_flag=True,
              help="Show what would be deleted and why; delete and record nothing.")
@yes_option
@why_options
@json_option
@pass_obj
def backup_prune(obj: Obj, target_url: str | None, dry_run: bool, yes: bool,
                 reason: str | None, ticket: str | None, as_json: bool) -> None:
    """Delete the backups [backup] keep = N and keep_days = D no longer keep.

    Kept: the newest N, those younger than D days, the newest one, and, whatever the
    rules, the backup of an unfinished or failed run, of the last completed run of each
    target, of a restore that did not finish, any backup the ledger does not record (or
    whose sha256 differs from the ledger's), and pgBackRest backups (the repository's
    retention, repo1-retention-full, expires those). Ages are the ledger's. Asks for
    confirmation on a terminal, needs --yes otherwise (not with --dry-run).
    """
    note = OpNote(obj)
    verdicts = command.backup_prune(obj.settings, target_url, dry_run=dry_run, reason=reason,
                                    ticket=ticket, yes=yes, confirm=confirmer(),
                                    observer=note)
    gone = [v for v in verdicts if v.delete]
    size = size_text(sum(v.manifest.size for v in gone))
    if as_json:
        obj.emit(dry_run=dry_run, deleted=[v.manifest.id for v in gone] if not dry_run else [],
                 backups=[v.to_dict() for v in verdicts], op_id=note.op_id)
        return
    if not verdicts:
        click.echo(f"no backups in {obj.settings.config.backup_dir()}")
        return
    rows: list[tuple[str, ...]] = [("", "ID", "CREATED", "METHOD", "SIZE", "WHY")]
    rows += [("delete" if v.delete else "keep", v.manifest.id,
              v.manifest.created_at[:19].replace("T", " "), v.manifest.method,
              size_text(v.manifest.size), v.why.removeprefix("kept: ")) for v in verdicts]
    _table(rows)
    kept = _plural(len(verdicts) - len(gone), "backup")
    if not gone and note.op_id is not None:
        click.echo(f"removed the leftovers of an interrupted prune, kept {kept}")
        note.echo()
    elif not gone:
        click.echo(f"nothing to prune: {kept} kept")
    elif dry_run:
        click.echo(f"would delete {_plural(len(gone), 'backup')} ({size}), keep {kept} "
                   "(dry run: nothing deleted or recorded)")
    else:
        click.echo(f"deleted {_plural(len(gone), 'backup')} ({size}), kept {kept}")
        note.echo()


@backup.command("schedule")
@click.option("--cron", "kind", flag_value="cron", help="Print a crontab line.")
@click.option("--systemd", "kind", flag_value="systemd",
              help="Print a systemd service and its timer.")
@click.option("--at", "at", default="02:15", show_default=True, metavar="HH:MM",
              help="Time of day, the host's local time.")
@click.option("--command", "program", metavar="PATH",
              help="The statekeeper executable the job runs (default: the one on PATH).")
@click.option("--ticket", metavar="ID",
              help="Change request the scheduled backups are done under (required when "
                   "[upgrade] require_ticket = true).")
@json_option
@pass_obj
def backup_schedule(obj: Obj, kind: str | None, at: str, program: str | None,
                    ticket: str | None, as_json: bool) -> None:
    """Print the entry for a nightly backup: a crontab line (--cron), or a systemd service
    and timer (--systemd). Nothing is installed or recorded.

    The job runs 'backup create --reason scheduled' (recorded like any backup), then 'backup
    prune --yes' when [backup] keep or keep_days is set, as the user running this command,
    in the directory of statekeeper.toml.
    """
    import getpass
    import shutil
    import sys

    if kind is None:
        raise click.UsageError("say which: --cron or --systemd")
    if program is not None:
        words: tuple[str, ...] = (str(Path(program).absolute()),)
    elif (found := shutil.which("statekeeper")) is not None:
        words = (str(Path(found).absolute()),)
    else:
        words = (sys.executable, "-m", "cli")
    out = command.backup_schedule(obj.settings, kind, words, at, getpass.getuser(), ticket)
    if as_json:
        obj.emit(kind=kind, files=out)
        return
    first = True
    for name, text in out.items():
        if kind == "systemd":
            click.echo(("" if first else "\n") + f"# /etc/systemd/system/{name}")
        click.echo(text, nl=False)
        first = False
    if kind == "systemd":
        names = list(out)
        click.echo(f"\n# then: systemctl daemon-reload && systemctl enable --now {names[1]}")
