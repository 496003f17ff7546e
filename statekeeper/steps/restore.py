"""restore: put the backup this run took back, after checking that the artifact is the one the
ledger recorded. Compensates ``backup``'s purpose: everything since it was taken is undone."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from ..errors import BackupCorrupt, BackupError, IntegrityError
from ..files import describe_os_error
from .backup import interrupted
from .base import Context, Result, Settled, Step, StepKind


class Restore(StepKind):
    name = "restore"
    path = "rollback"
    args = ("backup_id",)

    def make(self, backup_id: str) -> Step:
        return Step("restore", self.name, {"backup_id": backup_id})

    def needs_target(self, ctx: Context, step: Step) -> bool:
        """A restore that stops and starts the server (pgBackRest) runs with the server down:
        the ledger lease guards it, and it takes the target lock again itself once the server
        is back. The others need the server up, under the lock."""
        backups = ctx.session.backups
        return not (backups is not None and backups.restarts_server)

    def effect(self, ctx: Context, step: Step) -> Result:
        s = ctx.session
        if s.backups is None:
            raise BackupError("no backup manager configured: cannot restore")
        backup_id = step.args["backup_id"]
        _check_backup(ctx, backup_id)
        # A restore may replace the database file or restart the server under any open
        # connection: the migrator's shared one must not outlive it.
        s.migrator.forget_connections()
        try:
            s.backups.restore(backup_id, hook=ctx.hook, check=False,
                              reconnected=s.migrator.ensure_lock)
        finally:
            s.migrator.forget_connections()
        return {"backup_id": backup_id}

    def probe(self, ctx: Context, step: Step) -> Settled:
        """A restore in doubt is redone (each method's restore may run again); first its
        tools that survived the crash are stopped and its partial copy removed. This reads
        only files and processes (pgBackRest: its processes and lock file; the redo reads
        ``postmaster.pid``), so it works with the server down."""
        backups = ctx.session.backups
        notes = backups.settle(step.args["backup_id"], restoring=True) if backups else []
        return Settled(False, error=interrupted(notes))


def _check_backup(ctx: Context, backup_id: str) -> None:
    """Before a restore: the artifact is the one this run's backup step recorded in the
    ledger (size and sha256), not merely the one its manifest describes: a manifest lives
    beside the file and is replaced with it."""
    from ..backups import sha256_file

    run, backups = ctx.run, ctx.session.backups
    assert backups is not None
    rec = run.backup
    if rec is None or rec.get("backup_id") != backup_id:
        raise IntegrityError(
            f"backup {backup_id}: the ledger records no such backup for run "
            f"{run.run_id}: refusing to restore it"
        )
    m = backups.get(backup_id)
    path = m.artifact_path
    _no_one_else_can_swap(backup_id, path)
    try:
        size, digest = sha256_file(path)
    except OSError as e:
        raise BackupCorrupt(f"backup {backup_id}: cannot read artifact {path}: "
                            f"{describe_os_error(e)}") from e
    if digest != rec.get("sha256") or size != rec.get("size"):
        raise BackupCorrupt(
            f"backup {backup_id}: artifact {path} has sha256 {digest[:12]} ({size} bytes); "
            f"the ledger recorded {str(rec.get('sha256'))[:12]} ({rec.get('size')} bytes) "
            "for this run's backup: refusing to restore it"
        )
    if m.sha256 != rec.get("sha256"):
        raise BackupCorrupt(
            f"backup {backup_id}: manifest {m.manifest_path} records sha256 "
            f"{m.sha256[:12]}, the ledger {str(rec.get('sha256'))[:12]}: refusing to "
            "restore it"
        )


def _no_one_else_can_swap(backup_id: str, path: Path) -> None:
    """The restore reads the artifact again after it was hashed: refuse one that another user
    could replace in between (the file, or any directory above it, owned by someone else or
    writable by group or others without the sticky bit), as ssh's StrictModes does."""
    me = os.geteuid()
    try:
        is_dir = stat.S_ISDIR(path.lstat().st_mode)
        inside = sorted(path.iterdir()) if is_dir else []  # pg_dump -Fd: each file is read
    except OSError as e:
        raise BackupCorrupt(
            f"backup {backup_id}: cannot inspect {path}: {describe_os_error(e)}") from e
    ancestors = set(path.parents)
    for p in (*inside, path, *path.parents):
        try:
            st = p.stat() if p in ancestors else p.lstat()  # ancestors may be symlinks
        except OSError as e:
            raise BackupCorrupt(
                f"backup {backup_id}: cannot inspect {p}: {describe_os_error(e)}") from e
        if p not in ancestors and not (stat.S_ISREG(st.st_mode) or (p == path and is_dir)):
            raise BackupCorrupt(f"backup {backup_id}: artifact {p} is not a regular file")
        open_to_others = st.st_mode & 0o022 and not (
            stat.S_ISDIR(st.st_mode) and st.st_mode & stat.S_ISVTX
        )
        if st.st_uid not in (me, 0) or open_to_others:
            raise BackupCorrupt(
                f"backup {backup_id}: {p} is "
                + ("owned by another user" if st.st_uid not in (me, 0)
                   else "writable by group or others")
                + ": the artifact could be swapped after it is checked; refusing to restore "
                "(chmod go-w, or move the backups somewhere private)"
            )
