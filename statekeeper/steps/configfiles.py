"""Configuration files: ``snapshot`` them before anything changes (copies in the run's
artifacts, keyed fingerprints in the ledger, never content), ``config`` puts the new version's
files in place, ``unconfig`` restores every file byte for byte (content, mode, owner) after
checking each copy against the ledger's record."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import IntegrityError, NeedsAttention
from ..plan import field_problem
from .base import Context, Result, Settled, Step, StepKind
from .commanded import _release

if TYPE_CHECKING:
    from ..plan import Plan
    from ..replay import Run


def _secret_id(ctx: Context) -> str:
    from ..keyed import secret_id

    return secret_id(ctx.session.secret)


def _files_problem(result: Mapping[str, Any]) -> str | None:
    err = field_problem(result, "files", list)
    if err is None and not all(isinstance(f, Mapping) and isinstance(f.get("path"), str)
                               for f in result["files"]):
        err = "field 'files' is not a list of files"
    return err


class Snapshot(StepKind):
    name = "snapshot"
    side = "release"
    path = "forward"
    runs_in = ("backing_up",)
    compensation = "unconfig"

    def forward(self, run: Run) -> list[Step]:
        return [Step("snapshot", self.name)] if run.plan.release is not None else []

    def outline(self, plan: Plan, state: str) -> list[str]:
        rel = plan.release
        if rel is None:
            return []
        what = (", ".join(plan.shown(f) for f in rel.config_files) if rel.config_files
                else "no configuration files")
        return [f"snapshot {what} and where {plan.shown(rel.link)} points "
                f"({rel.from_target or 'nowhere'})"]

    def check_result(self, result: Mapping[str, Any]) -> str | None:
        return (_files_problem(result) or field_problem(result, "secret_id", str)
                or field_problem(result, "link_target", (str, type(None))))

    def describe(self, result: Mapping[str, Any]) -> str:
        n = len(result.get("files") or [])
        return f": {n} configuration file(s), current -> {result.get('link_target')}"

    def effect(self, ctx: Context, step: Step) -> Result:
        from ..release import read_link, snapshot_files
        from .commanded import command_fingerprints

        rc = _release(ctx)
        states = snapshot_files(rc, ctx.session.secret,
                                ctx.session.artifacts(ctx.run.run_id, "snapshot"), ctx.hook)
        return {"files": [s.to_dict() for s in states], "secret_id": _secret_id(ctx),
                "link": str(rc.current_link), "link_target": read_link(rc.current_link),
                "commands": command_fingerprints(ctx)}


class Config(StepKind):
    name = "config"
    side = "release"
    path = "forward"
    runs_in = ("deploying",)
    args = ("version",)
    compensation = "unconfig"

    def forward(self, run: Run) -> list[Step]:
        rel = run.plan.release
        if rel is None or rel.config_from is None:
            return []
        return [Step("config", self.name, {"version": run.to_version})]

    def outline(self, plan: Plan, state: str) -> list[str]:
        rel = plan.release
        if rel is None or rel.config_from is None:
            return []
        return [f"install {plan.shown(f)} from {plan.shown(rel.config_from)}/{Path(f).name}"
                for f in rel.config_files]

    def describe(self, result: Mapping[str, Any]) -> str:
        return f": {len(result.get('files') or [])} configuration file(s) installed"

    def effect(self, ctx: Context, step: Step) -> Result:
        from ..release import install_config

        states = install_config(_release(ctx), step.args["version"], ctx.session.secret,
                                ctx.hook)
        return {"files": [s.to_dict() for s in states], "secret_id": _secret_id(ctx)}

    def probe(self, ctx: Context, step: Step) -> Settled:
        from ..release import config_matches, file_state

        rc = _release(ctx)
        if not config_matches(rc, step.args["version"], ctx.session.secret):
            return Settled(False)
        states = [file_state(f, ctx.session.secret)[0].to_dict() for f in rc.config_files]
        return Settled(True, {"files": states, "secret_id": _secret_id(ctx)})


def _snapshot(ctx: Context) -> Mapping[str, Any]:
    s = ctx.run.succeeded("snapshot")
    if s is None or s.result is None:
        raise NeedsAttention(f"run {ctx.run.run_id} has no configuration snapshot to restore")
    return s.result


class Unconfig(StepKind):
    name = "unconfig"
    side = "release"
    path = "rollback"

    def make(self) -> Step:
        return Step("unconfig", self.name)

    def describe(self, result: Mapping[str, Any]) -> str:
        return f": {result.get('restored', 0)} configuration file(s) restored byte for byte"

    def _recorded(self, ctx: Context) -> list[Any]:
        from ..release import FileState

        snap = _snapshot(ctx)
        if snap.get("secret_id") != _secret_id(ctx):
            raise IntegrityError(
                f"the fingerprint secret {ctx.session.settings.fingerprint_secret_path()} is not "
                "the one the snapshot was recorded with: the copies cannot be checked against "
                "the ledger, so none is restored")
        return [FileState.from_dict(f) for f in snap["files"]]

    def effect(self, ctx: Context, step: Step) -> Result:
        from ..release import check_snapshot, restore_files

        recorded = self._recorded(ctx)
        copies = check_snapshot(recorded, ctx.session.secret,
                                ctx.session.artifacts(ctx.run.run_id, "snapshot"))
        restore_files(recorded, copies, ctx.hook)
        return {"restored": sum(1 for c in copies if c is not None),
                "removed": [r.path for r, c in zip(recorded, copies, strict=True) if c is None]}

    def probe(self, ctx: Context, step: Step) -> Settled:
        from ..release import files_restored

        recorded = self._recorded(ctx)
        if files_restored(recorded, ctx.session.secret):
            return Settled(True, {"restored": sum(1 for r in recorded if r.exists),
                                  "removed": [r.path for r in recorded if not r.exists]})
        return Settled(False)
