"""``statekeeper rehearse``: the upgrade, its rollback and the proof, on a clone first."""

from __future__ import annotations

from typing import Any

import click

from statekeeper import command
from statekeeper.errors import RehearsalFailed

from .root import Obj, json_option, one_line, pass_obj, why_options


@click.command("rehearse")
@click.option("--to", "to_version", help="Version to upgrade to.")
@click.option("--from", "from_version", help="Version upgraded from (default: last tag).")
@click.option("--keep", is_flag=True, help="Keep the clone (and its scratch ledger) to look at.")
@click.option("--clone", "clone", type=click.Choice(["auto", "template", "restore"]),
              default="auto", show_default=True,
              help="PostgreSQL: how to clone. template is fastest but blocks new connections "
                   "to the database while it copies; restore takes a new pg_dump.")
@click.option("--clean", is_flag=True,
              help="Only remove what crashed rehearsals left (their clones), then exit.")
@why_options
@json_option
@pass_obj
def rehearse(obj: Obj, to_version: str | None, from_version: str | None, keep: bool,
             clone: str, clean: bool, as_json: bool, reason: str | None,
             ticket: str | None) -> None:
    """Rehearse an upgrade on a throwaway clone of the target: the upgrade with its SQL
    health checks (HTTP and command checks only by their rehearsal variants) and its release
    side in a scratch releases directory, its rollback, the clone compared with the database
    it was cloned from, and the upgrade again. Production is only read.

    Exit 0 when all of it passed; 1 when the upgrade would fail, its rollback would not
    give the database back as it was, or the second pass fails; 2 for configuration errors;
    130/143 when Ctrl-C/SIGTERM stopped it at a safe point (the clone is dropped).
    Recorded as an operation that 'start --require-rehearsal' looks for."""
    if clean:
        removed = command.rehearse_clean(obj.settings)
        if as_json:
            obj.emit(removed=removed)
            return
        for line in removed or ["nothing to clean"]:
            click.echo(f"removed {line}" if removed else line)
        return
    if to_version is None:
        raise click.UsageError("--to VERSION is required (or --clean)")

    def narrate(kind: str, p: dict[str, Any]) -> None:
        from statekeeper.narrate import narrate as line_of

        line = line_of(kind, p)
        if line is not None and not as_json:
            click.echo(f"[rehearsal] {line}")

    try:
        result = command.rehearse(obj.settings, to_version, from_version, keep=keep,
                                  clone=clone, observer=narrate, reason=reason, ticket=ticket)
    except RehearsalFailed as e:
        # the --json error document carries the whole result (docs/result.schema.json)
        found = e.result
        obj.partial = lambda: {"rehearsal": found}
        if not as_json:
            _show(found)
        raise
    if as_json:
        obj.emit(rehearsal=result)
        return
    _show(result)


def _show(r: dict[str, Any]) -> None:
    """The result, after the narrated passes: one line a pass, then the verdict."""
    if not r:
        return
    c = r.get("clone") or {}
    click.echo(f"clone: {c.get('clone')} ({c.get('method')}: {c.get('why')})")
    for name, p in (r.get("passes") or {}).items():
        total = "" if p.get("ms") is None else f" in {p['ms']} ms"
        migrations = sum(s.get("ms") or 0 for s in p["steps"]
                         if s["name"].startswith(("migrate:", "revert:")))
        click.echo(f"{PASS_NAMES.get(name, name)}: {p['state']}{total} "
                   f"(migrations {migrations} ms)")
        for s in p["steps"]:
            if s.get("error"):
                click.echo(f"  {s['name']}: {one_line(s['error'])}")
    for m in r.get("lossy") or []:
        click.echo(f"lossy: the down part of {m} does not give the data back")
    rel = r.get("release")
    if rel:
        click.echo(f"release side: rehearsed in {rel.get('dir')}")
    for s in r.get("variants") or []:
        click.echo(f"rehearsal variant: {s}")
    for s in r.get("not_rehearsed") or []:
        click.echo(f"not rehearsed: {s}")
    verdict = "passed" if r.get("passed") else "FAILED"
    click.echo(f"rehearsal {r.get('rehearsal_id')}: {verdict}"
               + (" (clone kept)" if r.get("kept") else ""))


PASS_NAMES = {"forward": "upgrade", "rollback": "rollback", "again": "upgrade again"}
