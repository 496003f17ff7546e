"""The root group and what every command module shares: global options, the error boundary
of the command line (typed errors to one line and an exit code), ``Obj``, JSON output.

The command modules import this one and nothing else of ``cli``; :mod:`cli.main` registers
them on :data:`cli`, so no module of the package imports back into one that imports it.
"""

from __future__ import annotations

import functools
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from statekeeper._version import __version__
from statekeeper.errors import (
    EXIT_ATTENTION,
    EXIT_INTERRUPTED,
    MigrationError,
    StatekeeperError,
    exit_code_after,
)

if TYPE_CHECKING:
    from statekeeper.command import Settings

# Start-up cost: this module and the command modules import neither ``ledger`` (SQLAlchemy,
# cryptography) nor ``statekeeper.migrations`` (psycopg) at import time; a command imports
# what it needs when it runs, so ``--help`` and usage errors do not pay ~250 ms of imports.
# benchmarks/upgrade_bench.py measures the cold start; tests/test_cli_startup.py keeps it so.


# Everything str.splitlines() breaks at, and the other control characters: a message may quote
# hostile input (a key id from an export file), and a form feed or an escape sequence from it
# must neither split the error line nor reach the terminal.
_BREAKS = re.compile("[\n\r\x0b\x0c\x1c-\x1e\x85\u2028\u2029]")
_CONTROL = re.compile("[\x00-\x08\x0e-\x1b\x1f\x7f-\x84\x86-\x9f]")


def one_line(text: str) -> str:
    """An error message as one line: a message that arrives with line breaks (a driver's
    hint, a server's DETAIL) is joined, so stderr always carries exactly one error line;
    other control characters are shown escaped (``\\x1b``)."""
    if _BREAKS.search(text):
        text = " ".join(p.strip() for p in _BREAKS.split(text) if p.strip())
    text = text.replace("\t", " ")
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def show_error(e: StatekeeperError) -> None:
    """The one ``error:`` line on stderr; under it, for a failed migration (indented, like
    psql's ``LINE 3:``), the failing statement's line with a caret, the server's DETAIL, HINT
    and CONTEXT and the NOTICEs and WARNINGs it raised. Only ``error:`` lines are errors: a
    script reading stderr still finds one."""
    click.echo(f"error: {one_line(str(e))}", err=True)
    if isinstance(e, MigrationError):
        for line in e.display_lines():
            click.echo(f"  {one_line(line)}", err=True)


def error_doc(cls: str | None, message: str, code: int, **more: Any) -> dict[str, Any]:
    """The ``error`` member of a ``--json`` result (docs/result.schema.json)."""
    return {"class": cls, "message": message, "exit_code": code, **more}


def exception_doc(e: BaseException, code: int) -> dict[str, Any]:
    more = {"migration": e.fields()} if isinstance(e, MigrationError) else {}
    return error_doc(type(e).__name__, str(e), code, **more)


_ARGV = "statekeeper.argv"
RUN_COMMANDS = ("start", "resume", "rollback")


