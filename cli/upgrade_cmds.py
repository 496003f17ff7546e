"""``statekeeper init|plan|start|resume|status|history|rollback`` and ``debug failpoints``."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from statekeeper import command, failpoints
from statekeeper.errors import EXIT_OK, MigrationError, exit_code_for_state
from statekeeper.narrate import shown_url

from .progress import Progress
from .root import (
    Obj,
    PathArg,
    emit_json,
    error_doc,
    json_option,
    one_line,
    pass_obj,
    target_option,
    why_options,
)

if TYPE_CHECKING:  # statekeeper.replay imports transitions: only when a command runs
    from statekeeper.replay import Run, StepRecord
    from statekeeper.upgrade import Unreadable

def run_summary(run: Run) -> dict[str, Any]:
    last = run.steps[-1] if run.steps else None
    return {
        "run_id": run.run_id,
        "state": run.state,
        "from": run.from_version,
        "to": run.to_version,
        "target": run.plan.target,
        "started": run.created_at,
        "ended": run.ended_at,
        "failure": run.failure,
        "resumes": run.resumes,
        "takeovers": run.takeovers,
        "last_step": None
        if last is None
        else {
            "name": last.name,
            "status": last.status,
            "error": last.error,
            "started": last.started_at,
            "ended": last.ended_at,
        },
        "migrations_applied": run.migrations_applied(),
        "release": None if (rel := run.plan.release) is None else {
            "from": rel.from_release, "to": rel.to_release, "link": rel.link},
    }


def step_doc(s: StepRecord) -> dict[str, Any]:
    return {"name": s.name, "kind": s.kind, "status": s.status, "attempt": s.attempt,
            "started": s.started_at, "ended": s.ended_at, "duration_ms": s.duration_ms,
            "error": s.error, "recovered": s.recovered}


def run_doc(run: Run) -> dict[str, Any]:
    """A run in a ``--json`` result (docs/result.schema.json, ``run``)."""
    return {**run_summary(run), "steps": [step_doc(s) for s in run.steps]}


def failed_step(run: Run) -> StepRecord | None:
    """The step whose failure is the run's :attr:`~Run.failure` (the last one named there),
    else the last failed one."""
    failed = [s for s in run.steps if s.status == "failed" and not s.recovered and s.error]
    named = [s for s in failed if run.failure and s.error and s.error in run.failure]
    found = named or failed
    return found[-1] if found else None


def run_error(run: Run, code: int) -> dict[str, Any] | None:
    """The ``error`` of a result whose run ended otherwise than asked (code not 0): the
    failing step's recorded error class and, for a migration, its structured fields."""
    if code == EXIT_OK:
        return None
    step = failed_step(run)
    f = (step.failure if step is not None else None) or {}
    more: dict[str, Any] = {"step": step.name if step is not None else None}
    if f.get("class") == "MigrationError":
        more["migration"] = {k: v for k, v in f.items() if k != "class"}
    message = run.failure or f"run {run.run_id} ended {run.state}"
    return error_doc(f.get("class"), message, code, **more)


class RunNote:
    """Passes a run's events to the progress display and notes, for the exit code and the
    ``--json`` document of an error that ends the command, which run it is and whether this
    invocation recorded progress of it.

    A failure is shown once: its step's FAIL line, then (for a migration) the statement's
    line with a caret, DETAIL, HINT, CONTEXT and the NOTICEs; the state change it causes and
    the final line then name the step only (:attr:`shown`)."""

    PROGRESS = frozenset({"state.changed", "step.started", "step.succeeded", "step.failed"})

    def __init__(self, obj: Obj, show: Progress) -> None:
        self.obj, self.show = obj, show
        self.run_id: str | None = None
        #: the failure reasons (``STEP failed: ERROR``) this process has shown in full
        self.shown: set[str] = set()
        obj.partial = self.partial
        obj.run_command = True

    def __call__(self, kind: str, p: dict[str, Any]) -> None:
        if kind == "run.created":
            self.run_id = str(p.get("run_id"))
        if kind in self.PROGRESS:
            self.obj.progressed = True
        if kind == "state.changed" and p.get("reason") in self.shown:
            p = {k: v for k, v in p.items() if k != "reason"}
        self.show(kind, p)
        if kind == "step.failed" and not p.get("recovered"):
            self.shown.add(f"{p.get('step')} failed: {p.get('error')}")
            f = p.get("failure")
            if isinstance(f, dict) and f.get("class") == "MigrationError":
                for line in MigrationError.from_fields(f).display_lines():
                    self.obj.say(f"          {one_line(line)}")

    # the progress of long work (statekeeper.progress.Reporter), for the display
    def task_started(self, key: str, label: str, total: int | None, unit: str) -> None:
        self.show.task_started(key, label, total, unit)

    def task_advanced(self, key: str, done: int, total: int | None) -> None:
        self.show.task_advanced(key, done, total)

    def task_ended(self, key: str) -> None:
        self.show.task_ended(key)

    def partial(self) -> dict[str, Any]:
        run = None
        run_id = self.run_id or self.obj.run_hint
        if run_id is not None:
            with contextlib.suppress(Exception):  # the ledger may be what failed
                run = run_doc(command.status(self.obj.settings, run_id))
        return {"run_id": run_id, "run": run}


