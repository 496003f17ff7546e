"""The ``pgbackrest`` method: a real pgBackRest backup, a named restore point, and a
point-in-time restore of the whole cluster to that restore point.

create:  ``pgbackrest backup`` (incremental, or full when the stanza has none), then, with the
         target's user tables locked against writes for a moment, the fingerprint and
         ``pg_create_restore_point('statekeeper-<id>')``, then a WAL switch, waiting until that
         WAL segment is archived. The artifact kept in the backup directory is a copy of
         pgBackRest's own ``backup.manifest`` for the backup (``repo-get``), hashed like any
         artifact; ``verify`` also compares it with the repository's and verifies that one
         backup set and the WAL through its restore point (:mod:`.pgbackrest_verify`), not
         the whole repository.
restore: ``stop_command`` (when the server runs), ``pgbackrest restore --delta --type=name
         --target=<restore point> --target-action=pause|promote --set=<label>``,
         ``start_command``; as soon as the server accepts connections the caller's target
         lock is taken again, then (paused at the restore point) replay is resumed, and the
         restore ends when the server has left recovery. It can run, and be redone, with the
         server down: the server's state is read from ``postmaster.pid`` when it does not
         answer.

pgBackRest runs as the operating-system user that owns the cluster's data directory
(``pg1-path``): when statekeeper runs as root, its child switches to that user (uid, gid and
groups) before it executes pgbackrest, so that pgbackrest is statekeeper's own child and dies
with it (statekeeper/children.py; ``runuser`` would stay between them and leave pgbackrest
behind when it is killed).

A run killed anyway may leave a ``pgbackrest backup`` or ``restore`` behind (one started by an
older statekeeper, say), holding the stanza's lock: the probe of the step in doubt
(:meth:`PgBackRestMethod.settle`) stops the pgbackrest processes of that backup id (a backup
carries ``--annotation=statekeeper-backup-id=<id>``, a restore ``--target=statekeeper-<id>``)
and says so; a ``pgbackrest backup`` of someone else holding the lock is waited for, a bounded
time (``lock_wait``), before ``create`` runs its own.
"""

from __future__ import annotations

import configparser
import contextlib
import fcntl
import json
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import children
from ..dialects.pg_fingerprint import pg_fingerprint
from ..errors import (
    BackupCorrupt,
    BackupError,
    ConfigError,
    LockHeld,
    RestoreIncomplete,
    TargetError,
    TargetUnreachable,
)
from ..files import publish, write_private
from ..fingerprint import quote_ident
from ..progress import Task
from ..progress import task as progress_task
from ..targets import Target, first_line
from .model import Created, Hook, Manifest, MethodOptions, disk_free, noop
from .pgbackrest_verify import (
    VERIFY_SET_SINCE,
    NotVerifiable,
    Verified,
    parse_version,
    read_verify_report,
    verify_restore_wal,
    verify_set,
)
from .pgtools import check_same_database, database_size, identity, stderr_line

DEFAULT_REPO = "/var/lib/pgbackrest"
DEFAULT_CONFIG = "/etc/pgbackrest/pgbackrest.conf"
DEFAULT_LOCK_PATH = "/tmp/pgbackrest"
ANNOTATION = "statekeeper-backup-id"


