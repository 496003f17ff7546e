"""The ``sqlite`` method: the online backup API, and an atomic file replacement on restore."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import tempfile
from pathlib import Path

from ..dialects.sqlite_fingerprint import sqlite_fingerprint
from ..errors import BackupError, ConfigError, WrongDatabase
from ..files import fsync_path, publish, touch_private
from ..progress import copy as progress_copy
from ..progress import task as progress_task
from ..targets import Target
from .model import (
    OTHER_DATABASE_HINT,
    Created,
    Hook,
    Manifest,
    MethodOptions,
    disk_free,
    noop,
)

SIDE_FILES = ("-wal", "-shm", "-journal")


class SqliteMethod:
    name = "sqlite"
    checks_repository = False
    whole_cluster = False
    restarts_server = False
    artifact_name = "database.sqlite"

    def __init__(self, target: Target) -> None:
        self.target = target

    @classmethod
    def configured(cls, target: Target, options: MethodOptions) -> SqliteMethod:
        return cls(target)

    def create(self, workdir: Path, backup_id: str) -> Created:
        """Copy the database with ``Connection.backup`` (a consistent snapshot even while
        others write), and fingerprint the copy itself: fingerprint and artifact agree."""
        final = workdir / self.artifact_name
        tmp = workdir / f".{self.artifact_name}.partial"
        src = self.target.connect(autocommit=True)
        try:
            # SQLite keeps the mode of an existing file and gives its journal the same one.
            touch_private(tmp)
            dst = sqlite3.connect(tmp, isolation_level=None)
            try:
                with progress_task("copy", unit="pages") as t:
                    src.backup(dst, pages=1024,
                               progress=lambda _s, left, total: t.update(total - left, total))
                fp = sqlite_fingerprint(dst)
                version = str(dst.execute("SELECT sqlite_version()").fetchone()[0])
            finally:
                dst.close()
        except sqlite3.Error as e:
            raise BackupError(f"backup of {self.target.shown} failed: {e}") from e
        finally:
            src.close()
        for suffix in SIDE_FILES:
            Path(f"{tmp}{suffix}").unlink(missing_ok=True)
        publish(tmp, final)
        return Created(artifact=final, fingerprint=fp, server_version=f"SQLite {version}")

    @classmethod
    def database_of(cls, target: Target) -> str:
        return str(target.sqlite_path.resolve())

    @classmethod
    def check_identity(cls, target: Target, manifest: Manifest) -> None:
        here = cls.database_of(target)
        if here != manifest.database:
            raise WrongDatabase(
                f"backup {manifest.id} was taken of {manifest.database}, not {here}"
                f"{OTHER_DATABASE_HINT}"
            )

    def check(self, manifest: Manifest) -> None:
        return None

    def restore(self, manifest: Manifest, hook: Hook, reconnected: Hook = noop) -> None:
        """Copy the artifact next to the target, fsync, and ``os.replace`` it over the target;
        the old file's journal/WAL are checkpointed and removed so they cannot replay onto
        the restored file. Other connections to the file must be closed first."""
        path = self.target.sqlite_path
        if not path.parent.is_dir():
            raise ConfigError(f"target {self.target.shown}: directory {path.parent} "
                              "does not exist")
        # named after the backup, so that the probe of a restore in doubt finds its own copy
        fd, tmp_name = tempfile.mkstemp(prefix=self._restore_prefix(manifest.id),
                                        dir=path.parent)
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as out, manifest.artifact_path.open("rb") as inp:
                progress_copy(inp, out, "copy", manifest.size or None)
                out.flush()
                os.fsync(out.fileno())
            hook()
            if path.exists():
                st = path.stat()
                os.chmod(tmp, st.st_mode & 0o7777)
                with contextlib.suppress(OSError):
                    os.chown(tmp, st.st_uid, st.st_gid)
                self._checkpoint(path)
            for suffix in SIDE_FILES:
                Path(f"{path}{suffix}").unlink(missing_ok=True)
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        for suffix in SIDE_FILES:
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        fsync_path(path.parent)

    def _restore_prefix(self, backup_id: str) -> str:
        return f".{self.target.sqlite_path.name}.restore-{backup_id}-"

    def settle(self, workdir: Path, backup_id: str, restoring: bool) -> list[str]:
        """After a crash, before the step in doubt is redone: remove the partial copy it left
        (the backup's ``.database.sqlite.partial``, or the restore's copy of this backup
        beside the target); what was removed."""
        if restoring:
            path = self.target.sqlite_path
            prefix = self._restore_prefix(backup_id)
            try:
                found = sorted(p for p in path.parent.iterdir() if p.name.startswith(prefix)
                               and p.name[len(prefix):].isalnum() and p.is_file())
            except OSError:
                found = []
        else:
            tmp = workdir / f".{self.artifact_name}.partial"
            found = [p for p in (tmp, *(Path(f"{tmp}{x}") for x in SIDE_FILES)) if p.exists()]
        for p in found:
            p.unlink(missing_ok=True)
        return [f"removed the partial {', '.join(p.name for p in found)}"] if found else []

    @staticmethod
    def _checkpoint(path: Path) -> None:
        """Fold the old WAL into the old file (best effort) before it is replaced."""
        try:
            conn = sqlite3.connect(path, timeout=10, isolation_level=None)
            try:
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            finally:
                conn.close()
        except sqlite3.Error:
            pass

    def estimate_size(self) -> int:
        path = self.target.sqlite_path
        total = 0
        for p in (path, Path(f"{path}-wal")):
            with contextlib.suppress(OSError):
                total += p.stat().st_size
        return total

    def free_space(self, backup_dir: Path) -> int:
        return disk_free(backup_dir)
