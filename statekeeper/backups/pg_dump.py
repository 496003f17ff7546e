"""The ``pg_dump`` method: a dump taken in the snapshot the fingerprint reads: one
custom-format file, or with ``[backup] jobs`` above 1 a directory-format dump written by that
many processes (``pg_dump -Fd -j``) and restored the same way (``pg_restore -j``).

Restore semantics of the pg_dump method: one transaction that drops every user schema (and
extension, event trigger, publication) of the target database and replays the dump. Either all
of it commits, and the database is exactly the backup (objects created after the backup are
gone), or none of it does and the database is as it was before the restore. A parallel
restore (``jobs`` above 1) cannot be one transaction (each worker commits its own part): the
drops commit first, then ``pg_restore -j`` loads; one that fails part-way leaves part of the
backup (:class:`RestoreIncomplete`), and restoring again (which drops everything first) is the
way back. The password
reaches the client tools through the environment, never their command line.

The tools die with statekeeper (statekeeper/children.py) and leave a pid file in the backup's
directory while they run (``pg_dump.pid``; ``restore-pg_restore.pid``, ``restore-psql.pid``):
after a crash, :meth:`PgDumpMethod.settle` stops one that survived anyway and removes the
backup's partial dump.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

from .. import children
from ..dialects.pg_fingerprint import pg_fingerprint
from ..errors import BackupError, RestoreIncomplete, TargetError, TargetUnreachable
from ..files import CHILD_UMASK, private_dir, publish, publish_dir, touch_private
from ..progress import Task
from ..progress import task as progress_task
from ..targets import Target, first_line
from .model import Created, Hook, Manifest, MethodOptions, artifact_size, disk_free, noop
from .pgtools import (
    check_same_database,
    client_env,
    database_size,
    identity,
    pg_tool,
    stderr_line,
)

USER_SCHEMAS = (
    "SELECT nspname FROM pg_namespace WHERE nspname NOT IN "
    "('pg_catalog', 'information_schema', 'pg_toast') AND nspname !~ '^pg_(toast_)?temp_' "
    "ORDER BY nspname"
)


class PgDumpMethod:
    name = "pg_dump"
    checks_repository = False
    whole_cluster = False
    restarts_server = False
    #: the artifact of one process (custom format) and of parallel jobs (directory format)
    FILE_NAME = "database.dump"
    DIR_NAME = "database.dumpdir"

    def __init__(self, target: Target, *, pg_bin: Path | None = None,
                 timeout: float = 6 * 3600, lock_timeout: str = "60s", jobs: int = 1) -> None:
        self.target = target
        self.pg_bin = pg_bin
        self.timeout = timeout
        self.lock_timeout = lock_timeout
        self.jobs = jobs
        self.artifact_name = self.DIR_NAME if jobs > 1 else self.FILE_NAME

    @classmethod
    def configured(cls, target: Target, options: MethodOptions) -> PgDumpMethod:
        return cls(target, pg_bin=options.pg_bin, timeout=options.timeout, jobs=options.jobs)

    # -- create ------------------------------------------------------------------------------
    def create(self, workdir: Path, backup_id: str) -> Created:
        """``pg_dump -Fc`` (``-Fd -j N``) of the snapshot the fingerprint reads: both see the
        same data."""
        import psycopg

        pg_dump = pg_tool("pg_dump", self.pg_bin)
        final = workdir / self.artifact_name
        tmp = workdir / f".{self.artifact_name}.partial"
        try:
            conn = self.target.connect()
        except TargetUnreachable:
            raise  # exit 3: nothing was done
        except TargetError as e:
            raise BackupError(str(e)) from e
        try:
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            snapshot = conn.execute("SELECT pg_export_snapshot()").fetchone()[0]
            version, sysid = identity(conn)
            host, port = self.target.endpoint(conn)
            # pg_dump truncates the 0600 file made for it (its mode stays), fills the empty
            # 0700 directory made for it, and runs under umask 077: a dump is the whole
            # database, never readable by others.
            if self.jobs > 1:
                private_dir(tmp)
                form = ["--format=directory", f"--jobs={self.jobs}"]
            else:
                touch_private(tmp)
                form = ["--format=custom"]
            with tempfile.TemporaryFile() as err:
                proc = children.popen(
                    [pg_dump, *form, "--no-password", f"--snapshot={snapshot}",
                     f"--file={tmp}", f"--dbname={self.target.client_conninfo()}"],
                    env=client_env(self.target), stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL, stderr=err, umask=CHILD_UMASK,
                    pid_file=workdir / "pg_dump.pid",
                )
                try:
                    with children.supervised(proc):
                        # In parallel with pg_dump, in its snapshot: what the dump holds.
                        fp = pg_fingerprint(conn, begin=False, target=self.target,
                                            snapshot=snapshot, pg_bin=self.pg_bin)
                        rc = _wait_growing(proc, tmp, self.timeout)
                finally:
                    (workdir / "pg_dump.pid").unlink(missing_ok=True)
                if rc != 0:
                    raise BackupError(f"pg_dump failed: {_read(err)}")
            conn.rollback()
        except psycopg.Error as e:
            raise BackupError(f"backup of {self.target.shown}: {first_line(e)}") from e
        except TargetError as e:  # a fingerprint reader's psql failed
            raise BackupError(f"backup of {self.target.shown}: {e}") from e
        except subprocess.TimeoutExpired as e:
            raise BackupError(f"pg_dump did not finish within {self.timeout:.0f} s") from e
        finally:
            conn.close()
        (publish_dir if self.jobs > 1 else publish)(tmp, final)
        return Created(
            artifact=final, fingerprint=fp, server_version=version, host=host, port=port,
            system_identifier=sysid,
        )

    @classmethod
    def database_of(cls, target: Target) -> str:
        return target.database

    @classmethod
    def check_identity(cls, target: Target, manifest: Manifest) -> None:
        check_same_database(target, manifest, server_may_be_down=False)

    # -- restore -----------------------------------------------------------------------------
    def check(self, manifest: Manifest) -> None:
        return None

    def _prelude(self, had_public: bool, server_num: int) -> str:
        lines = [
            "SET client_min_messages = warning;",
            f"SET lock_timeout = '{self.lock_timeout}';",
            "BEGIN;",
            "DO $statekeeper$ DECLARE r record; BEGIN",
            "  FOR r IN SELECT evtname FROM pg_event_trigger LOOP",
            "    EXECUTE format('DROP EVENT TRIGGER %I', r.evtname); END LOOP;",
            "  FOR r IN SELECT oid FROM pg_largeobject_metadata LOOP",
            "    PERFORM lo_unlink(r.oid); END LOOP;",
            "  FOR r IN SELECT pubname FROM pg_publication LOOP",
            "    EXECUTE format('DROP PUBLICATION %I', r.pubname); END LOOP;",
            f"  FOR r IN {USER_SCHEMAS} LOOP",
            "    EXECUTE format('DROP SCHEMA %I CASCADE', r.nspname); END LOOP;",
            "  FOR r IN SELECT extname FROM pg_extension WHERE extname <> 'plpgsql' LOOP",
            "    EXECUTE format('DROP EXTENSION IF EXISTS %I CASCADE', r.extname); END LOOP;",
            "END $statekeeper$;",
        ]
        if had_public:
            if server_num >= 150000:
                lines += ["CREATE SCHEMA public AUTHORIZATION pg_database_owner;",
                          "GRANT USAGE ON SCHEMA public TO PUBLIC;"]
            else:
                lines += ["CREATE SCHEMA public;",
                          "GRANT CREATE, USAGE ON SCHEMA public TO PUBLIC;"]
            lines.append("COMMENT ON SCHEMA public IS 'standard public schema';")
        return "\n".join(lines) + "\n"

    def restore(self, manifest: Manifest, hook: Hook, reconnected: Hook = noop) -> None:
        """Drop everything and replay the dump, in one transaction (see the module doc); with
        ``jobs`` above 1, the drops in one transaction, then ``pg_restore -j``."""
        pg_restore = pg_tool("pg_restore", self.pg_bin)
        psql = pg_tool("psql", self.pg_bin)
        try:
            conn = self.target.connect(autocommit=True)
        except TargetUnreachable:
            raise  # exit 3: nothing was done
        except TargetError as e:
            raise BackupError(str(e)) from e
        try:
            server_num = int(conn.info.server_version)
        finally:
            conn.close()
        had_public = "schema public" in manifest.fingerprint.get("schema_objects", {})
        prelude = self._prelude(had_public, server_num).encode("utf-8")
        env = client_env(self.target)
        if self.jobs > 1:
            self._restore_parallel(manifest, prelude, env, hook, pg_restore, psql)
            return
        with tempfile.TemporaryFile() as err1, tempfile.TemporaryFile() as err2:
            here = manifest.artifact_path.parent
            pids = [here / f"restore-{n}.pid" for n in ("pg_restore", "psql")]
            src = children.popen(
                [pg_restore, "--single-transaction", "--file=-", str(manifest.artifact_path)],
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err1,
                pid_file=pids[0],
            )
            with children.supervised(src):
                dst = children.popen(
                    [psql, "-X", "-q", "--no-password", "-v", "ON_ERROR_STOP=1", "-v",
                     "VERBOSITY=terse", "-f", "-", f"--dbname={self.target.client_conninfo()}"],
                    env=env, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=err2,
                    pid_file=pids[1],
                )
            assert src.stdout is not None and dst.stdin is not None
            try:
                with children.supervised(src, dst):
                    with progress_task("restore", unit="bytes") as t:
                        commit = _relay(_counted(src.stdout, t), dst.stdin, prelude)
                    src.stdout.close()  # psql may have stopped early: do not leave it stuck
                    rc_src = src.wait(timeout=self.timeout)
                    if rc_src == 0 and commit:
                        hook()
                        # Only now, with the whole script delivered, may it commit.
                        _write(dst.stdin, b"COMMIT;\n")
                    dst.stdin.close()
                    rc_dst = dst.wait(timeout=self.timeout)
            finally:
                for pid_file in pids:
                    pid_file.unlink(missing_ok=True)
            if rc_dst != 0:
                raise BackupError(
                    f"restore of backup {manifest.id} failed, database left as it was: "
                    f"{_read(err2)}"
                )
            if rc_src != 0 or not commit:
                raise BackupError(
                    f"restore of backup {manifest.id} failed, database left as it was: "
                    f"pg_restore: {_read(err1) if rc_src else 'script ended early'}"
                )

    def _restore_parallel(self, manifest: Manifest, prelude: bytes, env: dict[str, str],
                          hook: Hook, pg_restore: str, psql: str) -> None:
        """The drops (``prelude``) committed by psql, then ``pg_restore -j`` straight into the
        database: each worker commits its own objects, so a failure part-way leaves part of
        the backup in (RestoreIncomplete: restoring again drops it all first)."""
        here = manifest.artifact_path.parent
        conninfo = f"--dbname={self.target.client_conninfo()}"
        psql_pid, restore_pid = here / "restore-psql.pid", here / "restore-pg_restore.pid"
        with tempfile.TemporaryFile() as err:
            drop = children.popen(
                [psql, "-X", "-q", "--no-password", "-v", "ON_ERROR_STOP=1", "-v",
                 "VERBOSITY=terse", "-f", "-", conninfo],
                env=env, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=err,
                pid_file=psql_pid,
            )
            try:
                with children.supervised(drop):
                    drop.communicate(prelude + b"COMMIT;\n", timeout=self.timeout)
            finally:
                psql_pid.unlink(missing_ok=True)
            if drop.returncode != 0:
                raise BackupError(f"restore of backup {manifest.id} failed, database left as "
                                  f"it was: {_read(err)}")
        hook()  # everything is dropped, nothing loaded yet: the restore is in doubt from here
        # A worker's session waits for a lock 60 s at most, as the one-transaction restore.
        env = {**env, "PGOPTIONS": (env.get("PGOPTIONS", "")
                                    + f" -c lock_timeout={self.lock_timeout}").strip()}
        with tempfile.TemporaryFile() as err:
            load = children.popen(
                [pg_restore, f"--jobs={self.jobs}", "--exit-on-error", "--no-password",
                 conninfo, str(manifest.artifact_path)],
                env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
                pid_file=restore_pid,
            )
            try:
                with children.supervised(load):
                    rc = load.wait(timeout=self.timeout)
            except subprocess.TimeoutExpired as e:
                raise RestoreIncomplete(
                    f"restore of backup {manifest.id}: pg_restore did not finish within "
                    f"{self.timeout:.0f} s; the database holds part of the backup: restore "
                    "again") from e
            finally:
                restore_pid.unlink(missing_ok=True)
            if rc != 0:
                raise RestoreIncomplete(
                    f"restore of backup {manifest.id} failed part-way (a parallel restore is "
                    f"not one transaction): pg_restore: {_read(err)}; the database holds part "
                    "of the backup: restore again")

    def settle(self, workdir: Path, backup_id: str, restoring: bool) -> list[str]:
        """After a crash, before the step in doubt is redone: stop this backup's pg_dump (or
        its restore's pg_restore and psql) if it still runs, remove its partial dump (a file,
        or a directory for parallel jobs: either, whatever ``jobs`` says now)."""
        names = ("restore-pg_restore", "restore-psql") if restoring else ("pg_dump",)
        notes = [f"stopped the orphaned {what}" for n in names
                 if (what := children.stop_recorded(workdir / f"{n}.pid"))]
        for name in () if restoring else (self.FILE_NAME, self.DIR_NAME):
            tmp = workdir / f".{name}.partial"
            if tmp.is_dir() and not tmp.is_symlink():
                shutil.rmtree(tmp)
            elif tmp.exists() or tmp.is_symlink():
                tmp.unlink()
            else:
                continue
            notes.append(f"removed the partial {tmp.name}")
        return notes

    def estimate_size(self) -> int:
        return database_size(self.target)

    def free_space(self, backup_dir: Path) -> int:
        return disk_free(backup_dir)


def _write(f: IO[bytes], data: bytes) -> bool:
    try:
        f.write(data)
        return True
    except BrokenPipeError:
        return False


def _wait_growing(proc: subprocess.Popen[Any], artifact: Path, timeout: float) -> int:
    """``proc.wait(timeout)``, reporting the artifact's size as it grows (pg_dump says
    nothing else about how far it got)."""
    deadline = time.monotonic() + timeout
    with progress_task("pg_dump", unit="bytes") as t:
        while True:
            try:
                return proc.wait(timeout=max(0.0, min(0.25, deadline - time.monotonic())))
            except subprocess.TimeoutExpired:
                if time.monotonic() >= deadline:
                    raise
            with contextlib.suppress(OSError):
                t.update(artifact_size(artifact))


def _counted(lines: Iterable[bytes], t: Task) -> Iterator[bytes]:
    """``lines``, reporting the bytes that went by (every thousand lines: a dump's data
    lines are many and short)."""
    done = 0
    for n, line in enumerate(lines, 1):
        done += len(line)
        if n % 1000 == 0:
            t.update(done)
        yield line
    t.update(done)


def _relay(src: Iterable[bytes], dst: IO[bytes], prelude: bytes) -> bool:
    """Copy pg_restore's single-transaction script to psql, after ``prelude``, holding back its
    final ``COMMIT;``. Returns whether that final COMMIT was seen (the script is complete)."""
    if not _write(dst, prelude):
        return False
    in_copy = False
    held: list[bytes] = []  # a COMMIT; line and what followed it (only blanks/comments/meta)
    for line in src:
        if in_copy:
            if line in (b"\\.\n", b"\\.\r\n"):
                in_copy = False
            if not _write(dst, line):
                return False
            continue
        if held:
            s = line.strip()
            if not s or s.startswith((b"--", b"\\unrestrict")):
                held.append(line)
                continue
            # Not the end: the COMMIT; was inside something else. Pass it on as it was.
            if not _write(dst, b"".join(held)):
                return False
            held = []
        if line.rstrip(b"\r\n") == b"COMMIT;":
            held = [line]
            continue
        if line.startswith(b"COPY ") and line.rstrip().endswith(b"FROM stdin;"):
            in_copy = True
        if not _write(dst, line):
            return False
    if not held:
        return False
    return _write(dst, b"".join(held[1:]))


def _read(f: IO[bytes]) -> str:
    f.seek(0)
    return stderr_line(f.read().decode("utf-8", "replace"))
