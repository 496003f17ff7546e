"""backup: take the backup the rollback may restore, after preflight and before any change.
Undone by ``restore``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ..errors import BackupError
from ..plan import field_problem as field_error
from ..sizes import size_text
from .base import Context, Result, Settled, Step, StepKind

if TYPE_CHECKING:
    from ..plan import Plan
    from ..replay import Run


def manifest_result(m: Any) -> Result:
    """What the ledger records of a backup: the restore is checked against exactly this, and
    the rollback's proof after a restore is the fingerprint of what the backup holds (taken
    with it), not preflight's: a write that landed in between is in the backup."""
    return {"backup_id": m.id, "method": m.method, "size": m.size, "sha256": m.sha256,
            "fingerprint": m.fingerprint}


class Backup(StepKind):
    name = "backup"
    path = "forward"
    runs_in = ("backing_up",)
    args = ("backup_id",)
    compensation = "restore"

    def forward(self, run: Run) -> list[Step]:
        b = run.plan.backup
        if not b.enabled:
            return []
        attempt = run.attempts("backup") + 1
        bid = f"{run.run_id}" if attempt == 1 else f"{run.run_id}-{attempt}"
        return [Step("backup", self.name, {"backup_id": bid, "method": b.method})]

    def outline(self, plan: Plan, state: str) -> list[str]:
        return [f"backup ({plan.backup.method})"] if plan.backup.enabled else []

    def check_result(self, result: Mapping[str, Any]) -> str | None:
        return field_error(result, "backup_id", str)

    def describe(self, result: Mapping[str, Any]) -> str:
        if result.get("size") is None:
            return ""
        size = result["size"]
        shown = size_text(size) if isinstance(size, int) else str(size)
        return (f": {result['method']} backup {result['backup_id']}, {shown}, "
                f"sha256 {str(result.get('sha256'))[:12]}")

    def effect(self, ctx: Context, step: Step) -> Result:
        backups = ctx.session.backups
        if backups is None:
            raise BackupError("backups are off ([backup] enabled = false)")
        return manifest_result(backups.create(step.args["backup_id"], hook=ctx.hook))

    def probe(self, ctx: Context, step: Step) -> Settled:
        backups = ctx.session.backups
        m = backups.probe(step.args["backup_id"]) if backups is not None else None
        if m is not None:
            return Settled(True, manifest_result(m))
        # its tools still running (an orphan holding pgBackRest's lock) and its partial copy
        # would stand in the way of the redo: settled first, and said
        notes = backups.settle(step.args["backup_id"]) if backups is not None else []
        return Settled(False, error=interrupted(notes))


def interrupted(notes: list[str]) -> str:
    """The error of a step in doubt that is redone, with what its probe cleaned up."""
    return ("interrupted before it took effect; " + "; ".join(notes)
            + ("; " if notes else "") + "redoing it")
