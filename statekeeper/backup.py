"""Verified backups and restores of the target database.

Three methods, chosen by ``[backup] method``:

* ``pg_dump`` (default for PostgreSQL): a custom-format dump taken in the same snapshot as the
  fingerprint; restore drops every user schema and replays the dump in ONE transaction, so a
  failed restore leaves the database as it was and objects created after the backup vanish.
* ``pgbackrest``: a real pgBackRest backup plus a named restore point taken right after it;
  restore is a point-in-time restore of the whole cluster to that restore point.
* ``sqlite``: the online backup API; restore replaces the file atomically.

Every backup lives in ``<backup dir>/<id>/`` with a ``manifest.json`` written atomically, and only
after the artifact is complete and hashed: a directory without a manifest is never a backup.
The manifest carries a :class:`~statekeeper.fingerprint.Fingerprint`; a restore is not done until
the restored database's fingerprint equals it.

This module is a library: it never prints or exits; it returns values or raises typed errors.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from . import __version__
from .errors import (
    BackupCorrupt,
    BackupError,
    BackupNotFound,
    ConfigError,
    RestoreMismatch,
    StatekeeperError,
    WrongDatabase,
)
from .files import private_dir, write_atomic
from .fingerprint import Fingerprint, diff, fingerprint
from .targets import Target

METHODS = ("pg_dump", "pgbackrest", "sqlite")
MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = 1
ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


def utc_now() -> datetime:
    return datetime.now(UTC)


def iso(dt: datetime) -> str:
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def new_backup_id(now: datetime) -> str:
    return now.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(3)


def check_backup_id(backup_id: str) -> str:
    if not isinstance(backup_id, str) or not ID_PATTERN.match(backup_id):
        raise ConfigError(
            f"backup id {backup_id!r} is not valid (letters, digits, '.', '_', '-'; "
            "at most 100 characters, not starting with a punctuation mark)"
        )
    return backup_id


@dataclass
class Manifest:
    """What a backup is, stored as ``manifest.json`` next to the artifact.

    Only integers, strings, booleans and null (no floats), so that it can go into a ledger
    event as it is."""

    id: str
    method: str
    artifact: str  # file name inside the backup's directory, or an absolute path (pgBackRest)
    size: int
    sha256: str
    server_version: str
    created_at: str
    completed_at: str
    duration_ms: int
    target: str  # redacted URL
    database: str  # database name (PostgreSQL) or absolute file path (SQLite)
    fingerprint: dict[str, Any]
    tool: str = f"statekeeper/{__version__}"
    format: int = MANIFEST_FORMAT
    host: str | None = None
    port: int | None = None
    system_identifier: str | None = None
    stanza: str | None = None
    pgbackrest_label: str | None = None
    pgbackrest_type: str | None = None
    restore_point: str | None = None
    restore_point_lsn: str | None = None
    directory: Path | None = field(default=None, compare=False, repr=False)

    @property
    def artifact_path(self) -> Path:
        p = Path(self.artifact)
        if p.is_absolute() or self.directory is None:
            return p
        return self.directory / p

    @property
    def manifest_path(self) -> Path | None:
        return self.directory / MANIFEST_NAME if self.directory else None

    @property
    def fingerprint_digest(self) -> str:
        return str(self.fingerprint.get("digest", ""))

    def get_fingerprint(self) -> Fingerprint:
        try:
            return Fingerprint.from_dict(self.fingerprint)
        except ValueError as e:
            raise BackupCorrupt(f"backup {self.id}: manifest fingerprint is not valid: {e}") from e

    def to_dict(self, *, include_fingerprint: bool = True) -> dict[str, Any]:
        d = asdict(self)
        d.pop("directory")
        if not include_fingerprint:
            d["fingerprint"] = {"digest": self.fingerprint_digest}
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_dict(cls, data: dict[str, Any], directory: Path | None = None) -> Manifest:
        names = {f.name for f in fields(cls)} - {"directory"}
        unknown = set(data) - names
        if unknown:
            raise ValueError(f"unknown manifest fields: {', '.join(sorted(unknown))}")
        m = cls(**{k: v for k, v in data.items() if k in names}, directory=directory)
        if not isinstance(m.size, int) or not isinstance(m.fingerprint, dict):
            raise ValueError("size must be an integer and fingerprint an object")
        if not re.fullmatch(r"[0-9a-f]{64}", str(m.sha256)):
            raise ValueError("sha256 is not 64 hex digits")
        return m

    @property
    def digest(self) -> str:
        """sha256 of the manifest's canonical JSON: what a ledger event should record."""
        text = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class RestoreResult:
    manifest: Manifest
    fingerprint: Fingerprint | None  # the restored database's (None when check=False)
    duration_ms: int
    damage: list[str]  # how the database differed from the backup just before the restore
    target: str = ""  # the (redacted) URL restored into


