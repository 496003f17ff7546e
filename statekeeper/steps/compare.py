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
        if err is None:
            err = field_error(result, "written_before_backup", list, optional=True)
        return err

    def describe(self, result: Mapping[str, Any]) -> str:
        window = result.get("written_before_backup") or []
        written = (f" (written between preflight and the backup, and kept: "
                   f"{'; '.join(window)})" if window else "")
        if result.get("equal"):
            what = ("the backup's" if result.get("against") == "backup"
                    else "the one before the upgrade")
            return f": fingerprint equals {what}{written}"
        return ": fingerprint differs: " + "; ".join(result.get("diff", [])) + written

    def effect(self, ctx: Context, step: Step) -> Result:
        from ..fingerprint import Fingerprint, diff, fingerprint

        scope = step.args.get("scope", "full")
        pre = ctx.run.succeeded("preflight")
        if pre is None or not pre.result:
            raise NeedsAttention("no fingerprint from before the upgrade to compare with")
        before = Fingerprint.from_dict(pre.result["fingerprint"])
        window: list[str] = []
        held = _restored_fingerprint(ctx)
        if held is not None and scope == "full":
            # After a restore the database is what the backup holds. Writes that landed
            # between preflight and the backup (writers not stopped) are in it: named, never
            # a reason the rollback cannot finish.
            window = diff(before, held)
            before = held
        with ctx.session.migrator.connection() as conn:
            now = fingerprint(ctx.session.target, conn)
        if scope == "schema":
            equal = before.schema == now.schema
            lines = [] if equal else [ln for ln in diff(before, now) if ln.startswith("schema")]
            return {"equal": equal, "diff": lines or ([] if equal else ["schema differs"]),
                    "digest": now.digest, "scope": scope}
        lines = diff(before, now)
        out: Result = {"equal": not lines, "diff": lines, "digest": now.digest, "scope": scope}
        if held is not None and scope == "full":
            out["against"] = "backup"
            out["written_before_backup"] = window
        return out


def _restored_fingerprint(ctx: Context) -> Any:
    """The fingerprint of what the restored backup holds, as the ledger recorded it with the
    backup (None: no restore in this rollback, or a backup recorded without one)."""
    from ..fingerprint import Fingerprint

    run = ctx.run
    if not any(s.kind == "restore" and s.status == "succeeded" for s in run.phase_steps()):
        return None
    rec = (run.backup or {}).get("fingerprint")
    if not isinstance(rec, Mapping):
        return None
    try:
        return Fingerprint.from_dict(dict(rec))
    except (KeyError, TypeError, ValueError) as e:
        raise NeedsAttention(f"the backup's recorded fingerprint is unreadable: {e}") from e
