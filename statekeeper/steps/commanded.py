"""Kinds that run one of the operator's commands: the release's ``stop`` and ``start`` (and, on
rollback, ``unstart``: stop the new release; ``unstop``: start the old one again), extra deploy
commands (``command``) and their ``undo``.

A command's output goes to the run's artifacts directory, the ledger records its exit code and
the sizes and sha256 of its output. Resuming a command left in doubt reads its exit file
(:func:`statekeeper.procs.probe`): one that never started is run; one that ended is closed as
it ended; one whose end nobody saw is run again only if it is idempotent (stop and start must
be, as ``systemctl`` is); a deploy command or an undo is never run twice: the run rolls back
(or, for an undo, waits for a human).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from ..errors import ConfigError, TargetError
from .base import Context, Result, Settled, Step, StepKind

if TYPE_CHECKING:
    from ..plan import Plan
    from ..release import Command
    from ..replay import Run


def _release(ctx: Context) -> Any:
    rc = ctx.session.release
    if rc is None or ctx.run.plan.release is None:
        raise ConfigError(f"{ctx.session.settings.config.source}: [deploy] is not configured, "
                          f"but run {ctx.run.run_id} deploys a release")
    return rc


def command_fingerprints(ctx: Context) -> dict[str, str]:
    """Keyed fingerprints of every command as it resolves now (``${VAR}`` filled in), recorded
    by the snapshot: a later resume or rollback refuses a command that resolves otherwise."""
    rc = _release(ctx)
    out = {}
    for key in ("stop", "start"):
        if getattr(rc, key) is not None:
            out[key] = _fingerprint(ctx, getattr(rc, key))
    for i, c in enumerate(rc.commands, 1):
        out[f"command:{i}"] = _fingerprint(ctx, c.run)
        out[f"undo:{i}"] = _fingerprint(ctx, c.undo)
    return out


def _fingerprint(ctx: Context, cmd: Command) -> str:
    import json

    from ..keyed import fingerprint

    return fingerprint(ctx.session.secret, json.dumps(list(cmd.argv)).encode())


def _as_recorded(ctx: Context, key: str, cmd: Command, what: str) -> None:
    from ..keyed import same

    snap = ctx.run.succeeded("snapshot")
    recorded = (snap.result or {}).get("commands") if snap is not None else None
    if isinstance(recorded, dict) and key in recorded and not same(
            str(recorded[key]), _fingerprint(ctx, cmd)):
        raise ConfigError(f"{what} resolves to another command than when run "
                          f"{ctx.run.run_id} began (a ${{VAR}} in it has another value now): "
                          "refusing to run it")


def env_for(ctx: Context) -> dict[str, str]:
    """The environment of an operator's command: statekeeper's, and what the run is doing."""
    run = ctx.run
    rel = run.plan.release
    env = dict(os.environ)
    env.update({"STATEKEEPER_RUN_ID": run.run_id, "STATEKEEPER_FROM_VERSION": run.from_version,
                "STATEKEEPER_TO_VERSION": run.to_version})
    if rel is not None:
        env["STATEKEEPER_RELEASE_DIR"] = rel.to_dir
    # the database the run upgrades (a rehearsal's: the clone, which its variants point at)
    env["STATEKEEPER_DATABASE_URL"] = ctx.session.target.client_url()
    env.pop("STATEKEEPER_FAILPOINT", None)  # a crash test's failpoint is statekeeper's own
    return env


class Commanded(StepKind):
    #: run again when a crash hid whether it ran (stop and start must be idempotent)
    idempotent: ClassVar[bool] = True
    # one child process: its in-doubt case is a crash while it runs (tests kill one there)
    has_middle = False
    #: what the command is called in messages
    what: ClassVar[str] = ""

    def command(self, ctx: Context, step: Step) -> tuple[Command, Path, int]:
        """The command, its working directory and its timeout."""
        raise NotImplementedError

    def key(self, step: Step) -> str:
        """Its name among the snapshot's command fingerprints."""
        raise NotImplementedError

    def _checked(self, ctx: Context, step: Step) -> tuple[Command, Path, int]:
        cmd, cwd, timeout = self.command(ctx, step)
        _as_recorded(ctx, self.key(step), cmd, self._what(step))
        return cmd, cwd, timeout

    def describe(self, result: Mapping[str, Any]) -> str:
        code = result.get("exit_code")
        return f": exit {code}" if code is not None else ""

    def _name(self, ctx: Context, step: Step) -> tuple[Path, str]:
        out_dir = ctx.session.artifacts(ctx.run.run_id, "commands")
        return out_dir, f"{step.name.replace(':', '-')}.{ctx.run.attempts(step.name)}"

    def _what(self, step: Step) -> str:
        name = step.args.get("command")
        return f"{self.what} {name!r}" if name else self.what

    def effect(self, ctx: Context, step: Step) -> Result:
        from .. import procs

        cmd, cwd, timeout = self._checked(ctx, step)
        out_dir, name = self._name(ctx, step)
        outcome = procs.run(list(cmd.argv), cwd=cwd, timeout_ms=timeout, out_dir=out_dir,
                            name=name, env=env_for(ctx))
        if not outcome.ok:
            raise TargetError(outcome.failure(self._what(step), timeout))
        return {"command": cmd.text, **outcome.result(ctx.session.secret)}

    def probe(self, ctx: Context, step: Step) -> Settled:
        from .. import procs

        cmd, _cwd, timeout = self.command(ctx, step)
        out_dir, name = self._name(ctx, step)
        got = procs.probe(out_dir, name)
        if got is False:
            return Settled(False)
        if got is True:
            if self.idempotent:
                return Settled(False, error="interrupted while it ran; running it again (it "
                               "is idempotent)")
            return Settled(False, error=f"interrupted while {self._what(step)} ran: whether it "
                           "took effect is unknown, so it is not run again", recovered=False)
        assert isinstance(got, procs.Outcome)
        if got.ok:
            return Settled(True, {"command": cmd.text, **got.result(ctx.session.secret)})
        return Settled(False, error=got.failure(self._what(step), timeout), recovered=False)


