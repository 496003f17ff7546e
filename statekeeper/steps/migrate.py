"""migrate: apply one planned migration (with its changelog row, in one transaction where the
target allows). Undone by ``revert`` (its down part) or by restoring the backup."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import TargetError
from .base import Context, Result, Settled, Step, StepKind

if TYPE_CHECKING:
    from ..plan import Plan
    from ..replay import Run


class Migrate(StepKind):
    name = "migrate"
    path = "forward"
    runs_in = ("migrating",)
    args = ("migration", "checksum")
    compensation = "revert"

    def forward(self, run: Run) -> list[Step]:
        return [
            Step(f"migrate:{m.id}", self.name, {
                "migration": m.id, "checksum": m.checksum, "no_transaction": m.no_transaction,
                # a plan recorded before file digests were has none
                **({"file_sha256": m.file_sha256} if m.file_sha256 is not None else {})})
            for m in run.plan.migrations
        ]

    def outline(self, plan: Plan, state: str) -> list[str]:
        return [f"migrate {m.id}" for m in plan.migrations]

    def effect(self, ctx: Context, step: Step) -> Result:
        migrator = ctx.session.migrator
        mid = step.args["migration"]
        mig = next((m for m in migrator.migrations() if m.id == mid), None)
        if mig is None:
            raise TargetError(f"migration {mid} is no longer in the migrations directory")
        if mig.checksum != step.args["checksum"]:
            raise TargetError(
                f"migration {mig.id} changed since the run was planned (checksum differs)"
            )
        planned = step.args.get("file_sha256")
        if planned is not None and mig.file_sha256 != planned:
            # the up part is the same, the file is not (its down part changed): the ledger
            # would otherwise record a file that is not the one planned
            raise TargetError(
                f"migration {mig.id} changed since the run was planned (its file's sha256 is "
                f"{mig.file_sha256[:12]}, the plan recorded {planned[:12]})"
            )
        applied = migrator.apply(mig, run_id=ctx.run.run_id, hook=ctx.hook)
        return {"migration": mig.id, "checksum": mig.checksum, "file_sha256": mig.file_sha256,
                "execution_ms": applied.execution_ms}

    def probe(self, ctx: Context, step: Step) -> Settled:
        mid = step.args["migration"]
        if ctx.session.migrator.is_applied(mid):
            done = {"migration": mid, "checksum": step.args.get("checksum")}
            if step.args.get("file_sha256") is not None:
                done["file_sha256"] = step.args["file_sha256"]
            return Settled(True, done)
        if step.args.get("no_transaction"):
            # Its SQL runs outside a transaction and its changelog row comes after: without
            # the row nobody can say how much of it ran. Never rerun it; roll back instead,
            # where the fingerprint decides what a restore must undo.
            return Settled(False, error="interrupted; it runs outside a transaction, so its "
                           "effect is unknown", recovered=False)
        return Settled(False)
