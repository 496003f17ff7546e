"""Which backups ``statekeeper backup prune`` may delete: ``[backup] keep`` and ``keep_days``
applied to the backups of the backup directory, and what the ledger says must never go.

The decision is pure (:func:`decide`), from the manifests and what the ledger records
(:func:`read_ledger`). A backup is deleted only when every one of these holds:

* its method is not ``pgbackrest`` (the repository's own retention, ``repo1-retention-full``,
  expires those sets; prune leaves the set and statekeeper's manifest of it alone);
* the ledger records creating it (a run's ``backup`` step or a ``backup create`` operation)
  with the sha256 its manifest has: a backup the ledger does not know, or one whose manifest
  no longer matches the ledger, is kept;
* no run may still restore it: not the backup of an unfinished run (in flight, or ``failed``:
  waiting for a human), not the backup of the last completed run of its target (``rollback
  RUN_ID --restore``), not one an interrupted or failed ``backup restore`` was restoring;
* it is not among the newest ``keep`` backups, it is not younger than ``keep_days`` days, and
  it is not the newest backup (so that a nightly backup that has failed for a week never
  leaves ``keep_days`` alone to delete them all).

Ages and order are the ledger's (when the step that created the backup succeeded), not the
manifest's: the manifest is a file in the backup directory, the ledger is signed. A run or
an operation the ledger cannot replay makes the whole decision impossible (IntegrityError):
whether its backup may still be restored is unknown.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from . import clock
from .errors import ConfigError, IntegrityError

if TYPE_CHECKING:
    from .backups import Manifest
    from .errors import HistoryError
    from .opreplay import Operation
    from .replay import Run
    from .upgrade import Unreadable

#: the methods whose backups live in a repository with its own retention
REPOSITORY_METHODS = ("pgbackrest",)


@dataclass(frozen=True)
class Recorded:
    """A backup the ledger records as created."""

    backup_id: str
    sha256: str | None
    at: str  # recorded_at of the step that completed it (UTC text)
    by: str  # "run RUN_ID" | "operation OP_ID"
    seq: int  # ledger seq of an operation's step.started (0 for a run's: its id is the run's)


@dataclass
class Knowledge:
    """What the ledger says about the backups: created (last record of each id wins) and
    kept because a run or a restore may still need them (id -> why)."""

    recorded: dict[str, Recorded]
    protected: dict[str, str]


@dataclass(frozen=True)
class Verdict:
    manifest: Manifest
    delete: bool
    why: str  # "kept: ..." / "older than ..." in words
    at: str  # when the ledger (else the manifest) says it was completed: what ages are of

    def to_dict(self) -> dict[str, object]:
        m = self.manifest
        return {"id": m.id, "method": m.method, "size": m.size, "sha256": m.sha256,
                "created_at": m.created_at, "recorded_at": self.at, "delete": self.delete,
                "why": self.why}


def rules(keep: int | None, keep_days: int | None, source: str) -> tuple[int | None, int]:
    """The configured rules; neither set is ConfigError (prune would have nothing to apply)."""
    if keep is None and not keep_days:
        raise ConfigError(f"{source}: [backup] keep (and/or keep_days) is not set: backup prune "
                          "has no rule to apply (nothing was done)")
    return keep, keep_days or 0


def _days(n: int) -> str:
    return f"{n} day{'s' if n != 1 else ''}"


def decide(manifests: Sequence[Manifest], knowledge: Knowledge, keep: int | None,
           keep_days: int, now: datetime) -> list[Verdict]:
    """One verdict per backup, oldest first."""
    def when(m: Manifest) -> str:
        r = knowledge.recorded.get(m.id)
        return r.at if r is not None else m.completed_at

    managed = sorted((m for m in manifests if m.method not in REPOSITORY_METHODS),
                     key=lambda m: (when(m), m.id), reverse=True)
    rank = {m.id: i for i, m in enumerate(managed)}
    cutoff = clock.stamp(now - timedelta(days=keep_days)) if keep_days else None
    out: list[Verdict] = []
    for m in sorted(manifests, key=lambda m: (when(m), m.id)):
        r = knowledge.recorded.get(m.id)
        at = when(m)
        why: str | None = None
        if m.method in REPOSITORY_METHODS:
            why = ("kept: a pgBackRest backup (the repository's retention, "
                   "repo1-retention-full, expires it)")
        elif r is None:
            why = "kept: the ledger records no backup of this id (not statekeeper's to delete)"
        elif r.sha256 != m.sha256:
            why = (f"kept: its manifest's sha256 differs from the one {r.by} recorded "
                   "('statekeeper backup verify')")
        elif m.id in knowledge.protected:
            why = f"kept: {knowledge.protected[m.id]}"
        elif keep is not None and rank[m.id] < keep:
            why = f"kept: one of the newest {keep} (keep = {keep})"
        elif cutoff is not None and at >= cutoff:
            why = f"kept: younger than {_days(keep_days)} (keep_days = {keep_days})"
        elif rank[m.id] == 0:
            why = "kept: the newest backup"
        if why is not None:
            out.append(Verdict(m, False, why, at))
            continue
        reasons = []
        if keep is not None:
            reasons.append(f"beyond the newest {keep}")
        if cutoff is not None:
            reasons.append(f"older than {_days(keep_days)}")
        out.append(Verdict(m, True, " and ".join(reasons), at))
    return out


def read_ledger(runs: Iterable[Run | Unreadable],
                operations: Iterable[Operation | HistoryError]) -> Knowledge:
    """Every backup the ledger records as created, and those a run or a restore may still
    need, from its runs and operations (``scan_runs``, ``scan_ops``); IntegrityError when a
    run or an operation cannot be replayed."""
    from .opreplay import Operation
    from .upgrade import SETTLED, Unreadable

    found: list[Recorded] = []
    protected: dict[str, str] = {}
    last_completed: dict[str | None, tuple[str, list[str]]] = {}
    for r in runs:
        if isinstance(r, Unreadable):
            raise IntegrityError(f"run {r.run_id} cannot be replayed ({r.reason}): whether its "
                                 "backup may still be restored is unknown, so nothing is "
                                 "pruned")
        ids: list[str] = []
        for s in r.steps:
            if s.kind != "backup":
                continue
            bid = str(s.args.get("backup_id"))
            ids.append(bid)
            if s.status == "succeeded" and s.result is not None:
                sha = s.result.get("sha256")
                found.append(Recorded(bid, sha if isinstance(sha, str) else None,
                                      s.ended_at or r.last_at, f"run {r.run_id}", 0))
        if r.state not in SETTLED:
            what = ("failed (a human decides: it may restore it)" if r.state == "failed"
                    else f"unfinished ({r.state})")
            for bid in ids:
                protected.setdefault(bid, f"the backup of run {r.run_id}, {what}")
        elif r.state == "completed":
            last_completed[r.plan.target] = (r.run_id, ids)
    for run_id, ids in last_completed.values():
        for bid in ids:
            protected.setdefault(bid, f"the backup of run {run_id}, the last completed run of "
                                 "its target ('statekeeper rollback RUN_ID --restore')")
    for o in operations:
        if not isinstance(o, Operation):
            raise IntegrityError(f"operation {getattr(o, 'op_id', '?')} cannot be replayed "
                                 f"({o}): whether it holds a backup is unknown, so nothing is "
                                 "pruned")
        if o.op == "backup.create":
            for st in o.succeeded("backup"):
                res = st.result or {}
                sha = res.get("sha256")
                found.append(Recorded(str(res.get("backup_id")),
                                      sha if isinstance(sha, str) else None,
                                      st.ended_at or o.last_at, f"operation {o.op_id}",
                                      st.seq))
        elif o.op == "backup.restore" and o.status != "succeeded":
            rid = o.args.get("backup_id")
            if isinstance(rid, str):
                protected.setdefault(rid, f"restore operation {o.op_id} is {o.status}")
        elif o.op == "backup.prune":
            for pid in o.backups_pruned():
                found = [f for f in found if f.backup_id != pid or f.seq > o.first_seq]
    recorded: dict[str, Recorded] = {}
    for f in sorted(found, key=lambda f: f.seq):  # the latest record of an id wins
        recorded[f.backup_id] = f
    return Knowledge(recorded, protected)


def unfinished_deletions(operations: Iterable[Operation | HistoryError]) -> list[str]:
    """The backups whose ``prune`` step did not succeed (interrupted or failed), in order."""
    from .opreplay import Operation

    out: list[str] = []
    for o in operations:
        if isinstance(o, Operation) and o.op == "backup.prune":
            for s in o.steps:
                bid = s.args.get("backup_id")
                if s.kind == "prune" and s.status != "succeeded" and isinstance(bid, str) \
                        and bid not in out:
                    out.append(bid)
    return out


def summary(verdicts: Iterable[Verdict]) -> tuple[int, int]:
    """(number deleted, bytes deleted)."""
    gone = [v for v in verdicts if v.delete]
    return len(gone), sum(v.manifest.size for v in gone)