def observer(obj: Obj, run_id: str | None = None) -> RunNote:
    """The observer of a run command: progress on stdout, or on stderr under ``--json``."""
    note = RunNote(obj, Progress(sys.stderr if obj.as_json else None))
    note.run_id = run_id
    return note


def unreadable_summary(u: Unreadable) -> dict[str, Any]:
    """A run that cannot be replayed, with the keys of :func:`run_summary`."""
    return {
        "run_id": u.run_id, "state": "unreadable", "from": None, "to": None,
        "target": u.target, "started": u.created_at, "ended": None, "failure": None,
        "resumes": None, "takeovers": None, "last_step": None, "migrations_applied": None,
        "release": None, "error": f"cannot be replayed: {u.reason}", "seq": u.seq,
    }


def _finish(obj: Obj, note: RunNote, run: Run, wanted: str = "completed") -> None:
    """Print the outcome; exit 0 when the run ended as the command intended."""
    code = EXIT_OK if run.state == wanted else exit_code_for_state(run.state)
    reason = ""
    if run.failure and run.state != "completed":
        step = failed_step(run)
        shown = run.failure in note.shown and step is not None
        reason = f" ({step.name} failed)" if shown and step else f" ({run.failure})"
    click.echo(f"run {run.run_id}: {run.state}{reason}", err=obj.as_json)
    if obj.as_json:
        emit_json(obj.result(code, run_error(run, code), run_id=run.run_id, run=run_doc(run)))
    raise click.exceptions.Exit(code)


@click.command("init")
@click.option("--target", "target_url", metavar="URL", help="Target database URL to write.")
@click.option(
    "--migrations",
    "migrations_dir",
    default="migrations",
    show_default=True,
    help="Migrations directory to write in the configuration.",
)
@why_options
@json_option
@pass_obj
def init(obj: Obj, target_url: str | None, migrations_dir: str, reason: str | None,
         ticket: str | None, as_json: bool) -> None:
    """Create statekeeper.toml, a signing key and the ledger (safe to repeat).

    What it created is recorded as an operation (stream ops/ID); on a new ledger that is its
    first event after the genesis. A re-run that creates nothing records nothing."""
    done = command.init(obj.config, obj.key, obj.ledger_url, target_url, migrations_dir,
                        reason=reason, ticket=ticket)
    if as_json:
        obj.emit(done=done)
        return
    for line in done:
        click.echo(line)


@click.command("plan")
@click.option("--to", "to_version", required=True, help="Version to upgrade to.")
@click.option("--from", "from_version", help="Version upgraded from (default: last tag).")
@json_option
@click.option("--out", "out", type=PathArg, metavar="FILE",
              help="Also save the plan there, for 'start --plan FILE'.")
@target_option
@pass_obj
def plan(obj: Obj, to_version: str, from_version: str | None, as_json: bool,
         out: Path | None, target_url: str | None) -> None:
    """Show what an upgrade would do, in order, without doing it. Warns (on stderr) when no
    health check is configured: the upgrade would then be verified by nothing.

    The plan's digest (sha256 of its canonical JSON) names it: --out saves it, and
    'start --plan FILE' runs the upgrade only if it would do exactly that."""
    made, preview = command.plan_preview(obj.load(target_url), to_version, from_version, out)
    p = {**made.to_payload(), "digest": made.digest()}
    if preview is not None:
        p["sql"] = preview
    if not p["health_checks"]:
        where = obj.load().config.path or "statekeeper.toml"
        click.echo(f"warning: no health checks: nothing verifies the new version after the "
                   f"migrations (add [health] checks to {where})", err=True)
    if as_json:
        obj.emit(**p)
        return
    click.echo(
        f"upgrade {p['application']} {p['from_version']} -> {p['to_version']} on "
        f"{shown_url(p['target'])}"
    )
    b = p["backup"]
    click.echo(f"backup: {b['method'] if b['enabled'] else 'off'}")
    if (c := p.get("cluster")) is not None:
        click.echo(f"  this rollback restores the whole cluster {c['system_identifier']}: "
                   f"databases {', '.join(c['databases'])}")
    liquibase = preview is not None
    click.echo(f"pending {'changesets' if liquibase else 'migrations'}: "
               f"{len(p['migrations'])}")
    for m in p["migrations"]:
        rev = "reversible" if m["reversible"] else "IRREVERSIBLE (rollback restores the backup)"
        if liquibase:
            rev = ("has a rollback" if m["reversible"] else
                   "NO ROLLBACK (a rollback of this run restores the backup instead)")
        digest = f"MD5SUM {m['checksum']}" if liquibase else f"sha256 {m['checksum'][:16]}"
        click.echo(f"  {m['id']}  {digest}  {rev}")
    rel = p["release"]
    if rel:
        click.echo(f"release: {rel['link']} -> {rel['to_target']} (now "
                   f"{rel['from_target'] or 'absent'})")
    checks = ", ".join(p["health_checks"]) or "none (see the warning above)"
    click.echo(f"health checks: {checks}")
    click.echo("steps:")
    for n, line in enumerate(p["steps"], 1):
        click.echo(f"  {n:>2}. {line}")
    if preview is not None:
        click.echo("SQL (liquibase update-sql):")
        for line in (preview.rstrip().splitlines() or ["-- nothing pending"]):
            click.echo(f"  {line}")
    click.echo(f"plan sha256 {p['digest']}" + (f" (saved to {out})" if out else ""))