class Group(click.Group):
    """Turns the library's typed errors into one line on stderr and a documented exit code
    (and, under ``--json``, a result document on stdout). The library's verbs raise only
    statekeeper's tree (statekeeper.errors.error_boundary), so that tree is all there is to
    map."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        # kept for a usage error under --json: click's parser fails before the command's
        # own --json is seen, so the request is read from the words given
        ctx.meta[_ARGV] = list(args)
        return super().parse_args(ctx, args)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except StatekeeperError as e:
            obj = ctx.obj if isinstance(ctx.obj, Obj) else None
            picked = getattr(e, "run_id", None)  # resume without a run id names the one picked
            if obj is not None and isinstance(picked, str) and obj.run_hint is None:
                obj.run_hint = picked
            code = exit_code_after(e, obj is not None and obj.progressed,
                                   obj is not None and obj.run_command)
            show_error(e)
            self._json_error(ctx, exception_doc(e, code))
            ctx.exit(code)
        except KeyboardInterrupt as e:
            # a run stopped at once (the second Ctrl-C) says which run and how to go on
            said = one_line(str(e)) if getattr(e, "run_id", None) else ""
            click.echo(f"error: {said or 'interrupted'}", err=True)
            self._json_error(ctx, error_doc(None, said or "interrupted", EXIT_INTERRUPTED))
            ctx.exit(EXIT_INTERRUPTED)
        except click.ClickException as e:  # a usage error, click's or the command's own
            obj = ctx.obj if isinstance(ctx.obj, Obj) else None
            if obj is None or not (obj.as_json or _asked_json(ctx)):
                raise  # click's own display: usage, hint and the error
            if not obj.as_json:  # click failed to parse the command: its --json never ran
                obj.as_json = True
                sub = getattr(e, "ctx", None)
                if sub is not None and sub is not ctx:
                    obj.command = " ".join(sub.command_path.split()[1:])
            message = e.format_message()
            click.echo(f"error: {one_line(message)}", err=True)
            self._json_error(ctx, error_doc("UsageError", message, e.exit_code))
            ctx.exit(e.exit_code)
        except (click.exceptions.Exit, click.Abort):
            raise
        except Exception as e:  # a bug or an untranslated failure: one line, never a traceback
            click.echo(f"error: unexpected {type(e).__name__}: {one_line(str(e))}", err=True)
            self._json_error(ctx, exception_doc(e, EXIT_ATTENTION))
            ctx.exit(EXIT_ATTENTION)
        except BaseException as e:  # last: only what no clause above took (SystemExit, ...)
            from statekeeper.interrupts import Interrupted

            if not isinstance(e, Interrupted):
                raise
            # stopped at a safe point and recorded: the run is resumable; say how
            click.echo(f"error: {one_line(str(e))}", err=True)
            self._json_error(ctx, error_doc(None, one_line(str(e)), e.exit_code))
            ctx.exit(e.exit_code)

    @staticmethod
    def _json_error(ctx: click.Context, error: dict[str, Any]) -> None:
        obj = ctx.obj if isinstance(ctx.obj, Obj) else None
        if obj is None or not obj.as_json:
            return
        try:
            own = obj.partial()
        except Exception:  # what failed may be what the partial result reads (the ledger)
            own = {}
        if obj.command in RUN_COMMANDS:  # the schema: a run command always names its run
            own = {"run_id": obj.run_hint, "run": None, **own}
        emit_json(obj.result(error["exit_code"], error, **own))


def _asked_json(ctx: click.Context) -> bool:
    """Was ``--json`` among the words given (before a ``--``)?"""
    words = ctx.meta.get(_ARGV) or []
    return "--json" in words[:words.index("--")] if "--" in words else "--json" in words


class Obj:
    def __init__(self, config: str | None, ledger_url: str | None, key: str | None,
                 quiet: bool = False, verbose: int = 0) -> None:
        self.config = config
        self.ledger_url = ledger_url
        self.key = key
        self.quiet = quiet  # -q: no progress (cli.progress), errors only on stderr
        self.verbose = verbose
        self._settings: Settings | None = None
        #: --json: the command's result (or its error) is one JSON document on stdout
        self.as_json = False
        #: this invocation recorded progress (a run's state change or step, an operation's
        #: step): an error that promises "nothing was done" then needs attention instead
        self.progressed = False
        #: the command's result so far, for the document of an error that ends it
        self.partial: Callable[[], dict[str, Any]] = dict
        self.command: str | None = None  # its path under ``statekeeper``, for the document
        #: start, resume, rollback: exit 1 is their run's rolled_back state, nothing else
        self.run_command = False
        #: the run an error names when the command was not given one (resume picks it)
        self.run_hint: str | None = None

    def result(self, code: int, error: dict[str, Any] | None, **own: Any) -> dict[str, Any]:
        """A ``--json`` result: ``ok``, ``exit_code``, ``command``, ``error`` (null on
        success) and the command's own members (docs/result.schema.json)."""
        return {**own, "ok": code == 0, "exit_code": code, "command": self.command,
                "error": error}

    def emit(self, code: int = 0, error: dict[str, Any] | None = None, **own: Any) -> None:
        """Print the ``--json`` result of a command that ends with ``code``."""
        emit_json(self.result(code, error, **own))

    def say(self, line: str) -> None:
        """A line for the human: on stdout, or on stderr under ``--json``."""
        click.echo(line, err=self.as_json)

    @property
    def settings(self) -> Settings:
        return self.load()

    def load(self, target_url: str | None = None) -> Settings:
        """The settings, with a command's ``--target`` (if it has one) over the rest."""
        if self._settings is None:
            from statekeeper.command import Settings

            self._settings = Settings.load(self.config, self.ledger_url, self.key, target_url)
            from statekeeper.logs import register_secret, secrets_of

            for secret in secrets_of(self._settings.config):
                register_secret(secret)
        return self._settings


def target_option(f: Any) -> Any:
    """``--target URL``: overrides $STATEKEEPER_TARGET_URL and ``[target] url``."""
    return click.option("--target", "target_url", metavar="URL",
                        help="Target database URL (overrides $STATEKEEPER_TARGET_URL and "
                             "[target] url).")(f)


def why_options(f: Any) -> Any:
    """``--reason TEXT`` and ``--ticket ID``: recorded with the run or operation."""
    f = click.option("--ticket", metavar="ID",
                     help="Change request it is done under (recorded; required when "
                          "[upgrade] require_ticket = true).")(f)
    f = click.option("--reason", metavar="TEXT", help="Why, in one line (recorded).")(f)
    return f


