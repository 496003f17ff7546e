"""migrate: apply one planned migration (with its changelog row, in one transaction where the
target allows). Undone by ``revert`` (its down part) or by restoring the backup."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ..errors import MigrationError, TargetError
from .base import Context, Result, Settled, Step, StepKind

if TYPE_CHECKING:
    from ..migrations import Migration
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
        try:
            applied = migrator.apply(mig, run_id=ctx.run.run_id, hook=ctx.hook)
        except MigrationError:
            _keep_notices(ctx, mig)  # "relation already exists, skipping" is often the cause
            raise
        return {"migration": mig.id, "checksum": mig.checksum, "file_sha256": mig.file_sha256,
                "execution_ms": applied.execution_ms, **_keep_notices(ctx, mig)}

    def describe(self, result: Mapping[str, Any]) -> str:
        n = result.get("notices")
        return f" ({n} server notice{'s' if n != 1 else ''}: {result.get('notices_file')})" \
            if isinstance(n, int) and n else ""

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


def _keep_notices(ctx: Context, mig: Migration) -> dict[str, Any]:
    """Write the NOTICEs and WARNINGs the server raised while the migration ran to the run's
    artifacts (``migrations/<id>.notices``, 0600), one per line with the file's line; the
    result records how many and the file's sha256 (the ledger, not the file, is the record)."""
    from .. import files

    heard = getattr(ctx.session.migrator, "heard", {}).get(mig.id, ())
    if not heard:
        return {}
    lines = [f"{mig.path}:{mig.locate(pos)[0]}: {sev}:  {msg}\n" for sev, msg, pos in heard]
    text = "".join(lines)
    path = ctx.session.artifacts(ctx.run.run_id, "migrations") / f"{mig.id}.notices"
    files.write_atomic(path, text)
    return {"notices": len(heard), "notices_file": str(path),
            "notices_sha256": hashlib.sha256(text.encode("utf-8")).hexdigest()}
