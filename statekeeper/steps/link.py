"""The code switch: ``switch`` points the ``current`` symlink at the new release, ``unswitch``
back where the snapshot found it. Each is one atomic rename (a new link beside the old, renamed
over it): there is never a moment without ``current``. The probe reads the link."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError
from .base import Context, Result, Settled, Step, StepKind
from .commanded import _release


def _link(ctx: Context) -> Path:
    """The link the run recorded in its plan: the ledger's, not today's configuration (a
    rollback long after must switch back the link that was switched). The configuration must
    still name it."""
    rel = ctx.run.plan.release
    assert rel is not None
    rc = _release(ctx)
    if str(rc.current_link) != rel.link:
        raise ConfigError(f"{ctx.session.settings.config.source}: [deploy] current_link is "
                          f"{rc.current_link} now; run {ctx.run.run_id} switched {rel.link}: "
                          "put it back to act on this run")
    return Path(rel.link)

if TYPE_CHECKING:
    from ..plan import Plan
    from ..replay import Run


class Switch(StepKind):
    name = "switch"
    side = "release"
    path = "forward"
    runs_in = ("deploying",)
    args = ("to",)
    compensation = "unswitch"

    def forward(self, run: Run) -> list[Step]:
        rel = run.plan.release
        return [] if rel is None else [Step("switch", self.name, {"to": rel.to_target})]

    def outline(self, plan: Plan, state: str) -> list[str]:
        rel = plan.release
        return [] if rel is None else [
            f"switch {plan.shown(rel.link)} -> {rel.to_target} "
            f"(was {rel.from_target or 'absent'})"]

    def describe(self, result: Mapping[str, Any]) -> str:
        return f": current -> {result.get('to')} (was {result.get('from')})"

    def effect(self, ctx: Context, step: Step) -> Result:
        from ..release import read_link, switch_link

        link = _link(ctx)
        before = read_link(link)
        switch_link(link, step.args["to"], ctx.hook)
        return {"from": before, "to": step.args["to"]}

    def probe(self, ctx: Context, step: Step) -> Settled:
        from ..release import read_link

        now = read_link(_link(ctx))
        if now == step.args["to"]:
            return Settled(True, {"to": now, "recovered_from_link": True})
        return Settled(False)


class Unswitch(StepKind):
    name = "unswitch"
    side = "release"
    path = "rollback"

    def make(self, to: str | None) -> Step:
        return Step("unswitch", self.name, {"to": to})

    def describe(self, result: Mapping[str, Any]) -> str:
        to = result.get("to")
        return f": current -> {to}" if to else ": current removed (there was none before)"

    def effect(self, ctx: Context, step: Step) -> Result:
        from ..release import switch_link

        to = step.args.get("to")
        switch_link(_link(ctx), to if isinstance(to, str) else None, ctx.hook)
        return {"to": to}

    def probe(self, ctx: Context, step: Step) -> Settled:
        from ..release import read_link

        to = step.args.get("to")
        return Settled(read_link(_link(ctx)) == to, {"to": to})