class _Service(Commanded):
    """The release's stop or start command, run in the application's directory."""

    runs: ClassVar[str]  # "stop" | "start": the [deploy] key whose command runs

    def key(self, step: Step) -> str:
        return self.runs

    def command(self, ctx: Context, step: Step) -> tuple[Command, Path, int]:
        rc = _release(ctx)
        cmd = getattr(rc, self.runs)
        planned = getattr(ctx.run.plan.release, self.runs)
        if cmd is None or cmd.text != planned:
            raise ConfigError(f"{ctx.session.settings.config.source}: [deploy] {self.runs} "
                              f"changed since run {ctx.run.run_id} was planned")
        return cmd, rc.base_dir, rc.timeout_ms


class Stop(_Service):
    name = "stop"
    side = "release"
    path = "forward"
    runs_in = ("backing_up",)
    compensation = "unstop"
    runs = "stop"
    what = "the stop command"

    def forward(self, run: Run) -> list[Step]:
        rel = run.plan.release
        return [Step("stop", self.name)] if rel is not None and rel.stop else []

    def outline(self, plan: Plan, state: str) -> list[str]:
        rel = plan.release
        return [f"stop the application ({rel.stop})"] if rel is not None and rel.stop else []


class Start(_Service):
    name = "start"
    side = "release"
    path = "forward"
    runs_in = ("deploying",)
    compensation = "unstart"
    runs = "start"
    what = "the start command"

    def forward(self, run: Run) -> list[Step]:
        rel = run.plan.release
        return [Step("start", self.name)] if rel is not None and rel.start else []

    def outline(self, plan: Plan, state: str) -> list[str]:
        rel = plan.release
        if rel is None or not rel.start:
            return []
        return [f"start release {rel.to_release} ({rel.start})"]


class Unstart(_Service):
    """Rollback: stop the new release this run started."""

    name = "unstart"
    side = "release"
    path = "rollback"
    runs = "stop"
    what = "the stop command"

    def make(self) -> Step:
        return Step("unstart", self.name)


class Unstop(_Service):
    """Rollback: start the release again (the old one: the link is back) after the schema and
    data are."""

    name = "unstop"
    side = "release"
    path = "rollback"
    runs = "start"
    what = "the start command"

    def make(self) -> Step:
        return Step("unstop", self.name)


class _Deploy(Commanded):
    idempotent = False
    args = ("command",)

    def key(self, step: Step) -> str:
        return f"{self.name}:{step.args.get('index')}"

    def command(self, ctx: Context, step: Step) -> tuple[Command, Path, int]:
        rc = _release(ctx)
        rel = ctx.run.plan.release
        assert rel is not None
        i = int(step.args.get("index", 0))
        planned = rel.commands[i - 1] if 0 < i <= len(rel.commands) else None
        c = rc.commands[i - 1] if 0 < i <= len(rc.commands) else None
        if planned is None or c is None or (c.name, c.run.text, c.undo.text) != (
                planned.name, planned.run, planned.undo):
            raise ConfigError(f"{ctx.session.settings.config.source}: [[deploy.command]] "
                              f"#{i} changed since run {ctx.run.run_id} was planned")
        return (c.run if self.name == "command" else c.undo), Path(rel.to_dir), c.timeout_ms


class DeployCommand(_Deploy):
    name = "command"
    side = "release"
    path = "forward"
    runs_in = ("deploying",)
    compensation = "undo"
    what = "deploy command"

    def forward(self, run: Run) -> list[Step]:
        rel = run.plan.release
        if rel is None:
            return []
        return [Step(f"command:{i}", self.name, {"command": c.name, "index": i})
                for i, c in enumerate(rel.commands, 1)]

    def outline(self, plan: Plan, state: str) -> list[str]:
        rel = plan.release
        return [] if rel is None else [f"run {c.name!r}: {c.run} (undo: {c.undo})"
                                       for c in rel.commands]


class Undo(_Deploy):
    name = "undo"
    side = "release"
    path = "rollback"
    what = "the undo of deploy command"

    def make(self, index: int, name: str) -> Step:
        return Step(f"undo:{index}", self.name, {"command": name, "index": index})