@click.command("start")
@click.option("--to", "to_version", required=True, help="Version to upgrade to.")
@click.option("--from", "from_version", help="Version upgraded from (default: last tag).")
@click.option("--plan", "plan_file", type=PathArg, metavar="FILE",
              help="Run only if the plan is exactly the one saved by 'plan --out FILE' "
                   "(else exit 2, nothing done).")
@click.option("--require-rehearsal", is_flag=True,
              help="Run only if a passing rehearsal of exactly this plan is in the ledger and "
                   "the target has not changed since (also: [upgrade] require_rehearsal).")
@target_option
@why_options
@json_option
@pass_obj
def start(obj: Obj, to_version: str, from_version: str | None, plan_file: Path | None,
          require_rehearsal: bool, target_url: str | None, reason: str | None,
          ticket: str | None, as_json: bool) -> None:
    """Run an upgrade: preflight, backup, tag, migrate, health, tag; roll back on failure."""
    note = observer(obj)
    run = command.start(obj.load(target_url), to_version, from_version, observer=note,
                        reason=reason, ticket=ticket, plan_file=plan_file,
                        require_rehearsal=require_rehearsal)
    if plan_file is not None:
        click.echo(f"plan: exactly the one in {plan_file} (sha256 {run.plan.digest()[:16]})",
                   err=obj.as_json)
    _finish(obj, note, run)


@click.command("resume")
@click.argument("run_id", required=False)
@click.option("--rollback", is_flag=True, help="Undo the run instead of finishing it.")
@target_option
@why_options
@json_option
@pass_obj
def resume(obj: Obj, run_id: str | None, rollback: bool, target_url: str | None,
           reason: str | None, ticket: str | None, as_json: bool) -> None:
    """Finish (or --rollback) a run interrupted by a crash; default: the unfinished run.

    Exits 0 when the run ends as asked: completed; rolled_back when an operator asked for the
    rollback (--rollback now, or an earlier 'rollback' / 'resume --rollback' it finishes)."""
    note = observer(obj, run_id)
    run = command.resume(obj.load(target_url), run_id, rollback, observer=note,
                         reason=reason, ticket=ticket)
    asked = rollback or run.rollback_requested
    _finish(obj, note, run, wanted="rolled_back" if asked else "completed")


@click.command("rollback")
@click.argument("run_id")
@click.option(
    "--restore",
    is_flag=True,
    help="Allow restoring the run's backup, discarding every change made since.",
)
@target_option
@why_options
@json_option
@pass_obj
def rollback(obj: Obj, run_id: str, restore: bool, target_url: str | None,
             reason: str | None, ticket: str | None, as_json: bool) -> None:
    """Undo a completed upgrade with its down migrations; exit 0 when rolled back.

    Data written since the upgrade is kept; only the schema must come back as it was. A
    migration without a down part can only be undone by restoring the backup: --restore."""
    note = observer(obj, run_id)
    run = command.rollback(obj.load(target_url), run_id, restore, observer=note,
                           reason=reason, ticket=ticket)
    _finish(obj, note, run, wanted="rolled_back")


ALL_TARGETS = click.option(
    "--all-targets", is_flag=True,
    help="Every target's runs in the ledger, not only the configured target's.")


def no_runs_yet(obj: Obj, all_targets: bool) -> str:
    """What 'status' and 'history' say when there is nothing to show."""
    if all_targets or obj.settings.config.target_url is None \
            or not command.has_runs(obj.settings):
        return "no runs yet"
    return "no runs yet on this target (the ledger has other targets' runs: --all-targets)"


