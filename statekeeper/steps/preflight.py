"""preflight: validate the migrations against the changelog, check they are the ones planned,
that the backup has room, that a whole-cluster restore rewinds nothing unacknowledged (and not
the ledger), and fingerprint the database as it is before anything changes."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ..errors import TargetError
from ..plan import ClusterPlan
from ..sizes import size_text
from .base import Context, Result, Step, StepKind

if TYPE_CHECKING:
    from ..plan import Plan
    from ..replay import Run


class Preflight(StepKind):
    name = "preflight"
    path = "forward"
    runs_in = ("preflight",)

    def forward(self, run: Run) -> list[Step]:
        return [Step("preflight", self.name)]

    def outline(self, plan: Plan, state: str) -> list[str]:
        return ["preflight"]

    def describe(self, result: Mapping[str, Any]) -> str:
        digest = result.get("fingerprint_digest")
        out = f": fingerprint {str(digest)[:16]}" if digest else ""
        need, free = result.get("backup_estimate_bytes"), result.get("free_bytes")
        if isinstance(need, int) and isinstance(free, int):
            out += f"; backup ~{size_text(need)}, {size_text(free)} free"
        cluster = result.get("cluster")
        if isinstance(cluster, Mapping):
            with contextlib.suppress(ValueError):
                out += f"; {ClusterPlan.from_payload(cluster).describe()}"
        return out

    def effect(self, ctx: Context, step: Step) -> Result:
        from ..fingerprint import fingerprint

        s = ctx.session
        s.migrator.validate()
        _commands_ready(ctx)
        if ctx.run.plan.release is not None:
            _release_ready(ctx)
        ctx.hook()
        planned = {m.id: m.checksum for m in ctx.run.plan.migrations}
        pending = {m.id: m.checksum for m in s.migrator.pending()}
        changes = [f"{k} is pending but not in the plan (added since)"
                   for k in pending if k not in planned]
        changes += [f"{k} is no longer pending (its file is gone, or it was applied since)"
                    for k in planned if k not in pending]
        changes += [f"{k} changed (its up part has sha256 {pending[k][:12]}, the plan recorded "
                    f"{v[:12]})" for k, v in planned.items() if k in pending and pending[k] != v]
        if changes:
            raise TargetError("the migrations directory changed since this run was planned: "
                              + "; ".join(changes) + " (start a new run to apply it)")
        result: dict[str, Any] = {"pending": len(pending)}
        cluster = _cluster_ready(ctx)
        if cluster is not None:
            result["cluster"] = cluster.to_payload()
        if s.backups is not None:
            # where the backup really goes: the backup directory, or pgBackRest's repository
            need = int(s.backups.estimate_size() * 1.2)
            free = s.backups.free_space()
            if free < need:
                raise TargetError(
                    f"not enough free disk for the backup: {size_text(free)} free, "
                    f"~{size_text(need)} needed"
                )
            result.update({"backup_estimate_bytes": need, "free_bytes": free})
        with s.migrator.connection() as conn:
            fp = fingerprint(s.target, conn)
        result["fingerprint"] = fp.to_dict()
        result["fingerprint_digest"] = fp.digest
        return result


def _cluster_ready(ctx: Context) -> ClusterPlan | None:
    """A whole-cluster backup method (pgBackRest): the cluster as it is now must be the one
    planned (its lease is held), its other databases acknowledged and the ledger elsewhere."""
    from .. import cluster

    now = cluster.cluster_plan(ctx.session)
    planned = ctx.run.plan.cluster
    if (planned is None) != (now is None) or (
            planned is not None and now is not None
            and now.system_identifier != planned.system_identifier):
        raise TargetError(
            f"the target's cluster is {now.system_identifier if now else '(none)'}, not "
            f"{planned.system_identifier if planned else '(none)'} as this run planned (its "
            "cluster-wide lease is the planned one's): abort it and start again"
        )
    cluster.check(ctx.session, now)
    return now


def _commands_ready(ctx: Context) -> None:
    """Every health check by command can run (before any backup, not after the migrations)."""
    from ..procs import not_executable

    base = ctx.session.settings.config.command_cwd
    for c in ctx.session.health_checks:
        if c.get("kind") == "command":
            why = not_executable(list(c["argv"]), base)
            if why:
                raise TargetError(f"health check {c['name']!r} cannot run: {why}")


def _release_ready(ctx: Context) -> None:
    """The release side can be deployed: its directory, the link, the configuration files and
    their sources, the commands, the fingerprint secret. All before any backup."""
    from ..release import problems
    from .commanded import _release

    rc = _release(ctx)
    found = problems(rc, ctx.run.to_version)
    if found:
        # all of them: one fix-and-retry round for the operator, not one per problem
        raise TargetError(f"release {ctx.run.to_version} cannot be deployed: "
                          + "; ".join(found))
    ctx.session.secret  # noqa: B018 - loaded (or created) now: a bad one fails preflight
