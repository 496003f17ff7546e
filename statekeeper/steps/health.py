"""health: the configured health checks, after the migrations and before the new version's
tag (a failure rolls the upgrade back)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from .base import Context, Result, Step, StepKind

if TYPE_CHECKING:
    from ..plan import Plan
    from ..replay import Run


class Health(StepKind):
    name = "health"
    path = "forward"
    runs_in = ("verifying",)

    def forward(self, run: Run) -> list[Step]:
        return [Step("health", self.name, {"checks": len(run.plan.health_checks)})]

    def outline(self, plan: Plan, state: str) -> list[str]:
        return ["health checks"]

    def describe(self, result: Mapping[str, Any]) -> str:
        checks = result.get("checks")
        return ": " + ", ".join(c["name"] for c in checks) + " passed" if checks else ""

    def effect(self, ctx: Context, step: Step) -> Result:
        from ..health import run_checks

        return run_checks(ctx.session.target, ctx.session.health_checks, hook=ctx.hook)
