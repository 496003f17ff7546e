"""health: the configured health checks, after the migrations and before the new version's
tag (a failure rolls the upgrade back)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from .base import Context, Result, Step, StepKind

if TYPE_CHECKING:
    from ..plan import Plan
    from ..replay import Run


class Health(StepKind):
    name = "health"
    path = "forward"
    runs_in: ClassVar[tuple[str, ...]] = ("verifying",)

    def forward(self, run: Run) -> list[Step]:
        return [Step("health", self.name, {"checks": len(run.plan.health_checks)})]

    def outline(self, plan: Plan, state: str) -> list[str]:
        return ["health checks"]

    def describe(self, result: Mapping[str, Any]) -> str:
        checks = result.get("checks")
        if checks == []:  # "ok health" for no check at all would read as a pass
            return ": no checks configured, nothing was checked"
        return ": " + ", ".join(c["name"] for c in checks) + " passed" if checks else ""

    def effect(self, ctx: Context, step: Step) -> Result:
        from ..health import run_checks

        s, run = ctx.session, ctx.run
        # a command check's output may hold a secret: the run's artifacts, never the ledger
        out = s.artifacts(run.run_id, "health", f"{step.name}.{run.attempts(step.name)}")
        # only a command check has output to fingerprint: a run without one never needs (nor
        # creates) the fingerprint secret
        commands = any(c.get("kind") == "command" for c in s.health_checks)
        return run_checks(s.target, s.health_checks, hook=ctx.hook, out_dir=out,
                          base_dir=s.settings.config.command_cwd,
                          secret=s.secret if commands else None)


    def needs_target(self, ctx: Context, step: Step) -> bool:
        return True  # SQL checks read the target; the old release needs its database too


class Recheck(Health):
    """Rollback: the health checks again, on the old release once it is back and started. A
    rollback whose old release is unhealthy ends failed: a human must look."""

    name = "recheck"
    side = "release"
    path = "rollback"
    runs_in = ()
    has_middle = False

    def make(self, checks: int) -> Step:
        return Step("recheck", self.name, {"checks": checks})

    def forward(self, run: Run) -> list[Step]:
        return []

    def outline(self, plan: Plan, state: str) -> list[str]:
        return []