@dataclass
class Created:
    """What a method's ``create`` hands back to the manager."""

    artifact: Path
    fingerprint: Fingerprint
    server_version: str
    host: str | None = None
    port: int | None = None
    system_identifier: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


Hook = Callable[[], None]


def _noop() -> None:
    return None


class Method(Protocol):
    name: str

    def create(self, workdir: Path, backup_id: str) -> Created: ...

    def check(self, manifest: Manifest) -> None: ...

    def restore(self, manifest: Manifest, hook: Hook) -> None: ...

    def estimate_size(self) -> int: ...

    def free_space(self, backup_dir: Path) -> int: ...


def sha256_file(path: Path) -> tuple[int, str]:
    h = hashlib.sha256()
    size = 0
    with path.open("rb") as f:
        while True:
            chunk = f.read(1 << 20)
            if not chunk:
                break
            h.update(chunk)
            size += len(chunk)
    return size, h.hexdigest()




class BackupManager:
    """Create, list, verify and restore backups of one target with one method.

    ``target`` may be None for the operations that only read the backup directory
    (``list``, ``get``, ``probe``, and ``verify`` of local artifacts)."""

    def __init__(
        self,
        target: Target | None,
        method: str,
        backup_dir: Path,
        *,
        stanza: str | None = None,
        stop_command: str | None = None,
        start_command: str | None = None,
        pgbackrest_config: Path | None = None,
        clock: Callable[[], datetime] = utc_now,
        pg_bin: Path | None = None,
        timeout: float = 6 * 3600,
        start_timeout: float = 300,
    ) -> None:
        if method not in METHODS:
            raise ConfigError(f"[backup] method {method!r} is not one of {', '.join(METHODS)}")
        if target is not None:
            want = "sqlite" if target.backend == "sqlite" else "postgresql"
            ok = (method == "sqlite") == (want == "sqlite")
            if not ok:
                raise ConfigError(
                    f"[backup] method {method!r} cannot back up a {want} target "
                    f"({target.display}); use "
                    + ("'sqlite'" if want == "sqlite" else "'pg_dump' or 'pgbackrest'")
                )
        self.target = target
        self.method = method
        self.backup_dir = Path(backup_dir)
        self.stanza = stanza
        self.stop_command = stop_command
        self.start_command = start_command
        self.pgbackrest_config = pgbackrest_config
        self.clock = clock
        self.pg_bin = pg_bin
        self.timeout = timeout
        self.start_timeout = start_timeout

    # -- helpers -----------------------------------------------------------------------------
    def _require_target(self) -> Target:
        if self.target is None:
            raise ConfigError("no target database: set [target] url or pass --target")
        return self.target

    def _driver(self, method: str | None = None) -> Method:
        method = method or self.method
        target = self._require_target()
        if method == "sqlite":
            from .backup_sqlite import SqliteMethod

            return SqliteMethod(target)
        if method == "pg_dump":
            from .backup_pg import PgDumpMethod

            return PgDumpMethod(target, pg_bin=self.pg_bin, timeout=self.timeout)
        from .backup_pgbackrest import PgBackRestMethod

        return PgBackRestMethod(
            target, stanza=self.stanza, config=self.pgbackrest_config,
            stop_command=self.stop_command, start_command=self.start_command,
            timeout=self.timeout, start_timeout=self.start_timeout, pg_bin=self.pg_bin,
        )

    def _dir(self, backup_id: str) -> Path:
        return self.backup_dir / check_backup_id(backup_id)

    def _read(self, backup_id: str) -> Manifest | None:
        """The manifest if present (None if absent); BackupCorrupt if present but unreadable."""
        d = self._dir(backup_id)
        path = d / MANIFEST_NAME
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError) as e:
            raise BackupCorrupt(f"backup {backup_id}: cannot read {path}: {e}") from e
        try:
            data = json.loads(text)
            if not isinstance(data, dict):
                raise ValueError("not a JSON object")
            m = Manifest.from_dict(data, d)
        except (ValueError, TypeError) as e:
            raise BackupCorrupt(f"backup {backup_id}: {path} is not a valid manifest: {e}") from e
        if m.id != backup_id:
            raise BackupCorrupt(f"backup {backup_id}: {path} names backup {m.id!r}")
        return m

    # -- API ---------------------------------------------------------------------------------
    def create(self, backup_id: str | None = None, *, hook: Hook | None = None) -> Manifest:
        """Take a backup; return its manifest once artifact and manifest are durable.

        ``backup_id`` may be chosen in advance (and recorded) so that a run that crashes can
        :meth:`probe` it. An id that already has a complete backup is refused; leftovers of an
        incomplete attempt with that id are removed first. ``hook`` is called in the middle:
        the artifact is complete, the manifest not yet written (a crash there leaves a backup
        that :meth:`probe` does not accept)."""
        target = self._require_target()
        now = self.clock()
        backup_id = check_backup_id(backup_id) if backup_id else new_backup_id(now)
        if self._read(backup_id) is not None:
            raise BackupError(f"backup {backup_id} already exists in {self.backup_dir}")
        driver = self._driver()
        try:
            private_dir(self.backup_dir)
        except OSError as e:
            raise ConfigError(f"backup directory {self.backup_dir}: {e.strerror or e}") from e
        workdir = self._dir(backup_id)
        if workdir.exists():
            shutil.rmtree(workdir)  # an attempt that never got its manifest
        private_dir(workdir)
        t0 = time.monotonic()
        try:
            created = driver.create(workdir, backup_id)
            (hook or _noop)()
            size, digest = sha256_file(created.artifact)
            try:
                rel = created.artifact.relative_to(workdir)
                artifact = str(rel)
            except ValueError:
                artifact = str(created.artifact)
            m = Manifest(
                id=backup_id,
                method=self.method,
                artifact=artifact,
                size=size,
                sha256=digest,
                server_version=created.server_version,
                created_at=iso(now),
                completed_at=iso(self.clock()),
                duration_ms=int((time.monotonic() - t0) * 1000),
                target=target.display,
                database=(str(target.sqlite_path.resolve()) if target.backend == "sqlite"
                          else target.database),
                fingerprint=created.fingerprint.to_dict(),
                host=created.host,
                port=created.port,
                system_identifier=created.system_identifier,
                directory=workdir,
                **created.extra,
            )
            write_atomic(workdir / MANIFEST_NAME, m.to_json())
        except BaseException as e:
            shutil.rmtree(workdir, ignore_errors=True)
            if isinstance(e, OSError) and not isinstance(e, BackupError):
                raise BackupError(
                    f"backup {backup_id} failed: {e.strerror or e}"
                    + (f": {e.filename}" if e.filename else "")
                ) from e
            raise
        return m

    def probe(self, backup_id: str) -> Manifest | None:
        """The manifest if backup ``backup_id`` is complete (manifest present and valid, the
        artifact present with the recorded size); None otherwise. Cheap: no re-hash."""
        try:
            m = self._read(backup_id)
        except BackupCorrupt:
            return None
        if m is None:
            return None
        try:
            if m.artifact_path.stat().st_size != m.size:
                return None
        except OSError:
            return None
        return m

    def list(self) -> list[Manifest]:
        """Complete backups (a valid manifest), oldest first. Incomplete ones are not listed."""
        out: list[Manifest] = []
        if not self.backup_dir.is_dir():
            return out
        try:
            entries = list(self.backup_dir.iterdir())
        except OSError as e:
            raise BackupError(f"cannot read backup directory {self.backup_dir}: "
                              f"{e.strerror or e}") from e
        for d in entries:
            if not d.is_dir() or not ID_PATTERN.match(d.name):
                continue
            try:
                m = self._read(d.name)
            except BackupCorrupt:
                continue
            if m is not None:
                out.append(m)
        return sorted(out, key=lambda m: (m.created_at, m.id))

    def get(self, backup_id: str) -> Manifest:
        m = self._read(backup_id)
        if m is None:
            raise BackupNotFound(f"backup {backup_id} not found in {self.backup_dir}")
        return m

    def verify(self, backup_id: str) -> Manifest:
        """Re-hash the artifact against the manifest; BackupCorrupt naming the file if it is
        missing or differs. pgBackRest backups are also checked in the repository."""
        m = self.get(backup_id)
        m.get_fingerprint()
        path = m.artifact_path
        try:
            size, digest = sha256_file(path)
        except FileNotFoundError as e:
            raise BackupCorrupt(f"backup {backup_id}: artifact {path} is missing") from e
        except OSError as e:
            raise BackupCorrupt(f"backup {backup_id}: cannot read artifact {path}: {e}") from e
        if size != m.size:
            raise BackupCorrupt(
                f"backup {backup_id}: artifact {path} is {size} bytes, manifest says {m.size}"
            )
        if digest != m.sha256:
            raise BackupCorrupt(
                f"backup {backup_id}: artifact {path} does not match its manifest "
                f"(sha256 {digest[:12]}..., expected {m.sha256[:12]}...)"
            )
        if m.method == "pgbackrest":
            self._driver("pgbackrest").check(m)
        return m

    def check_identity(self, m: Manifest) -> None:
        """Refuse (WrongDatabase) when the target is not the database the backup was taken of."""
        target = self._require_target()
        backend = "sqlite" if m.method == "sqlite" else "postgresql"
        if target.backend != backend:
            raise WrongDatabase(
                f"backup {m.id} is of a {backend} database; target {target.display} is not"
            )
        hint = " (pass --allow-other-database to restore there anyway)"
        if backend == "sqlite":
            here = str(target.sqlite_path.resolve())
            if here != m.database:
                raise WrongDatabase(
                    f"backup {m.id} was taken of {m.database}, not {here}{hint}"
                )
            return
        if target.database != m.database:
            raise WrongDatabase(
                f"backup {m.id} was taken of database {m.database!r}, "
                f"not {target.database!r}{hint}"
            )
        from .backup_pg import server_identity

        try:
            sysid: str | None = server_identity(target)[1]
        except BackupError:
            if m.method != "pgbackrest":
                raise
            return  # server down: a cluster restore is what pgBackRest's stanza defines
        if m.system_identifier and sysid:
            if sysid != m.system_identifier:
                raise WrongDatabase(
                    f"backup {m.id} was taken on cluster {m.system_identifier}, target "
                    f"{target.display} is cluster {sysid}{hint}"
                )
            return
        addr = target.endpoint()  # where libpq connects, as the manifest recorded it
        if m.host is not None and (m.host, m.port) != addr:
            raise WrongDatabase(
                f"backup {m.id} was taken on {m.host}:{m.port}, target is "
                f"{addr[0]}:{addr[1]}{hint}"
            )

    def restore(
        self,
        backup_id: str,
        *,
        allow_other_database: bool = False,
        check: bool = True,
        report_damage: bool = True,
        hook: Hook | None = None,
    ) -> RestoreResult:
        """Verify the backup, put the target back exactly as it was, and prove it: the restored
        fingerprint must equal the manifest's (RestoreMismatch otherwise).

        ``check=False`` skips that comparison (and ``report_damage``) for a caller that
        compares fingerprints itself. ``report_damage`` fingerprints the target first too, so
        that the result says what the restore undid (one more read of the database). ``hook``
        is called in the middle of the restore, before it is committed or switched in (pg_dump:
        inside the open transaction; SQLite: before the file replacement; pgBackRest: with the
        server stopped, before ``pgbackrest restore``)."""
        target = self._require_target()
        m = self.verify(backup_id)
        expected = m.get_fingerprint()
        if not allow_other_database:
            self.check_identity(m)
        elif (m.method == "sqlite") != (target.backend == "sqlite"):
            raise WrongDatabase(f"backup {m.id} ({m.method}) cannot be restored into "
                                f"{target.display}")
        driver = self._driver(m.method)
        t0 = time.monotonic()
        damage: list[str] = []
        if check and report_damage:
            try:
                damage = diff(expected, fingerprint(target))
            except StatekeeperError as e:
                damage = [f"(the target could not be fingerprinted before the restore: {e})"]
        try:
            driver.restore(m, hook or _noop)
        except OSError as e:
            raise BackupError(
                f"restore of backup {m.id} failed: {e.strerror or e}"
                + (f": {e.filename}" if e.filename else "")
            ) from e
        if not check:
            return RestoreResult(m, None, int((time.monotonic() - t0) * 1000), damage,
                                 target.display)
        after = fingerprint(target)
        lines = diff(expected, after)
        if lines:
            raise RestoreMismatch(
                f"restore of backup {m.id} did not reproduce the backup: " + "; ".join(lines[:5])
                + (f" (and {len(lines) - 5} more)" if len(lines) > 5 else ""),
                lines,
            )
        return RestoreResult(m, after, int((time.monotonic() - t0) * 1000), damage,
                             target.display)

    def estimate_size(self) -> int:
        """Bytes the next backup may need (an upper bound), for a free-disk preflight."""
        return self._driver().estimate_size()

    def free_space(self) -> int:
        """Free bytes where the next backup will be written."""
        return self._driver().free_space(self.backup_dir)


def nearest_existing(path: Path) -> Path:
    p = path.absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def disk_free(path: Path) -> int:
    return int(shutil.disk_usage(nearest_existing(path)).free)
