"""revert: run one applied migration's down part (and remove its changelog row). Compensates
``migrate``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .. import clock
from .base import Context, Result, Settled, Step, StepKind

if TYPE_CHECKING:
    from ..migrations import Migration
    from ..migrations.driver import MigrationDriver as Migrator
    from ..plan import PlannedMigration


def file_digests(m: Migration | PlannedMigration | None) -> dict[str, Any]:
    """The two checksums a migration event records: statekeeper's (``checksum``: the up
    part) and the whole file's (``file_sha256``, what ``sha256sum`` prints), when known."""
    if m is None:
        return {}
    out: dict[str, Any] = {"checksum": m.checksum}
    if m.file_sha256:
        out["file_sha256"] = m.file_sha256
    return out


def revert_one(migrator: Migrator, migration_id: str, run_id: str,
               hook: Any = None) -> Result:
    """Run one applied migration's down part; the result a ``revert`` step records: the
    migration, the checksums of the file whose down part ran, the time it took."""
    m = next((m for m in migrator.migrations() if m.id == migration_id), None)
    t0 = clock.monotonic_ms()
    migrator.revert(migration_id, run_id=run_id, hook=hook)
    return {"migration": migration_id, **file_digests(m),
            "execution_ms": int(clock.monotonic_ms() - t0)}


class Revert(StepKind):
    name = "revert"
    path = "rollback"
    args = ("migration",)

    def make(self, migration_id: str, planned: PlannedMigration | None = None) -> Step:
        return Step(f"revert:{migration_id}", self.name,
                    {"migration": migration_id, **file_digests(planned)})

    def effect(self, ctx: Context, step: Step) -> Result:
        return revert_one(ctx.session.migrator, step.args["migration"], ctx.run.run_id,
                          ctx.hook)

    def probe(self, ctx: Context, step: Step) -> Settled:
        mid = step.args["migration"]
        done: dict[str, Any] = {"migration": mid}
        done.update({k: step.args[k] for k in ("checksum", "file_sha256") if k in step.args})
        return Settled(not ctx.session.migrator.is_applied(mid), done)
