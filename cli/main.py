"""Root of the command line: global options, error-to-exit-code mapping, command groups."""

from __future__ import annotations

import atexit
import gc
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from statekeeper import __version__
from statekeeper.errors import (
    EXIT_ATTENTION,
    EXIT_INTEGRITY,
    EXIT_LOCKED,
    EXIT_USAGE,
    StatekeeperError,
)

if TYPE_CHECKING:
    from statekeeper.command import Settings

# Start-up cost: this module and the command modules import neither ``ledger`` (SQLAlchemy,
# cryptography) nor ``statekeeper.migrations`` (psycopg) at import time; a command imports
# what it needs when it runs, so ``--help`` and usage errors do not pay ~250 ms of imports.
# benchmarks/upgrade_bench.py measures the cold start; tests/test_cli_startup.py keeps it so.


def _ledger_errors() -> Any:
    """``ledger.errors`` if ledger has been imported, else None: a ledger error can only have
    been raised by code that imported ledger, so there is nothing to import to recognize it."""
    return sys.modules.get("ledger.errors")


def _library_errors() -> tuple[type[Exception], ...]:
    errors = _ledger_errors()
    return (StatekeeperError,) if errors is None else (StatekeeperError, errors.LedgerError)


def exit_code_for(e: Exception) -> int:
    if isinstance(e, StatekeeperError):
        return e.exit_code
    errors = _ledger_errors()
    if errors is None:
        return EXIT_ATTENTION
    if isinstance(e, errors.LedgerUnreachable):
        return EXIT_ATTENTION
    if isinstance(e, errors.IntegrityViolation):
        return EXIT_INTEGRITY
    if isinstance(e, errors.ConfigurationError):
        return EXIT_USAGE
    if isinstance(e, errors.StreamConflict):
        return EXIT_LOCKED
    return EXIT_ATTENTION


def one_line(text: str) -> str:
    """An error message as one line: a message that arrives with line breaks (a driver's
    hint, a server's DETAIL) is joined, so stderr always carries exactly one error line."""
    if "\n" not in text and "\r" not in text:
        return text
    return " ".join(ln.strip() for ln in text.splitlines() if ln.strip())


class Group(click.Group):
    """Turns the library's typed errors into one line on stderr and a documented exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except _library_errors() as e:
            click.echo(f"error: {one_line(str(e))}", err=True)
            ctx.exit(exit_code_for(e))
        except KeyboardInterrupt:
            click.echo("error: interrupted", err=True)
            ctx.exit(130)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except Exception as e:  # a bug or an untranslated failure: one line, never a traceback
            click.echo(f"error: unexpected {type(e).__name__}: {one_line(str(e))}", err=True)
            ctx.exit(EXIT_ATTENTION)


class Obj:
    def __init__(self, config: str | None, ledger_url: str | None, key: str | None) -> None:
        self.config = config
        self.ledger_url = ledger_url
        self.key = key
        self._settings: Settings | None = None

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            from statekeeper.command import Settings

            self._settings = Settings.load(self.config, self.ledger_url, self.key)
        return self._settings


def emit_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True, default=str))


pass_obj = click.make_pass_decorator(Obj)
PathArg = click.Path(path_type=Path)


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="statekeeper")
@click.option("--config", "config", metavar="FILE", envvar="STATEKEEPER_CONFIG",
              help="Configuration file (default: ./statekeeper.toml).")
@click.option("--ledger", "ledger_url", metavar="URL",
              help="Ledger database URL (overrides [ledger] url).")
@click.option("--key", "key", metavar="PATH",
              help="Signing key file (overrides [ledger] key).")
@click.pass_context
def cli(ctx: click.Context, config: str | None, ledger_url: str | None, key: str | None) -> None:
    """statekeeper: safe, resumable, audited upgrades of database-backed applications.

    Exit codes: 0 success; 1 failed (rolled back cleanly); 2 usage or configuration error;
    3 needs attention; 4 integrity violation; 5 lock held by another run.
    """
    ctx.obj = Obj(config, ledger_url, key)


def _register() -> None:
    from . import backup_cmds, keys_cmds, ledger_cmds, upgrade_cmds

    cli.add_command(backup_cmds.backup)
    cli.add_command(keys_cmds.keys)
    cli.add_command(ledger_cmds.ledger_group)
    from . import migrate_cmds

    cli.add_command(migrate_cmds.migrate)
    for c in upgrade_cmds.COMMANDS:
        cli.add_command(c)


_register()


def main() -> None:
    # Exit cost: with SQLAlchemy and psycopg loaded, the interpreter's last garbage collection
    # at shutdown takes ~80 ms, after the command has finished, committed and flushed. Frozen
    # objects are skipped by that collection; atexit handlers, flushing of the standard
    # streams and weakref finalizers still run. Registered first, so it runs after the
    # handlers that libraries register while the command runs (atexit is last in, first out).
    atexit.register(gc.freeze)
    try:
        cli.main(prog_name="statekeeper")
    except SystemExit:
        raise
    except BrokenPipeError:
        sys.exit(1)
