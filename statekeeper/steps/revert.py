"""revert: run one applied migration's down part (and remove its changelog row). Compensates
``migrate``."""

from __future__ import annotations

from .base import Context, Result, Settled, Step, StepKind


class Revert(StepKind):
    name = "revert"
    path = "rollback"
    args = ("migration",)

    def make(self, migration_id: str) -> Step:
        return Step(f"revert:{migration_id}", self.name, {"migration": migration_id})

    def effect(self, ctx: Context, step: Step) -> Result:
        ctx.session.migrator.revert(step.args["migration"], run_id=ctx.run.run_id, hook=ctx.hook)
        return {"migration": step.args["migration"]}

    def probe(self, ctx: Context, step: Step) -> Settled:
        mid = step.args["migration"]
        return Settled(not ctx.session.migrator.is_applied(mid), {"migration": mid})