@click.command("status")
@click.argument("run_id", required=False)
@ALL_TARGETS
@json_option
@pass_obj
def status(obj: Obj, run_id: str | None, all_targets: bool, as_json: bool) -> None:
    """Current state and last step of a run (default: the latest on the configured target),
    and the release it went from and to. For an unfinished run on a PostgreSQL server:
    whether the server is down, and what 'resume' will do about it. With no run yet: says
    so and exits 0, as 'history' does (a RUN_ID that is not in the ledger exits 2)."""
    run = command.latest(obj.settings, run_id, all_targets=all_targets)
    if run is None:  # as history with no runs: nothing to show is not an error
        if as_json:
            obj.emit(run_id=None)
        else:
            click.echo(no_runs_yet(obj, all_targets))
        return
    s = run_summary(run)
    server = command.server_state(obj.settings, run)
    if as_json:
        obj.emit(**run_doc(run), server=None if server is None else server.to_dict())
        return
    click.echo(f"run {s['run_id']}: {s['state']}  ({s['from']} -> {s['to']}, "
               f"{shown_url(s['target'])})")
    if s["release"]:
        click.echo(f"release {s['release']['from'] or '(none)'} -> {s['release']['to']} "
                   f"({s['release']['link']})")
    if s["failure"]:
        click.echo(f"reason: {s['failure']}")
    if s["last_step"]:
        ls = s["last_step"]
        click.echo(
            f"last step: {ls['name']} {ls['status']}" + (f": {ls['error']}" if ls["error"] else "")
        )
    if server is not None and not server.up:
        click.echo(f"target server is down ({server.error}): {server.resume}")


@click.command("history")
@json_option
@click.option("--limit", type=click.IntRange(min=1), metavar="N",
              help="Only the last N runs (the others are not read).")
@ALL_TARGETS
@pass_obj
def history(obj: Obj, as_json: bool, limit: int | None, all_targets: bool) -> None:
    """Every run on the configured target: id, from, to, state, started, ended, release
    (from -> to). With --all-targets (or no target configured) every run in the ledger, with
    its target.

    A run whose events cannot be replayed is listed as unreadable, with the event and why
    (its 'status' exits 4); the others are listed as usual and the exit code stays 0."""
    from statekeeper.upgrade import Unreadable

    found = command.history(obj.settings, limit, all_targets=all_targets)
    runs = [unreadable_summary(r) if isinstance(r, Unreadable) else run_summary(r)
            for r in found]
    bad = [r for r in runs if r["state"] == "unreadable"]
    if bad:
        n = len(bad)
        click.echo(f"warning: {n} run{'s' if n > 1 else ''} cannot be replayed "
                   f"({', '.join(r['run_id'] for r in bad)})", err=True)
    if as_json:
        emit_json(runs)
        return
    if not runs:
        click.echo(no_runs_yet(obj, all_targets))
        return
    wide = all_targets or obj.settings.config.target_url is None
    click.echo(f"{'run':<24} {'from':<8} {'to':<8} {'state':<12} {'started':<27} "
               f"{'ended':<27} " + (f"{'release':<20} target" if wide else "release"))
    for r in runs:
        rel = r["release"]
        shown = f"{rel['from'] or '(none)'} -> {rel['to']}" if rel else "-"
        line = (f"{r['run_id']:<24} {r['from'] or '?':<8} {r['to'] or '?':<8} "
                f"{r['state']:<12} {r['started']:<27} {r['ended'] or '-':<27} ")
        if wide:
            target = r.get("target")
            click.echo(f"{line}{shown:<20} {shown_url(target) if target else '?'}")
        else:
            click.echo(line + shown)
        if r["state"] == "unreadable":
            click.echo(f"  {r['error']}")


@click.group("debug")
def debug() -> None:
    """Tools for testing statekeeper itself."""


@debug.command("failpoints")
@json_option
def debug_failpoints(as_json: bool) -> None:
    """List the named failpoints (STATEKEEPER_FAILPOINT=name[:N] kills the process there)."""
    if as_json:
        emit_json([{"name": k, "path": v, "side": failpoints.SIDES[k]}
                   for k, v in failpoints.FAILPOINTS.items()])
        return
    for k, v in failpoints.FAILPOINTS.items():
        click.echo(f"{k:<24} {v}")


@click.command("demo")
@click.option(
    "--dir",
    "directory",
    type=PathArg,
    default=Path("statekeeper-demo"),
    show_default=True,
    help="Where to build the demo (left there to inspect).",
)
def demo(directory: Path) -> None:
    """Two failed upgrades rolled back (a migration; a deploy command, the release and its
    configuration put back), a crashed one resumed, all on SQLite, then verified."""
    from statekeeper.demo import run_demo

    code = run_demo(directory, click.echo)
    raise click.exceptions.Exit(code)


COMMANDS = [init, plan, start, resume, rollback, status, history, debug, demo]
