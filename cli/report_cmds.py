"""``statekeeper report``: an audit report replayed from the verified ledger."""

from __future__ import annotations

from pathlib import Path

import click

from statekeeper import command
from statekeeper.errors import EXIT_INTEGRITY, EXIT_OK

from .root import Obj, PathArg, error_doc, json_option, one_line, pass_obj

FORMATS = ("html", "pdf", "csv", "json")  # statekeeper.report.FORMATS (not imported: start-up)


@click.command("report")
@click.option("--format", "fmt", required=True, type=click.Choice(FORMATS),
              help="html (one self-contained file), pdf, csv (one row per step) or json.")
@click.option("--run", "run_id", metavar="RUN_ID",
              help="Only this run (or operation).")
@click.option("--since", metavar="DATE",
              help="Runs and operations created at or after DATE (YYYY-MM-DD or ISO 8601).")
@click.option("--until", metavar="DATE",
              help="... and before DATE (a date alone includes that whole day).")
@click.option("--against", type=PathArg, metavar="CHECKPOINT",
              help="A checkpoint saved earlier: prove the ledger still extends it.")
@click.option("--tz", metavar="ZONE",
              help="Show times in this IANA zone (default UTC); the offset is always shown.")
@click.option("--out", required=True, type=PathArg, metavar="FILE",
              help="Where to write the report (0600).")
@json_option
@pass_obj
def report(obj: Obj, fmt: str, run_id: str | None, since: str | None, until: str | None,
           against: Path | None, tz: str | None, out: Path, as_json: bool) -> None:
    """Write an audit report replayed from the verified ledger.

    The whole ledger is verified first. If it fails, the report is still written, says so at
    the top (and in every PDF page's header), shows only the events before the first bad
    seq, and the command exits 4.
    """
    r = command.report(obj.settings, fmt, out, run_id, since, until, against, tz)
    obj.say(f"wrote {r.format} report: {r.path} ({r.entries} runs and operations)")
    problem = None
    if not r.ok:
        problem = ("IntegrityError", f"{one_line(r.message)} The report at {r.path} says so.")
    elif r.unreadable:
        problem = ("HistoryError", f"{r.unreadable} run(s) or operation(s) in the report "
                   "cannot be replayed (an illegal history); the report lists them")
    code = EXIT_OK if problem is None else EXIT_INTEGRITY
    if problem is not None:
        click.echo(f"error: {problem[1]}", err=True)
    if as_json:
        obj.emit(code, None if problem is None else error_doc(*problem, code),
                 format=r.format, path=str(r.path), entries=r.entries)
    raise click.exceptions.Exit(code)
