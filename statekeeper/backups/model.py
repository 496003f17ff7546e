"""What a backup is, and what a backup method must do: the manifest, the values a method hands
back, ids and artifact hashing.

Every method module imports this one (and :mod:`.pgtools`), never the manager: the manager
picks a method, a method knows nothing of the manager. Cheap to import (no database driver):
the command line loads it for ``backup list`` and the public API exports :class:`Manifest`.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import secrets
import shutil
import stat
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from .._version import __version__
from ..config import BACKUP_METHODS
from ..errors import BackupCorrupt, ConfigError

if TYPE_CHECKING:
    from ..fingerprint import Fingerprint
    from ..targets import Target

#: every method name ``[backup] method`` accepts (config validates against the same tuple)
METHODS = BACKUP_METHODS
MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = 1
ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
#: the end of every WrongDatabase message that ``--allow-other-database`` overrides
OTHER_DATABASE_HINT = " (pass --allow-other-database to restore there anyway)"


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
        from ..fingerprint import Fingerprint  # the fingerprint module loads the drivers

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


@dataclass(frozen=True)
class RestoreResult:
    manifest: Manifest
    fingerprint: Fingerprint | None  # the restored database's (None when check=False)
    duration_ms: int
    damage: list[str]  # how the database differed from the backup just before the restore
    target: str = ""  # the (redacted) URL restored into
    before: Fingerprint | None = None  # the target's just before (None: not taken, or failed)


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


@dataclass(frozen=True)
class MethodOptions:
    """What ``[backup]`` and the manager's caller say about running a method; each method
    takes what concerns it."""

    stanza: str | None = None
    pgbackrest_config: Path | None = None
    stop_command: str | None = None
    start_command: str | None = None
    pg_bin: Path | None = None  # PostgreSQL client programs (else $STATEKEEPER_PG_BIN, PATH)
    timeout: float = 6 * 3600  # one backup or restore by the tool
    jobs: int = 1  # [backup] jobs: parallel dump/restore processes (pg_dump's directory format)
    start_timeout: float = 300  # the server's stop/start around a cluster restore


def noop() -> None:
    return None


class Method(Protocol):
    """One way of backing up and restoring one kind of target (the kinds a method serves are
    its dialect's ``backup_methods``). The manager owns the backup directory, the manifest and
    the checks around a method; a method only moves the data."""

    name: str
    #: the artifact is only a record of data kept elsewhere, which ``check`` verifies
    checks_repository: bool
    #: a restore puts back the whole cluster (every database of it), not only the target
    whole_cluster: bool
    #: a restore stops and starts the server: it can run (and be resumed) with the server down,
    #: and it ends every session, the target lock's too
    restarts_server: bool

    @classmethod
    def configured(cls, target: Target, options: MethodOptions) -> Method:
        """The method for ``target``; ConfigError if ``options`` lack what it needs."""
        ...

    def create(self, workdir: Path, backup_id: str) -> Created: ...

    def check(self, manifest: Manifest) -> None: ...

    def restore(self, manifest: Manifest, hook: Hook, reconnected: Hook = noop) -> None:
        """Put the backup back. ``hook`` runs in the middle (a crash test's failpoint); a
        method that restarts the server calls ``reconnected`` as soon as the server accepts
        connections again, before anything else can write (the caller retakes its lock)."""
        ...

    def settle(self, workdir: Path, backup_id: str, restoring: bool) -> list[str]:
        """After a crash left the backup (``restoring``: the restore) of ``backup_id`` in
        doubt: stop its tools that still run, remove the partial files it created (its own
        names only); one line per thing done."""
        ...

    def estimate_size(self) -> int: ...

    def free_space(self, backup_dir: Path) -> int: ...

    @classmethod
    def database_of(cls, target: Target) -> str:
        """What a manifest records as ``database`` for a backup of ``target``."""
        ...

    @classmethod
    def check_identity(cls, target: Target, manifest: Manifest) -> None:
        """Raise WrongDatabase unless ``target`` is the database ``manifest`` was taken of
        (the target is of a kind this method serves)."""
        ...


def sha256_file(path: Path) -> tuple[int, str]:
    """(size, sha256) of an artifact: a file's bytes, or a directory's (:func:`_dir_digest`)."""
    if path.is_dir() and not path.is_symlink():
        return _dir_digest(path)
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


#: first line of what a directory artifact's sha256 covers: it can never equal a file's digest
DIR_DIGEST_HEADER = b"statekeeper directory artifact 1\n"


def _dir_entries(path: Path) -> list[Path]:
    """The files of a directory artifact, by name; anything but a regular file in it (a
    subdirectory, a symbolic link that could point anywhere) is refused, never skipped."""
    out = []
    for p in sorted(path.iterdir(), key=lambda p: p.name):
        if not stat.S_ISREG(p.lstat().st_mode):
            raise OSError(errno.EINVAL, "not a regular file (a directory artifact holds only "
                          "files)", str(p))
        out.append(p)
    return out


def _dir_digest(path: Path) -> tuple[int, str]:
    """The total size of a directory artifact's files and one sha256 over each file's name,
    size and sha256: a file changed, added, removed or renamed changes it. The files are
    hashed in parallel threads (hashlib releases the GIL), as pg_dump -j wrote them."""
    from concurrent.futures import ThreadPoolExecutor

    entries = _dir_entries(path)
    workers = max(1, min(len(entries), os.cpu_count() or 1, 8))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        digests = list(pool.map(sha256_file, entries))
    h = hashlib.sha256(DIR_DIGEST_HEADER)
    for p, (size, digest) in zip(entries, digests, strict=True):
        h.update(f"{p.name}\t{size}\t{digest}\n".encode())
    return sum(size for size, _ in digests), h.hexdigest()


def artifact_size(path: Path) -> int:
    """Bytes of an artifact (a directory's: its files'), without hashing: ``probe``'s check."""
    if path.is_dir() and not path.is_symlink():
        return sum(p.lstat().st_size for p in _dir_entries(path))
    return path.stat().st_size


def nearest_existing(path: Path) -> Path:
    p = path.absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def disk_free(path: Path) -> int:
    return int(shutil.disk_usage(nearest_existing(path)).free)
