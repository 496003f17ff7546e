"""``statekeeper migrate``: tracked SQL migrations on the target database."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from statekeeper import command

from .root import (
    Obj,
    OpNote,
    PathArg,
    confirmer,
    emit_json,
    json_option,
    pass_obj,
    why_options,
    yes_option,
)

if TYPE_CHECKING:  # statekeeper.migrations imports psycopg: only when a command runs
    from statekeeper.migrations import AppliedMigration, Migration, MigrationStatus


def target_options(f: Callable[..., Any]) -> Callable[..., Any]:
    f = click.option("--dir", "migrations_dir", type=PathArg, metavar="DIR",
                     help="Migrations directory (overrides [migrations] dir).")(f)
    f = click.option("--target", "target_url", metavar="URL",
                     help="Target database URL (overrides [target] url).")(f)
    return f


@click.group("migrate")
def migrate() -> None:
    """Tracked SQL migrations on the target database.

    Files DIR/*.sql run in natural file-name order; a line '-- statekeeper:down' starts the
    down part; a first line '-- statekeeper:no-transaction' runs the file outside a
    transaction. What is applied is recorded in the table statekeeper_changelog.

    up, down, tag and baseline are recorded in the ledger as operations (stream ops/ID: who,
    why, each migration with its checksums); down asks for confirmation (--yes when not on a
    terminal).

    Exit codes: 0 success; 1 a migration or the database failed; 2 bad input, an edited or
    missing applied file, a rollback over an irreversible migration, or down not confirmed;
    3 the ledger failed mid-way, or the target or ledger was lost after a migration was
    applied; 4 the ledger does not verify; 5 another process holds the migration lock or a
    run holds the target; 6 the target or the ledger cannot be reached (nothing was done).
    """


def _row_json(r: MigrationStatus) -> dict[str, Any]:
    return {
        "id": r.id, "state": r.state, "applied": r.applied, "checksum": r.checksum,
        "applied_at": r.applied_at, "execution_ms": r.execution_ms, "run_id": r.run_id,
        "tag": r.tag, "reversible": r.reversible, "no_transaction": r.no_transaction,
        "path": str(r.path) if r.path else None,
    }


@migrate.command("status", short_help="Applied, pending, edited, missing migrations.")
@target_options
@json_option
@pass_obj
def status(obj: Obj, target_url: str | None, migrations_dir: Path | None, as_json: bool) -> None:
    """Show every migration: applied, pending, edited (file changed) or missing (file gone)."""
    rows, tags = command.migrate_status(obj.settings, target_url, migrations_dir)
    if as_json:
        emit_json([_row_json(r) for r in rows])
        return
    if not rows:
        click.echo("no migrations")
    else:
        width = max(len("MIGRATION"), *(len(r.id) for r in rows))
        click.echo(f"{'MIGRATION':<{width}}  {'STATE':<8}  {'APPLIED AT':<27}  DOWN  TAG")
        for r in rows:
            down = "yes" if r.reversible else "no"
            click.echo(f"{r.id:<{width}}  {r.state:<8}  {r.applied_at or '-':<27}  "
                       f"{down:<4}  {r.tag or ''}".rstrip())
    applied = sum(r.applied for r in rows)
    click.echo(f"{applied} applied, {len(rows) - applied} pending"
               + (f"; tags: {', '.join(t.name for t in tags)}" if tags else ""))


@migrate.command("validate", short_help="Refuse edited or missing applied files.")
@target_options
@json_option
@pass_obj
def validate(obj: Obj, target_url: str | None, migrations_dir: Path | None,
             as_json: bool) -> None:
    """Check that every applied migration's file is present and unchanged (exit 2 if not)."""
    applied, pending = command.migrate_validate(obj.settings, target_url, migrations_dir)
    if as_json:
        obj.emit(applied=[m.id for m in applied], pending=[m.id for m in pending])
        return
    click.echo(f"ok: {len(applied)} applied migrations match their files; {len(pending)} pending")


@migrate.command("up", short_help="Apply the pending migrations in order.")
@target_options
@click.option("--to", "to", metavar="MIGRATION", help="Stop after this migration id.")
@click.option("--dry-run", is_flag=True, help="Print the SQL that would run; change nothing.")
@why_options
@json_option
@pass_obj
def up(obj: Obj, target_url: str | None, migrations_dir: Path | None, to: str | None,
       dry_run: bool, reason: str | None, ticket: str | None, as_json: bool) -> None:
    """Apply the pending migrations in order, each in its own transaction.

    A failing migration stops the run (exit 1) and is rolled back; the ones before it stay
    applied.
    """
    if dry_run:
        text = command.migrate_sql(obj.settings, target_url, migrations_dir, target_id=to)
        if as_json:
            obj.emit(dry_run=True, sql=text)
            return
        click.echo(text or "-- nothing to apply: the schema is up to date\n", nl=False)
        return
    applied: list[dict[str, Any]] = []

    def done(rec: AppliedMigration) -> None:
        applied.append({"id": rec.id, "execution_ms": rec.execution_ms})
        obj.say(f"applied {rec.id} ({rec.execution_ms} ms)")

    note = OpNote(obj)
    obj.partial = lambda: {"op_id": note.op_id, "applied": applied}
    command.migrate_up(obj.settings, target_url, migrations_dir, target_id=to,
                       on_applied=done, reason=reason, ticket=ticket, observer=note)
    if as_json:
        obj.emit(op_id=note.op_id, applied=applied)
        return
    if not applied:
        click.echo("nothing to apply: the schema is up to date")
    else:
        n = len(applied)
        click.echo(f"{n} migration{'s' if n != 1 else ''} applied")
    note.echo()


@migrate.command("down", short_help="Roll back to a tag, newest first.")
@target_options
@click.option("--to-tag", "to_tag", required=True, metavar="TAG",
              help="Roll back to the schema state tagged TAG.")
@click.option("--dry-run", is_flag=True, help="Print the SQL that would run; change nothing.")
@yes_option
@why_options
@json_option
@pass_obj
def down(obj: Obj, target_url: str | None, migrations_dir: Path | None, to_tag: str,
         dry_run: bool, yes: bool, reason: str | None, ticket: str | None,
         as_json: bool) -> None:
    """Run the down parts of the migrations applied after TAG, newest first.

    Refused (exit 2) before anything runs if one of them has no down part. What the down
    parts drop is lost: asks for confirmation on a terminal, needs --yes otherwise.
    """
    if dry_run:
        text = command.migrate_sql(obj.settings, target_url, migrations_dir, to_tag=to_tag)
        if as_json:
            obj.emit(dry_run=True, sql=text, to_tag=to_tag)
            return
        click.echo(text or f"-- nothing to revert: the schema is at tag {to_tag}\n", nl=False)
        return
    done_ids: list[str] = []

    def done(m: Migration) -> None:
        done_ids.append(m.id)
        obj.say(f"reverted {m.id}")

    note = OpNote(obj)
    obj.partial = lambda: {"op_id": note.op_id, "to_tag": to_tag, "reverted": done_ids}
    reverted = command.migrate_down(obj.settings, target_url, migrations_dir, to_tag,
                                    on_reverted=done, reason=reason, ticket=ticket,
                                    yes=yes, confirm=confirmer(), observer=note)
    if as_json:
        obj.emit(op_id=note.op_id, to_tag=to_tag, reverted=list(reverted))
        return
    if not reverted:
        click.echo(f"nothing to revert: the schema is at tag {to_tag}")
    else:
        click.echo(f"at tag {to_tag}: {len(reverted)} reverted")
    note.echo()


@migrate.command("tag", short_help="Tag the current schema state.")
@target_options
@click.argument("name")
@why_options
@json_option
@pass_obj
def tag(obj: Obj, target_url: str | None, migrations_dir: Path | None, name: str,
        reason: str | None, ticket: str | None, as_json: bool) -> None:
    """Tag the current schema state as NAME (say v2.5), to roll back to later."""
    note = OpNote(obj)
    t = command.migrate_tag(obj.settings, name, target_url, migrations_dir, reason=reason,
                            ticket=ticket, observer=note)
    if as_json:
        obj.emit(op_id=note.op_id, tag=t.name, migration=t.migration_id)
        return
    at = f"after {t.migration_id}" if t.migration_id else "with no migrations applied"
    click.echo(f"tagged {t.name} {at}")
    note.echo()


@migrate.command("baseline", short_help="Record migrations as already applied, run nothing.")
@target_options
@click.option("--tag", "tag", required=True, metavar="VERSION",
              help="Tag the baselined state VERSION (the first upgrade's from-version).")
@click.option("--through", "through", metavar="MIGRATION",
              help="The last migration already in the database (default: every file).")
@click.option("--force", is_flag=True,
              help="Replace changelog rows and tags that disagree (recorded in the ledger).")
@why_options
@pass_obj
def baseline(obj: Obj, target_url: str | None, migrations_dir: Path | None, tag: str,
             through: str | None, force: bool, reason: str | None,
             ticket: str | None) -> None:
    """Record that the migrations up to MIGRATION (default: all in the directory) are
    already reflected in the database (applied by hand, or by another tool), without running
    their SQL, and tag that state VERSION, so that plan and start apply only the later ones
    and the first upgrade goes from VERSION.

    Recorded as a migrate.baseline operation with each file's checksums and the database's
    fingerprint. Refused (exit 2) when the changelog already has entries, unless --force,
    which replaces the rows and tags that disagree and records what it replaced.
    """
    note = OpNote()
    plan, op_id = command.migrate_baseline(obj.settings, tag, through, target_url,
                                           migrations_dir, force=force, reason=reason,
                                           ticket=ticket, observer=note)
    at = f"through {plan.through}" if plan.through else "with no migrations"
    if op_id is None:
        click.echo(f"nothing to do: the changelog already records {at}, tagged {tag}")
        return
    n = len(plan.write)
    replaced = (f"; replaced {len(plan.replaced)} row{'s' if len(plan.replaced) != 1 else ''}"
                f" and {len(plan.replaced_tags)} tag{'s' if len(plan.replaced_tags) != 1 else ''}"
                if plan.forced and (plan.replaced or plan.replaced_tags) else "")
    click.echo(f"baselined {tag} {at}: {n} migration{'s' if n != 1 else ''} recorded as "
               f"applied, none run{replaced}")
    note.echo()


@migrate.command("sql", short_help="Print the pending SQL; change nothing.")
@target_options
@json_option
@pass_obj
def sql(obj: Obj, target_url: str | None, migrations_dir: Path | None, as_json: bool) -> None:
    """Print the SQL of the pending migrations, in order; change nothing."""
    text = command.migrate_sql(obj.settings, target_url, migrations_dir)
    if as_json:
        obj.emit(sql=text)
        return
    click.echo(text or "-- nothing to apply: the schema is up to date\n", nl=False)
