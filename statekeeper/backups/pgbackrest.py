"""The ``pgbackrest`` method: a real pgBackRest backup, a named restore point, and a
point-in-time restore of the whole cluster to that restore point.

create:  ``pgbackrest backup`` (incremental, or full when the stanza has none), then, with the
         target's user tables locked against writes for a moment, the fingerprint and
         ``pg_create_restore_point('statekeeper-<id>')``, then a WAL switch, waiting until that
         WAL segment is archived. The artifact kept in the backup directory is a copy of
         pgBackRest's own ``backup.manifest`` for the backup (``repo-get``), hashed like any
         artifact; ``verify`` also compares it with the repository's and runs
         ``pgbackrest verify``.
restore: ``stop_command`` (when the server runs), ``pgbackrest restore --delta --type=name
         --target=<restore point> --target-action=promote --set=<label>``, ``start_command``,
         then wait until the server accepts connections and has left recovery.

pgBackRest runs as the operating-system user that owns the cluster's data directory
(``pg1-path``), through ``runuser`` when statekeeper runs as root.
"""

from __future__ import annotations

import configparser
import contextlib
import json
import os
import pwd
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from ..dialects.pg_fingerprint import pg_fingerprint
from ..errors import (
    BackupCorrupt,
    BackupError,
    ConfigError,
    RestoreIncomplete,
    TargetError,
)
from ..files import publish, write_private
from ..fingerprint import quote_ident
from ..targets import Target, first_line
from .model import Created, Hook, Manifest, MethodOptions, disk_free
from .pgtools import check_same_database, database_size, identity, stderr_line

DEFAULT_REPO = "/var/lib/pgbackrest"
DEFAULT_CONFIG = "/etc/pgbackrest/pgbackrest.conf"


class PgBackRestMethod:
    name = "pgbackrest"
    checks_repository = True  # the backup is in pgBackRest's repository
    whole_cluster = True  # a restore rewinds every database of the cluster
    artifact_name = "backup.manifest"

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
        argv += [f"--stanza={self.stanza}", "--log-level-console=error",
                 "--log-level-stderr=error", *args]
        if os.geteuid() == 0:
            user = self.os_user()
            if user != "root":
                argv = ["runuser", "-u", user, "--", *argv]
        return argv

    def _run(self, *args: str, what: str, timeout: float | None = None) -> str:
        argv = self._argv(*args)
        env = dict(os.environ)
        if os.geteuid() == 0:
            with contextlib.suppress(KeyError):
                env["HOME"] = pwd.getpwnam(self.os_user()).pw_dir
        try:
            proc = subprocess.run(
                argv, capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL,
                timeout=timeout or self.timeout, cwd="/",
            )
        except subprocess.TimeoutExpired as e:
            raise BackupError(f"{what} did not finish within {e.timeout:.0f} s") from e
        if proc.returncode != 0:
            raise BackupError(f"{what} failed: {_pgbr_error(proc.stderr or proc.stdout)}")
        return proc.stdout

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
            proc = subprocess.run(argv, capture_output=True, stdin=subprocess.DEVNULL,
                                  timeout=300, cwd="/")
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
        self._run("backup", f"--annotation=statekeeper-backup-id={backup_id}",
                  what="pgbackrest backup")
        backups = self._info().get("backup", [])
        mine = [b for b in backups
                if (b.get("annotation") or {}).get("statekeeper-backup-id") == backup_id]
        if not mine:
            raise BackupError(f"pgbackrest info does not list the backup annotated {backup_id}")
        label = str(mine[-1]["label"])
        btype = str(mine[-1].get("type", ""))

        try:
            conn = self.target.connect()
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
            fp = pg_fingerprint(conn, begin=False)
            lsn = str(conn.execute("SELECT pg_create_restore_point(%s)",
                                   (restore_point,)).fetchone()[0])
            conn.commit()
            conn.autocommit = True
            segment = str(conn.execute(
                "SELECT pg_walfile_name(pg_switch_wal())").fetchone()[0])
            self._wait_archived(conn, segment)
        except psycopg.Error as e:
            raise BackupError(f"restore point on {self.target.display}: {first_line(e)}") from e
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
        copy kept, and ``pgbackrest verify`` must find the repository's files intact."""
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
        try:
            out = self._run("verify", "--output=text", "--verbose", what="pgbackrest verify")
        except BackupError as e:
            raise BackupCorrupt(f"backup {manifest.id}: {e}") from e
        # verify exits 0 even when it finds damage: read its summary for this backup.
        m = re.search(rf"backup: {re.escape(label)}, status: ([\w-]+)(.*)", out)
        if m is None:
            raise BackupCorrupt(
                f"backup {manifest.id}: pgbackrest verify did not report backup {label}"
            )
        if m.group(1) != "valid":
            details = [ln.strip() for ln in out[m.end():].splitlines()[1:3]
                       if ln.strip() and not ln.strip().startswith(("backup:", "stanza:"))]
            raise BackupCorrupt(
                f"backup {manifest.id}: pgbackrest verify finds backup {label} "
                f"{m.group(1)}{m.group(2)}" + (f" ({'; '.join(details)})" if details else "")
            )

    # -- restore -----------------------------------------------------------------------------
    def _running(self) -> bool:
        try:
            conn = self.target.connect(autocommit=True)
        except TargetError:
            return False
        conn.close()
        return True

    def _shell(self, command: str, what: str) -> None:
        try:
            proc = subprocess.run(command, shell=True, capture_output=True, text=True,
                                  stdin=subprocess.DEVNULL, timeout=self.start_timeout)
        except subprocess.TimeoutExpired as e:
            raise RestoreIncomplete(f"{what} did not finish within {e.timeout:.0f} s") from e
        if proc.returncode != 0:
            msg = (proc.stderr or proc.stdout).strip().splitlines()
            raise RestoreIncomplete(
                f"{what} failed (exit {proc.returncode}): {msg[-1] if msg else 'no output'}"
            )

    def restore(self, manifest: Manifest, hook: Hook) -> None:
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
        if self._running():
            self._shell(self.stop_command, "stop_command")
        hook()
        try:
            self._run(
                "restore", "--delta", "--type=name", f"--target={manifest.restore_point}",
                "--target-action=promote", f"--set={manifest.pgbackrest_label}",
                what="pgbackrest restore",
            )
        except BackupError as e:
            raise RestoreIncomplete(f"{e}; the server is stopped") from e
        self._shell(self.start_command, "start_command")
        self._wait_ready()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        last = "no connection"
        while time.monotonic() < deadline:
            try:
                conn = self.target.connect(autocommit=True)
            except TargetError as e:
                last = str(e)
                time.sleep(0.3)
                continue
            try:
                if not conn.execute("SELECT pg_is_in_recovery()").fetchone()[0]:
                    return
                last = "still in recovery"
            except Exception as e:  # the server may go away while starting
                last = first_line(e)
            finally:
                conn.close()
            time.sleep(0.3)
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