class PgBackRestMethod:
    name = "pgbackrest"
    checks_repository = True  # the backup is in pgBackRest's repository
    whole_cluster = True  # a restore rewinds every database of the cluster
    restarts_server = True  # stop_command, pgbackrest restore, start_command
    artifact_name = "backup.manifest"
    #: check with ``pgbackrest verify`` of the whole repository, as before per-set checks
    #: (benchmarks/restore_bench.py compares the two)
    whole_repository = False
    #: what the last :meth:`check` verified, and how
    last_check: Verified | None = None

    def __init__(
        self,
        target: Target,
        *,
        stanza: str | None,
        config: Path | None = None,
        stop_command: str | None = None,
        start_command: str | None = None,
        timeout: float = 6 * 3600,
        start_timeout: float = 300,
        archive_timeout: float = 120,
        pg_bin: Path | None = None,
        lock_wait: float = 600,
    ) -> None:
        if not stanza:
            raise ConfigError("[backup] stanza is not set (the pgbackrest method needs it)")
        self.target = target
        self.stanza = stanza
        self.config = config
        self.stop_command = stop_command
        self.start_command = start_command
        self.timeout = timeout
        self.start_timeout = start_timeout
        self.archive_timeout = archive_timeout
        self.pg_bin = pg_bin
        self.lock_wait = lock_wait  # for another pgbackrest backup holding the stanza's lock
        self._conf: configparser.RawConfigParser | None = None

    @classmethod
    def configured(cls, target: Target, options: MethodOptions) -> PgBackRestMethod:
        return cls(
            target, stanza=options.stanza, config=options.pgbackrest_config,
            stop_command=options.stop_command, start_command=options.start_command,
            timeout=options.timeout, start_timeout=options.start_timeout,
            pg_bin=options.pg_bin,
        )

    # -- configuration -----------------------------------------------------------------------
    def _settings(self) -> configparser.RawConfigParser:
        if self._conf is None:
            cp = configparser.RawConfigParser(strict=False, interpolation=None)
            path = self.config or Path(DEFAULT_CONFIG)
            if self.config is not None and not path.is_file():
                raise ConfigError(f"[backup] pgbackrest_config {path} does not exist")
            try:
                cp.read(path, encoding="utf-8")
            except (configparser.Error, OSError, UnicodeDecodeError) as e:
                raise ConfigError(f"{path}: not a pgBackRest configuration: {e}") from e
            self._conf = cp
        return self._conf

    def _option(self, key: str) -> str | None:
        cp = self._settings()
        for section in (self.stanza, "global"):
            if cp.has_option(section, key):
                return cp.get(section, key).strip()
        return None

    def repo_path(self) -> Path:
        return Path(self._option("repo1-path") or DEFAULT_REPO)

    def os_user(self) -> str:
        """The owner of the cluster's data directory, else postgres."""
        data = self._option("pg1-path")
        if data:
            try:
                return pwd.getpwuid(Path(data).stat().st_uid).pw_name
            except (OSError, KeyError):
                pass
        return "postgres"

    def _argv(self, *args: str) -> list[str]:
        exe = shutil.which("pgbackrest")
        if exe is None:
            raise ConfigError("pgbackrest not found on PATH (install the pgbackrest package)")
        argv = [exe]
        if self.config is not None:
            argv.append(f"--config={self.config}")
        return [*argv, f"--stanza={self.stanza}", "--log-level-console=error",
                "--log-level-stderr=error", *args]

    def _as_owner(self) -> dict[str, Any]:
        """Popen keywords: as root, pgbackrest runs as the owner of the data directory
        (its uid, gid, groups and HOME), switched to in the child itself."""
        env = dict(os.environ)
        if os.geteuid() != 0:
            return {"env": env}
        user = self.os_user()
        if user == "root":
            return {"env": env}
        try:
            pw = pwd.getpwnam(user)
        except KeyError as e:
            raise ConfigError(f"pgbackrest should run as {user}, who does not exist") from e
        env.update(HOME=pw.pw_dir, USER=user, LOGNAME=user)
        groups = sorted(set(os.getgrouplist(user, pw.pw_gid)))
        return {"env": env, "user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": groups}

    def _run(self, *args: str, what: str, timeout: float | None = None,
             poll: Callable[[], None] | None = None) -> str:
        argv = self._argv(*args)
        try:
            proc = children.run(argv, timeout=timeout or self.timeout, text=True,
                                stdin=subprocess.DEVNULL, cwd="/", poll=poll,
                                **self._as_owner())
        except subprocess.TimeoutExpired as e:
            raise BackupError(f"{what} did not finish within {e.timeout:.0f} s") from e
        if proc.returncode != 0:
            raise BackupError(f"{what} failed: {_pgbr_error(proc.stderr or proc.stdout)}")
        return str(proc.stdout)

    # -- orphans -----------------------------------------------------------------------------
    def _lock_path(self) -> Path:
        return Path(self._option("lock-path") or DEFAULT_LOCK_PATH)

    def _report_percent(self, t: Task) -> None:
        """How far the running backup got, as pgBackRest writes it into its backup lock file
        (what ``pgbackrest info`` shows as "backup/expire running - N% complete"):
        ``pctCplt`` in hundredths of a percent (2.4x; absent until the copy begins), or
        ``sizeCplt`` of ``size`` where a later version writes those."""
        path = self._lock_path() / f"{self.stanza}-backup.lock"
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return
        if not isinstance(data, dict):
            return
        size, done, pct = data.get("size"), data.get("sizeCplt"), data.get("pctCplt")
        if isinstance(size, int) and isinstance(done, int) and size > 0:
            t.update(min(100, done * 100 // size))
        elif isinstance(pct, int):
            t.update(min(100, pct // 100))

    def _lock_holder(self) -> tuple[int, list[str]] | None:
        """The live pgbackrest process whose pid the stanza's backup lock file names (pgBackRest
        2.4x writes ``{"execId": ..., "pid": N}`` into ``<lock-path>/<stanza>-backup.lock``)."""
        path = self._lock_path() / f"{self.stanza}-backup.lock"
        try:
            pid = int(json.loads(path.read_text(encoding="utf-8"))["pid"])
        except (OSError, ValueError, KeyError, TypeError):
            return None
        argv = children.cmdline(pid) if pid > 1 else None
        if not argv or not any(os.path.basename(a) == "pgbackrest" for a in argv[:4]):
            return None  # gone, or the pid now belongs to another program
        return pid, argv

    def _orphans(self, marker: str, command: str) -> list[int]:
        """pgbackrest processes of this host whose arguments carry ``marker`` and
        ``command`` (a backup or restore of one backup id), oldest first."""
        found: list[int] = []
        me = os.getpid()
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or int(entry) == me:
                continue
            argv = children.cmdline(int(entry))
            if (argv and any(os.path.basename(a) == "pgbackrest" for a in argv[:4])
                    and marker in argv and any(a.startswith(command) for a in argv[1:])):
                found.append(int(entry))
        return sorted(found)

    def settle(self, workdir: Path, backup_id: str, restoring: bool) -> list[str]:
        """After a crash, before the step in doubt is redone: stop the pgbackrest processes
        of this backup id that still run, remove this backup's partial copy; what was done."""
        notes: list[str] = []
        if restoring:
            pids = self._orphans(f"--target=statekeeper-{backup_id}", "restore")
            what = "pgbackrest restore"
        else:
            pids = self._orphans(f"--annotation={ANNOTATION}={backup_id}", "backup")
            what = "pgbackrest backup"
        holder = self._lock_holder()
        for pid in pids:
            children.stop_pid(pid)
        if pids:
            lock = (f", which held stanza {self.stanza}'s backup lock"
                    if holder and holder[0] in pids else "")
            notes.append(f"stopped the orphaned {what} of backup {backup_id} "
                         f"(pid {', '.join(map(str, pids))}){lock}")
        if not restoring:
            tmp = workdir / f".{self.artifact_name}.partial"
            if tmp.exists():
                tmp.unlink()
                notes.append(f"removed the partial {tmp.name}")
        return notes

    def _await_lock(self, backup_id: str) -> None:
        """Before ``pgbackrest backup``: a backup of this id still running (an orphan) is
        stopped; another one holding the stanza's lock is waited for, ``lock_wait`` at most."""
        holder = self._lock_holder()
        if holder is None:
            return
        if f"--annotation={ANNOTATION}={backup_id}" in holder[1]:
            children.stop_pid(holder[0])
            return
        deadline = time.monotonic() + self.lock_wait
        while holder is not None and time.monotonic() < deadline:
            time.sleep(0.5)
            holder = self._lock_holder()
        if holder is not None:
            raise BackupError(
                f"stanza {self.stanza}'s backup lock is held by pgbackrest (pid {holder[0]}: "
                f"{' '.join(holder[1][1:])[:200]}); waited {self.lock_wait:.0f} s for it"
            )

    def _info(self) -> dict[str, Any]:
        out = self._run("info", "--output=json", what="pgbackrest info", timeout=300)
        try:
            data = json.loads(out)
        except ValueError as e:
            raise BackupError(f"pgbackrest info printed no JSON: {out[:200]!r}") from e
        for st in data:
            if st.get("name") == self.stanza:
                status = st.get("status", {})
                if status.get("code") not in (0, None) and not st.get("backup"):
                    raise BackupError(
                        f"pgbackrest stanza {self.stanza}: {status.get('message', 'not usable')}"
                    )
                return dict(st)
        raise BackupError(f"pgbackrest stanza {self.stanza} not found")

    def _manifest_bytes(self, label: str) -> bytes:
        path = self.repo_path() / "backup" / self.stanza / label / "backup.manifest"
        argv = self._argv("repo-get", str(path))
        try:
            proc = children.run(argv, stdin=subprocess.DEVNULL, timeout=300, cwd="/",
                                **self._as_owner())
        except subprocess.TimeoutExpired as e:
            raise BackupError("pgbackrest repo-get did not finish within 300 s") from e
        if proc.returncode != 0:
            raise BackupError(
                f"pgbackrest repo-get {path} failed: "
                f"{_pgbr_error(proc.stderr.decode('utf-8', 'replace'))}"
            )
        return bytes(proc.stdout)

    # -- create ------------------------------------------------------------------------------
    def create(self, workdir: Path, backup_id: str) -> Created:
        import psycopg

        restore_point = f"statekeeper-{backup_id}"
        self._await_lock(backup_id)
        with progress_task("pgbackrest backup", 100, "%") as t:
            self._run("backup", f"--annotation={ANNOTATION}={backup_id}",
                      what="pgbackrest backup", poll=lambda: self._report_percent(t))
        backups = self._info().get("backup", [])
        mine = [b for b in backups
                if (b.get("annotation") or {}).get(ANNOTATION) == backup_id]
        if not mine:
            raise BackupError(f"pgbackrest info does not list the backup annotated {backup_id}")
        label = str(mine[-1]["label"])
        btype = str(mine[-1].get("type", ""))

        try:
            conn = self.target.connect()
        except TargetUnreachable:
            raise  # exit 3: nothing was done
        except TargetError as e:
            raise BackupError(str(e)) from e
        try:
            version, sysid = identity(conn)
            host, port = self.target.endpoint(conn)
            conn.commit()
            tables = [
                f"{quote_ident(s)}.{quote_ident(t)}" for s, t in conn.execute(
                    "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n "
                    "ON n.oid = c.relnamespace WHERE c.relkind IN ('r', 'p') "
                    "AND n.nspname NOT IN ('pg_catalog', 'information_schema') "
                    "AND n.nspname !~ '^pg_(toast_)?temp_' ORDER BY 1, 2"
                ).fetchall()
            ]
            conn.commit()
            # Writers wait for this short transaction, so the fingerprint is exactly the state
            # at the restore point.
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            conn.execute("SET LOCAL lock_timeout = '60s'")
            if tables:
                conn.execute(f"LOCK TABLE {', '.join(tables)} IN SHARE MODE")
            fp = pg_fingerprint(conn, begin=False, target=self.target)
            lsn = str(conn.execute("SELECT pg_create_restore_point(%s)",
                                   (restore_point,)).fetchone()[0])
            conn.commit()
            conn.autocommit = True
            segment = str(conn.execute(
                "SELECT pg_walfile_name(pg_switch_wal())").fetchone()[0])
            self._wait_archived(conn, segment)
        except psycopg.Error as e:
            raise BackupError(f"restore point on {self.target.shown}: {first_line(e)}") from e
        finally:
            conn.close()

        artifact = workdir / self.artifact_name
        tmp = workdir / f".{self.artifact_name}.partial"
        write_private(tmp, self._manifest_bytes(label))
        publish(tmp, artifact)
        return Created(
            artifact=artifact, fingerprint=fp, server_version=version, host=host, port=port,
            system_identifier=sysid,
            extra={"stanza": self.stanza, "pgbackrest_label": label, "pgbackrest_type": btype,
                   "restore_point": restore_point, "restore_point_lsn": lsn},
        )

    def _wait_archived(self, conn: Any, segment: str) -> None:
        deadline = time.monotonic() + self.archive_timeout
        failed = None
        while True:
            done, failed = conn.execute(
                "SELECT last_archived_wal, last_failed_wal FROM pg_stat_archiver").fetchone()
            if done and len(done) >= 24 and done[:24] >= segment:
                return
            if time.monotonic() > deadline:
                raise BackupError(
                    f"WAL segment {segment} with the restore point was not archived within "
                    f"{self.archive_timeout:.0f} s"
                    + (f" (archive_command failing; last failed {failed})" if failed else "")
                )
            time.sleep(0.2)

    @classmethod
    def database_of(cls, target: Target) -> str:
        return target.database

    @classmethod
    def check_identity(cls, target: Target, manifest: Manifest) -> None:
        # A server that is down passes: a cluster restore is what pgBackRest's stanza defines.
        check_same_database(target, manifest, server_may_be_down=True)

    # -- verify ------------------------------------------------------------------------------
    def check(self, manifest: Manifest) -> None:
        """The backup must still be in the repository, its manifest there identical to the
        copy kept, and its set intact: only the files of this set and the WAL from its start
        through its restore point (statekeeper/backups/pgbackrest_verify.py; ``pgbackrest verify
        --set`` from 2.55.0 on), so that the check does not grow with the repository. Where
        the set cannot be read here (another repository type or host, encryption, no lz4 or
        zstd program for the WAL), ``pgbackrest verify`` of the whole repository, as before.
        :attr:`last_check` says which was done."""
        label = manifest.pgbackrest_label
        if not label:
            raise BackupCorrupt(f"backup {manifest.id}: manifest has no pgBackRest label")
        labels = [str(b.get("label")) for b in self._info().get("backup", [])]
        if label not in labels:
            raise BackupCorrupt(
                f"backup {manifest.id}: pgBackRest backup {label} is no longer in the "
                f"repository of stanza {self.stanza}"
            )
        try:
            repo_copy = self._manifest_bytes(label)
        except BackupError as e:
            raise BackupCorrupt(f"backup {manifest.id}: {e}") from e
        if repo_copy != manifest.artifact_path.read_bytes():
            raise BackupCorrupt(
                f"backup {manifest.id}: pgBackRest's backup.manifest for {label} in the "
                "repository differs from the copy taken at backup time"
            )
        version = parse_version(self._run("version", what="pgbackrest version", timeout=60))
        local = {"repo_type": self._option("repo1-type"), "repo_host": self._option("repo1-host")}
        try:
            if self.whole_repository:
                raise NotVerifiable("asked for")
            if version < VERIFY_SET_SINCE:
                self.last_check = verify_set(
                    manifest.id, repo_copy, self.repo_path(), self.stanza,
                    manifest.restore_point_lsn, cipher_type=self._option("repo1-cipher-type"),
                    **local)
                return
            args: tuple[str, ...] = (f"--set={label}",)
        except NotVerifiable as e:
            args, reason = (), str(e)
        try:
            out = self._run("verify", *args, "--output=text", "--verbose",
                            what="pgbackrest verify")
        except BackupError as e:
            raise BackupCorrupt(f"backup {manifest.id}: {e}") from e
        read_verify_report(out, manifest.id, label)
        if not args:
            self.last_check = Verified(
                "repository", f"pgbackrest verify of the whole repository ({reason})")
            return
        how = f"pgbackrest verify --set={label}"
        try:  # --set verifies the WAL through the backup's end, not through the restore point
            wal = verify_restore_wal(manifest.id, repo_copy, self.repo_path(), self.stanza,
                                     manifest.restore_point_lsn, **local)
            self.last_check = Verified("set", f"{how} {wal.how}", wal=wal.wal)
        except NotVerifiable as e:
            self.last_check = Verified("set", f"{how} (the WAL after it not read: {e})")

    # -- restore -----------------------------------------------------------------------------
    def _data_dir(self) -> Path | None:
        data = self._option("pg1-path")
        return Path(data) if data else None

    def _postmaster(self) -> Postmaster | None:
        """What ``<pg1-path>/postmaster.pid`` says, None without the file: how the server's
        state is read when it does not answer."""
        data = self._data_dir()
        if data is None:
            return None
        path = data / "postmaster.pid"
        try:
            st = path.stat()
            lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
        except FileNotFoundError:
            return None
        except OSError as e:
            raise RestoreIncomplete(f"cannot read {path}: {e.strerror or e}") from e
        try:
            pid = int(lines[0].strip())
        except (IndexError, ValueError):
            pid = 0
        return Postmaster(path, pid, _verdict(pid, data, st.st_mtime))

    def _running(self) -> bool:
        """Is the server up? It answers (or says it is starting or stopping), or its
        ``postmaster.pid`` names a live process that is not provably someone else."""
        try:
            conn = self.target.connect(autocommit=True)
        except TargetError as e:
            if any(w in str(e) for w in ("starting up", "shutting down", "in recovery")):
                return True
            pm = self._postmaster()
            return pm is not None and pm.verdict != "stale"
        conn.close()
        return True

    def _pause_at_target(self) -> bool:
        """Pause recovery at the restore point (rather than promote at once) when the server
        is up now, so that its settings can be read: it runs with ``hot_standby`` (paused, it
        then accepts read-only connections, where the target lock is taken before it is
        promoted and can be written) and this role may resume replay. With the server already
        down (a restore resumed) the settings are unknown and it is promoted at once; the lock
        is then taken as soon as it accepts connections."""
        try:
            conn = self.target.connect(autocommit=True)
        except TargetError:
            return False
        try:
            row = conn.execute(
                "SELECT current_setting('hot_standby') = 'on' AND has_function_privilege("
                "'pg_catalog.pg_wal_replay_resume()', 'EXECUTE')").fetchone()
            return bool(row[0])
        except Exception:
            return False
        finally:
            conn.close()

    def _shell(self, command: str, what: str) -> None:
        try:
            # the server's own stop/start (not a backup tool: a server it starts must not be
            # in a process group statekeeper kills)
            proc = subprocess.run(command, shell=True, capture_output=True, text=True,
                                  stdin=subprocess.DEVNULL, timeout=self.start_timeout)
        except subprocess.TimeoutExpired as e:
            raise RestoreIncomplete(f"{what} did not finish within {e.timeout:.0f} s") from e
        if proc.returncode != 0:
            msg = (proc.stderr or proc.stdout).strip().splitlines()
            raise RestoreIncomplete(
                f"{what} failed (exit {proc.returncode}): {msg[-1] if msg else 'no output'}"
            )

    def restore(self, manifest: Manifest, hook: Hook, reconnected: Hook = noop) -> None:
        """Stop the server (when it runs), ``pgbackrest restore`` the set to the restore
        point, start the server, and take the caller's lock again (``reconnected``) as soon
        as it accepts connections, before it is promoted where it can pause first. Each part
        may be redone after a crash at any moment: the server's state is read from the data
        directory when it does not answer, and a stale ``postmaster.pid`` (its process gone,
        which keeps both pgbackrest and the server from starting) is removed."""
        if manifest.stanza and manifest.stanza != self.stanza:
            raise BackupError(
                f"backup {manifest.id} is in stanza {manifest.stanza}, not {self.stanza}"
            )
        if not self.stop_command or not self.start_command:
            raise ConfigError(
                "[backup] stop_command and start_command must be set for a pgbackrest restore"
            )
        if not manifest.restore_point or not manifest.pgbackrest_label:
            raise BackupCorrupt(f"backup {manifest.id}: manifest has no restore point or label")
        with self._restoring():
            pause = self._pause_at_target()
            if self._running():
                self._shell(self.stop_command, "stop_command")
            pm = self._postmaster()
            if pm is not None and pm.verdict == "running":
                raise RestoreIncomplete(
                    f"the server (pid {pm.pid}) still runs after stop_command; nothing was "
                    "restored"
                )
            if pm is not None and pm.verdict == "unknown":
                raise RestoreIncomplete(
                    f"{pm.path} names pid {pm.pid}, which runs but is not provably this "
                    "data directory's server (another namespace, or the pid reused); nothing "
                    f"was restored: if the server is really down, remove {pm.path} and resume"
                )
            if pm is not None:
                pm.path.unlink(missing_ok=True)  # the server died without removing it
            self._restore(manifest, hook, reconnected, pause)

    @contextlib.contextmanager
    def _restoring(self) -> Iterator[None]:
        """One restore of this stanza at a time on this host, whoever runs it (a ``resume``
        whose target lock waits for the server, a ``backup restore``): an ``flock`` in
        pgBackRest's lock path, held from the stop to the end of recovery."""
        # pgBackRest's lock path when it exists (never created here: pgbackrest, running as
        # the cluster's owner, must be able to write its own locks into it)
        where = self._lock_path() if self._lock_path().is_dir() else Path(tempfile.gettempdir())
        path = where / f"{self.stanza}-statekeeper-restore.lock"
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as e:
            raise ConfigError(f"cannot open restore lock {path}: {e.strerror or e}") from e
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip()
                raise LockHeld(
                    f"another restore of stanza {self.stanza} is running"
                    + (f" ({holder})" if holder else "") + f"; lock file {path}"
                ) from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()}".encode(), 0)
            yield
        finally:
            os.close(fd)  # releases the flock

    def _restore(self, manifest: Manifest, hook: Hook, reconnected: Hook, pause: bool) -> None:
        assert self.start_command  # checked by restore()
        hook()
        try:
            self._run(
                "restore", "--delta", "--type=name", f"--target={manifest.restore_point}",
                f"--target-action={'pause' if pause else 'promote'}",
                f"--set={manifest.pgbackrest_label}",
                what="pgbackrest restore",
            )
        except BackupError as e:
            raise RestoreIncomplete(f"{e}; the server is stopped") from e
        self._shell(self.start_command, "start_command")
        self._wait_ready(reconnected, pause)

    def _wait_ready(self, reconnected: Hook, pause: bool) -> None:
        """Until the server is out of recovery: as soon as it accepts a connection, the
        caller's lock (``reconnected``; another holder is waited for, the same bound); then,
        paused at the restore point, replay is resumed, which promotes it."""
        deadline = time.monotonic() + self.start_timeout
        last = "no connection"
        taken: LockHeld | None = None
        gone_since: float | None = None
        while time.monotonic() < deadline:
            try:
                conn = self.target.connect(autocommit=True)
            except TargetError as e:
                last = str(e)
                if self._postmaster() is None:
                    # start_command returned and no server runs: it stopped (a pause at the
                    # restore point with hot_standby off shuts it down; the retry promotes)
                    gone_since = gone_since or time.monotonic()
                    if time.monotonic() - gone_since > 5:
                        raise RestoreIncomplete(
                            f"the server stopped after start_command ({last}); see the "
                            "server log" + ("; it was to pause at the restore point, which "
                                            "shuts it down when hot_standby is off: resume "
                                            "promotes instead" if pause else "")
                        ) from e
                else:
                    gone_since = None
                time.sleep(0.3)
                continue
            try:
                # every time: a server that restarted again in recovery ended the lock again
                reconnected()
                taken = None
                if not conn.execute("SELECT pg_is_in_recovery()").fetchone()[0]:
                    return
                last = "still in recovery"
                if pause and conn.execute("SELECT pg_is_wal_replay_paused()").fetchone()[0]:
                    conn.execute("SELECT pg_wal_replay_resume()")
                    last = "promoting after the restore point"
            except LockHeld as e:
                last, taken = str(e), e
            except Exception as e:  # the server may go away while starting
                last = first_line(e)
            finally:
                conn.close()
            time.sleep(0.3)
        if taken is not None:
            raise RestoreIncomplete(
                f"the server is back but another process holds the target lock: {taken}; "
                "stop it, then resume"
            ) from taken
        raise RestoreIncomplete(
            f"the server did not come back out of recovery within {self.start_timeout:.0f} s "
            f"({last}); see the server log"
        )

    def estimate_size(self) -> int:
        return database_size(self.target, cluster=True)

    def free_space(self, backup_dir: Path) -> int:
        return disk_free(self.repo_path())


def _pgbr_error(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for ln in lines:
        if "ERROR:" in ln:
            return ln.split("ERROR:", 1)[1].strip()
    return stderr_line(text)


@dataclass(frozen=True)
class Postmaster:
    """``postmaster.pid`` and what it is worth: ``running`` (its pid is a live process whose
    working directory is the data directory: the server, alive), ``stale`` (no such process,
    or the file is older than this boot: the server died without removing it), ``unknown``
    (a live process that is not provably the server: a pid reused, another namespace, no
    permission to look)."""

    path: Path
    pid: int
    verdict: str


def _verdict(pid: int, data: Path, mtime: float) -> str:
    if pid <= 0 or _booted_at() > mtime:
        return "stale"
    if not Path(f"/proc/{pid}").exists():
        return "stale"
    try:
        cwd = os.readlink(f"/proc/{pid}/cwd")
    except OSError:
        return "unknown"
    return "running" if os.path.realpath(cwd) == os.path.realpath(data) else "unknown"


def _booted_at() -> float:
    try:
        for line in Path("/proc/stat").read_text().splitlines():
            if line.startswith("btime "):
                return float(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0.0
