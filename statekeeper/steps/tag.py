"""tag: name the schema with a version, the one before the upgrade (so it can be rolled back
to) and, last of all, the new one. Undone by ``untag`` when this run created it."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import TargetError
from .base import Context, Result, Settled, Step, StepKind

if TYPE_CHECKING:
    from ..plan import Plan
    from ..replay import Run


def tag_step(version: str) -> Step:
    return Step(f"tag:{version}", Tag.name, {"tag": version})


class Tag(StepKind):
    name = "tag"
    path = "forward"
    has_middle = False  # one statement
    runs_in = ("tagging", "verifying")
    args = ("tag",)
    compensation = "untag"

    def forward(self, run: Run) -> list[Step]:
        if run.state == "tagging":
            return [tag_step(run.from_version)] if run.from_version else []
        return [tag_step(run.to_version)]

    def outline(self, plan: Plan, state: str) -> list[str]:
        return [f"tag {plan.from_version if state == 'tagging' else plan.to_version}"]

    def effect(self, ctx: Context, step: Step) -> Result:
        run, migrator = ctx.run, ctx.session.migrator
        tag = step.args["tag"]
        if tag == run.to_version:
            _check_changelog(ctx, tag)
        existing = {t.name: t for t in migrator.tags()}
        if tag in existing:
            mine = existing[tag].run_id == run.run_id
            if tag == run.to_version and not mine:
                raise TargetError(f"tag {tag} was created meanwhile by someone else "
                                  f"(at {existing[tag].created_at}): it must name this "
                                  "run's schema; remove it or choose another version")
            return {"tag": tag, "created": mine}
        migrator.tag(tag, run_id=run.run_id)
        return {"tag": tag, "created": True}

    def probe(self, ctx: Context, step: Step) -> Settled:
        run = ctx.run
        name = step.args["tag"]
        t = next((t for t in ctx.session.migrator.tags() if t.name == name), None)
        mine = t is not None and t.run_id == run.run_id
        # the new version's tag counts only if this run made it (the effect's own check)
        happened = t is not None and (mine or name != run.to_version)
        return Settled(happened, {"tag": name, "created": mine})


def _check_changelog(ctx: Context, tag: str) -> None:
    """Before the new version's name goes on the schema: every planned migration is in the
    target's changelog with the checksum the run planned. Independent of the ledger: whatever
    the history says, the tag must not name a schema that lacks one of them."""
    s = ctx.session
    recorded = {r.id: r.checksum for r in s.migrator.applied()}
    for m in ctx.run.plan.migrations:
        got = recorded.get(m.id)
        if got is None:
            raise TargetError(
                f"migration {m.id} is not in the changelog of {s.target.shown}: "
                f"refusing to tag the schema {tag}"
            )
        if got != m.checksum:
            raise TargetError(
                f"migration {m.id} is in the changelog of {s.target.shown} "
                f"with sha256 {got[:12]}, the run planned {m.checksum[:12]}: refusing "
                f"to tag the schema {tag}"
            )
