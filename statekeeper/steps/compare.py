"""compare: fingerprint the database after the rollback and compare it with preflight's. The
rollback is done only when they are equal (the whole database after a restore or a failed
upgrade; only the schema after an operator's rollback of a used application)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..errors import NeedsAttention
from ..plan import field_problem as field_error
from .base import Context, Result, Step, StepKind


class Compare(StepKind):
    name = "compare"
    path = "rollback"
    has_middle = False  # one read

    def make(self, n: int, scope: str) -> Step:
        return Step(self.name if n == 1 else f"{self.name}#{n}", self.name, {"scope": scope})

    def check_result(self, result: Mapping[str, Any]) -> str | None:
        err = field_error(result, "equal", bool, optional=True)
        if err is None:
            err = field_error(result, "diff", list, optional=True)
        if err is None and not all(isinstance(x, str) for x in result.get("diff") or []):
            err = "field 'diff' is not a list of text"
        return err

    def describe(self, result: Mapping[str, Any]) -> str:
        if result.get("equal"):
            return ": fingerprint equals the one before the upgrade"
        return ": fingerprint differs: " + "; ".join(result.get("diff", []))

    def effect(self, ctx: Context, step: Step) -> Result:
        from ..fingerprint import Fingerprint, diff, fingerprint

        scope = step.args.get("scope", "full")
        pre = ctx.run.succeeded("preflight")
        if pre is None or not pre.result:
            raise NeedsAttention("no fingerprint from before the upgrade to compare with")
        before = Fingerprint.from_dict(pre.result["fingerprint"])
        now = fingerprint(ctx.session.target)
        if scope == "schema":
            equal = before.schema == now.schema
            lines = [] if equal else [ln for ln in diff(before, now) if ln.startswith("schema")]
            return {"equal": equal, "diff": lines or ([] if equal else ["schema differs"]),
                    "digest": now.digest, "scope": scope}
        lines = diff(before, now)
        return {"equal": not lines, "diff": lines, "digest": now.digest, "scope": scope}