def yes_option(f: Any) -> Any:
    return click.option("--yes", is_flag=True,
                        help="Confirm without asking (needed when not on a terminal).")(f)


def interactive() -> bool:
    """Is there an operator to ask (standard input is a terminal)?"""
    return sys.stdin.isatty()


def confirmer() -> Callable[[str], bool] | None:
    """The question to the operator for a destructive operation, or None when no one can
    answer (the library then refuses without --yes)."""
    if not interactive():
        return None
    return lambda question: click.confirm(question, default=False, err=True)


class OpNote:
    """Remembers the operation an op command recorded, and says so last. With the command's
    ``obj``: a step that succeeded is progress (an error after it did not leave everything
    as it was, see :func:`statekeeper.errors.exit_code_after`), and the ``--json`` document
    of an error names the operation. On a terminal it also shows the progress of the tool a
    step runs (a backup, a restore: a :class:`statekeeper.progress.Reporter`), on stderr,
    where it never mixes with results."""

    def __init__(self, obj: Obj | None = None) -> None:
        self.op_id: str | None = None
        self.outcome: str | None = None
        self._live: Any = None
        self.obj = obj
        if obj is not None:
            obj.partial = lambda: {"op_id": self.op_id}

    def __call__(self, kind: str, p: dict[str, Any]) -> None:
        if kind == "op.created":
            self.op_id = str(p.get("op_id"))
        elif kind == "op.ended":
            self.outcome = str(p.get("outcome"))
        elif kind == "step.succeeded" and self.obj is not None:
            self.obj.progressed = True
        if kind in ("step.succeeded", "step.failed", "op.ended") and self._live is not None:
            self._live.close()

    def _display(self) -> Any:
        if self._live is None:
            from .progress import Progress

            self._live = Progress(sys.stderr)
        return self._live

    def task_started(self, key: str, label: str, total: int | None, unit: str) -> None:
        self._display().task_started(key, label, total, unit)

    def task_advanced(self, key: str, done: int, total: int | None) -> None:
        self._display().task_advanced(key, done, total)

    def task_ended(self, key: str) -> None:
        self._display().task_ended(key)

    def echo(self) -> None:
        if self.op_id is not None:
            click.echo(f"recorded as operation {self.op_id} (stream ops/{self.op_id})",
                       err=self.obj is not None and self.obj.as_json)


def json_option(f: Any) -> Any:
    """``--json``: the result as one document on stdout (docs/result.schema.json), also when
    the command fails; human lines then go to stderr."""

    @functools.wraps(f)
    def inner(*args: Any, **kwargs: Any) -> Any:
        ctx = click.get_current_context()
        obj = ctx.find_object(Obj)
        if obj is not None:
            obj.as_json = bool(kwargs.get("as_json"))
            obj.command = " ".join(ctx.command_path.split()[1:])
        return f(*args, **kwargs)

    return click.option("--json", "as_json", is_flag=True,
                        help="Print the result as one JSON document (also on failure).")(inner)


def emit_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True, default=str))


pass_obj = click.make_pass_decorator(Obj)
PathArg = click.Path(path_type=Path)


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "-V", "--version", prog_name="statekeeper")
@click.option("--config", "config", metavar="FILE", envvar="STATEKEEPER_CONFIG",
              help="Configuration file (default: ./statekeeper.toml).")
@click.option("--ledger", "ledger_url", metavar="URL",
              help="Ledger database URL (overrides [ledger] url).")
@click.option("--key", "key", metavar="PATH",
              help="Signing key file (overrides [ledger] key).")
@click.option("-v", "--verbose", count=True,
              help="Log more on stderr: -v info (steps, tools run, connections), -vv debug.")
@click.option("-q", "--quiet", is_flag=True,
              help="No progress; only errors on stderr.")
@click.option("--log-format", type=click.Choice(["text", "json"]), default="text",
              show_default=True, help="Log lines as text or one JSON object per line.")
@click.option("--log-file", type=PathArg, metavar="PATH",
              help="Also append the log (info, or debug with -vv) to PATH (created 0600).")
@click.pass_context
def cli(ctx: click.Context, config: str | None, ledger_url: str | None, key: str | None,
        verbose: int, quiet: bool, log_format: str, log_file: Path | None) -> None:
    """statekeeper: safe, resumable, audited upgrades of database-backed applications.

    Exit codes: 0 success; 1 failed (rolled back cleanly); 2 usage or configuration error;
    3 needs attention; 4 integrity violation; 5 lock held by another run; 6 the target or
    the ledger could not be reached (nothing was done). --json results: docs/result.schema.json.
    """
    from . import logs

    logs.configure(verbose, quiet, log_format, log_file)
    ctx.call_on_close(logs.reset)
    ctx.obj = Obj(config, ledger_url, key, quiet=quiet, verbose=verbose)
