"""``statekeeper health``: the configured health checks, run now."""

from __future__ import annotations

import click

from statekeeper import command
from statekeeper.errors import EXIT_FAILED, EXIT_OK

from .root import Obj, error_doc, json_option, one_line, pass_obj


@click.command("health")
@json_option
@pass_obj
def health(obj: Obj, as_json: bool) -> None:
    """Run the [health] checks now, outside any upgrade (no ledger, no lock).

    Prints one line per check; exits 0 when every check passes (or none is configured), 1
    when one fails.
    """
    report = command.health(obj.settings)
    code = EXIT_OK if report.ok else EXIT_FAILED
    if as_json:
        failed = [c.name for c in report.checks if not c.ok]
        err = error_doc(None, f"health check failed: {', '.join(failed)}", code) if failed \
            else None
        obj.emit(code, err, **report.to_payload())
    elif not report.checks:
        click.echo(f"no health checks configured in {obj.settings.config.source}")
    else:
        for c in report.checks:
            mark = "ok  " if c.ok else "FAIL"
            click.echo(one_line(f"{mark}  {c.name} ({c.kind}): {c.outcome()}"))
    raise click.exceptions.Exit(code)
