"""The scope of a whole-cluster backup method (pgBackRest): a restore rewinds every database of
the target's cluster, not only the target.

Preflight refuses such a run when another database of the cluster is not acknowledged in
``[backup] cluster_databases``, or when the ledger lives on the same cluster (a restore would
rewind the ledger that records it). The run takes a second lease, keyed by the cluster's system
identifier (:attr:`ClusterPlan.lease_key`), so that two runs on databases of one cluster never
restore it under each other.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .errors import TargetError
from .plan import ClusterPlan

if TYPE_CHECKING:
    from .session import Session


def cluster_plan(session: Session) -> ClusterPlan | None:
    """The cluster a restore of this session's backup method rewinds (None: the target only).
    TargetError when the cluster's system identifier cannot be read: without it neither the
    ledger's place nor the cluster-wide lease can be checked."""
    b = session.backups
    if b is None or not b.whole_cluster:
        return None
    scope = b.cluster_scope()
    if scope is None:
        return None
    if scope.system_identifier is None:
        raise TargetError(
            f"[backup] method {b.method} restores the whole cluster of "
            f"{session.target.shown}, whose system identifier this user cannot read "
            "(pg_control_system()); a superuser (or pg_monitor) is needed"
        )
    return ClusterPlan(scope.system_identifier, scope.databases)


def problems(session: Session, cluster: ClusterPlan) -> list[str]:
    """What makes a whole-cluster restore of ``cluster`` unsafe: other databases of it the
    operator has not acknowledged, and a ledger on it. Empty when it is safe."""
    from .targets import Target

    settings = session.settings
    target = session.target
    found: list[str] = []
    acknowledged = set(settings.config.backup.cluster_databases)
    others = [d for d in cluster.databases if d != target.database and d not in acknowledged]
    if others:
        found.append(
            f"a restore rewinds the whole cluster {cluster.system_identifier}, and with it "
            f"database{'s' if len(others) > 1 else ''} {', '.join(others)}, not in [backup] "
            "cluster_databases (list them there to accept that a rollback rewinds them too, "
            "or use the pg_dump method)"
        )
    ledger_target = Target.from_url(settings.ledger_url, settings.config.base_dir)
    ledger_scope = ledger_target.dialect.cluster_of(ledger_target)
    if ledger_scope is not None:
        same = (ledger_scope.system_identifier == cluster.system_identifier
                if ledger_scope.system_identifier is not None
                else ledger_target.endpoint() == target.endpoint())
        if same:
            found.append(
                f"the ledger ({ledger_target.shown}) lives on the target's cluster "
                f"{cluster.system_identifier}: a restore would rewind the ledger too; keep "
                "the ledger on another server (or in a SQLite file)"
            )
    return found


def check(session: Session, cluster: ClusterPlan | None) -> None:
    """TargetError naming every problem of :func:`problems`."""
    if cluster is None:
        return
    found = problems(session, cluster)
    if found:
        raise TargetError("; ".join(found))
