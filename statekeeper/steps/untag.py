"""untag: remove a tag this run created whose migrations are gone again (the rollback of a
run that applied none, or of a tag that did not exist before). Compensates ``tag``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .base import Context, Result, Settled, Step, StepKind


class Untag(StepKind):
    name = "untag"
    # path None: no scenario of the crash matrix reaches an untag, so it declares no failpoint
    has_middle = False
    args = ("tag",)

    def make(self, tag: str) -> Step:
        return Step(f"untag:{tag}", self.name, {"tag": tag})

    def describe(self, result: Mapping[str, Any]) -> str:
        if "removed" not in result:
            return ""
        return ": tag removed" if result["removed"] else ": already gone"

    def effect(self, ctx: Context, step: Step) -> Result:
        removed = ctx.session.migrator.untag(step.args["tag"], run_id=ctx.run.run_id)
        return {"tag": step.args["tag"], "removed": removed}

    def probe(self, ctx: Context, step: Step) -> Settled:
        name = step.args["tag"]
        still = any(t.name == name and t.run_id == ctx.run.run_id
                    for t in ctx.session.migrator.tags())
        return Settled(not still, {"tag": name})
