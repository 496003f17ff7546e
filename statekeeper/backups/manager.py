"""The backup manager: one target, one method, one backup directory.

Every backup lives in ``<backup dir>/<id>/`` with a ``manifest.json`` written atomically, and only
after the artifact is complete and hashed: a directory without a manifest is never a backup.
The manifest carries a :class:`~statekeeper.fingerprint.Fingerprint`; a restore is not done until
the restored database's fingerprint equals it. Which methods can serve a target is the target's
dialect's to say (``backup_methods``); the methods themselves are loaded on first use.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from .. import clock as _clock
from .. import dialects
from ..errors import (
    BackupCorrupt,
    BackupError,
    BackupNotFound,
    ConfigError,
    RestoreMismatch,
    StatekeeperError,
    WrongDatabase,
)
from ..files import describe_os_error, fsync_path, private_dir, write_atomic
from .model import (
    ID_PATTERN,
    MANIFEST_NAME,
    METHODS,
    Hook,
    Manifest,
    Method,
    MethodOptions,
    RestoreResult,
    artifact_size,
    check_backup_id,
    new_backup_id,
    noop,
    sha256_file,
)

if TYPE_CHECKING:
    from ..config import Config
    from ..dialects.base import ClusterScope
    from ..targets import Target


def manager_for(
    config: Config, target: Target | None, *, clock: Callable[[], datetime] = _clock.now
) -> BackupManager:
    """The backup manager that ``[backup]`` describes for ``target`` (None: only the
    operations that read the backup directory). ``[backup] method`` unset means the target's
    dialect's default. Whether backups are ``enabled`` is the caller's to decide: the
    ``backup`` commands work either way, an upgrade run skips its backup step."""
    b = config.backup
    # Without a target no method ever runs (every operation that runs one needs the target).
    method = b.method or (target.dialect.default_backup_method if target is not None
                          else METHODS[0])
    return BackupManager(
        target, method, config.backup_dir(), stanza=b.stanza, stop_command=b.stop_command,
        start_command=b.start_command, pgbackrest_config=b.pgbackrest_config, clock=clock,
        jobs=b.jobs,
    )


def _sqlite() -> type[Method]:
    from .sqlite import SqliteMethod

    return SqliteMethod


def _pg_dump() -> type[Method]:
    from .pg_dump import PgDumpMethod

    return PgDumpMethod


def _pgbackrest() -> type[Method]:
    from .pgbackrest import PgBackRestMethod

    return PgBackRestMethod


# The one place that lists the methods' modules, each imported on first use (two of them load
# psycopg): a new method is its module plus a line here, its name in METHODS and in the
# ``backup_methods`` of the dialects it serves.
_CLASSES: dict[str, Callable[[], type[Method]]] = {
    "sqlite": _sqlite, "pg_dump": _pg_dump, "pgbackrest": _pgbackrest,
}


def method_class(name: str) -> type[Method]:
    """The class of method ``name``."""
    try:
        load = _CLASSES[name]
    except KeyError:
        raise ConfigError(f"[backup] method {name!r} is not one of {', '.join(METHODS)}") from None
    return load()


def kind_of(method: str) -> str:
    """The name of the dialect whose targets ``method`` backs up."""
    for name in dialects.names():
        if method in dialects.dialect_for(name).backup_methods:
            return name
    raise ConfigError(f"[backup] method {method!r} is not one of {', '.join(METHODS)}")


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
        clock: Callable[[], datetime] = _clock.now,
        pg_bin: Path | None = None,
        timeout: float = 6 * 3600,
        start_timeout: float = 300,
        jobs: int = 1,
    ) -> None:
        if method not in METHODS:
            raise ConfigError(f"[backup] method {method!r} is not one of {', '.join(METHODS)}")
        if target is not None and method not in target.dialect.backup_methods:
            d = target.dialect
            raise ConfigError(
                f"[backup] method {method!r} cannot back up a {d.name} target "
                f"({target.shown}); use " + " or ".join(repr(m) for m in d.backup_methods)
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
        self.jobs = jobs

    # -- helpers -----------------------------------------------------------------------------
    def _require_target(self) -> Target:
        if self.target is None:
            raise ConfigError("no target database: set [target] url or pass --target")
        return self.target

    def _driver(self, method: str | None = None) -> Method:
        target = self._require_target()
        options = MethodOptions(
            stanza=self.stanza, pgbackrest_config=self.pgbackrest_config,
            stop_command=self.stop_command, start_command=self.start_command,
            pg_bin=self.pg_bin, timeout=self.timeout, start_timeout=self.start_timeout,
            jobs=self.jobs,
        )
        return method_class(method or self.method).configured(target, options)

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
        t0 = _clock.monotonic_ms()
        try:
            created = driver.create(workdir, backup_id)
            (hook or noop)()
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
                created_at=_clock.stamp(now),
                completed_at=_clock.stamp(self.clock()),
                duration_ms=int(_clock.monotonic_ms() - t0),
                target=target.display,
                database=driver.database_of(target),
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
            if artifact_size(m.artifact_path) != m.size:
                return None
        except OSError:
            return None
        return m

    def settle(self, backup_id: str, *, restoring: bool = False) -> list[str]:
        """After a crash left the backup (``restoring``: its restore) ``backup_id`` in doubt,
        before it is redone: the method stops its tools that survived (a pgBackRest one
        holding the stanza's lock, say) and removes its partial files. One line per thing
        done, for the step's record; nothing without a target."""
        if self.target is None:
            return []
        m = self.probe(backup_id) if restoring else None
        method = m.method if m is not None and m.method in METHODS else self.method
        return self._driver(method).settle(self._dir(backup_id), backup_id, restoring)

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

    def delete(self, backup_id: str) -> dict[str, object]:
        """Delete a complete backup of this directory: its manifest first (made durable: from
        then on it is not a backup, and a crash leaves only leftovers that ``create`` with the
        id would remove), then its directory. A pgBackRest backup is refused: its set is the
        repository's, expired by the repository's own retention."""
        m = self.get(backup_id)
        if m.method == "pgbackrest":
            raise BackupError(f"backup {backup_id} is a pgBackRest backup: the repository's "
                              "retention (repo1-retention-full) expires it, not statekeeper")
        d = self._dir(backup_id)
        if d.is_symlink():  # never follow one out of the backup directory
            raise BackupError(f"backup {backup_id}: {d} is a symbolic link: not deleting "
                              "through it")
        try:
            (d / MANIFEST_NAME).unlink()
            fsync_path(d)
            shutil.rmtree(d)
            fsync_path(self.backup_dir)
        except OSError as e:
            raise BackupError(f"backup {backup_id}: cannot delete {d}: {e.strerror or e}"
                              + (f": {e.filename}" if e.filename else "")) from e
        return {"backup_id": backup_id, "deleted": True, "size": m.size}

    def has_leftovers(self, backup_id: str) -> bool:
        """Is there a directory for ``backup_id`` without a manifest (not a symbolic link)?"""
        if not ID_PATTERN.fullmatch(backup_id):
            return False
        d = self.backup_dir / backup_id
        return not d.is_symlink() and d.is_dir() and not (d / MANIFEST_NAME).exists()

    def remove_leftovers(self, backup_id: str) -> dict[str, object] | None:
        """Remove what is left of backup ``backup_id`` when it has no manifest (a deletion or
        a creation that was interrupted): its directory. None when there is nothing to remove
        (no directory, or a manifest: then it is a backup, not leftovers)."""
        if not self.has_leftovers(backup_id):
            return None
        d = self._dir(backup_id)
        try:
            shutil.rmtree(d)
            fsync_path(self.backup_dir)
        except OSError as e:
            raise BackupError(f"backup {backup_id}: cannot remove {d}: {e.strerror or e}") from e
        return {"backup_id": backup_id, "leftovers": True}

    def get(self, backup_id: str) -> Manifest:
        m = self._read(backup_id)
        if m is None:
            raise BackupNotFound(f"backup {backup_id} not found in {self.backup_dir}")
        return m

    def verify(self, backup_id: str) -> Manifest:
        """Re-hash the artifact against the manifest; BackupCorrupt naming the file if it is
        missing or differs. A method whose data lives in a repository of its own (pgBackRest)
        also checks it there, which needs the target."""
        m = self.get(backup_id)
        m.get_fingerprint()
        path = m.artifact_path
        try:
            size, digest = sha256_file(path)
        except FileNotFoundError as e:
            raise BackupCorrupt(f"backup {backup_id}: artifact {path} is missing") from e
        except OSError as e:
            raise BackupCorrupt(f"backup {backup_id}: cannot read artifact {path}: "
                                f"{describe_os_error(e)}") from e
        if size != m.size:
            raise BackupCorrupt(
                f"backup {backup_id}: artifact {path} is {size} bytes, manifest says {m.size}"
            )
        if digest != m.sha256:
            raise BackupCorrupt(
                f"backup {backup_id}: artifact {path} does not match its manifest "
                f"(sha256 {digest[:12]}..., expected {m.sha256[:12]}...)"
            )
        if m.method in METHODS and method_class(m.method).checks_repository:
            self._driver(m.method).check(m)
        return m

    def check_identity(self, m: Manifest) -> None:
        """Refuse (WrongDatabase) when the target is not the database the backup was taken of."""
        target = self._require_target()
        if m.method not in target.dialect.backup_methods:
            raise WrongDatabase(
                f"backup {m.id} is of a {kind_of(m.method)} database; "
                f"target {target.shown} is not"
            )
        method_class(m.method).check_identity(target, m)

    def restore(
        self,
        backup_id: str,
        *,
        allow_other_database: bool = False,
        check: bool = True,
        report_damage: bool = True,
        hook: Hook | None = None,
        reconnected: Hook | None = None,
    ) -> RestoreResult:
        """Verify the backup, put the target back exactly as it was, and prove it: the restored
        fingerprint must equal the manifest's (RestoreMismatch otherwise).

        ``check=False`` skips that comparison (and ``report_damage``) for a caller that
        compares fingerprints itself. ``report_damage`` fingerprints the target first too, so
        that the result says what the restore undid (one more read of the database). ``hook``
        is called in the middle of the restore, before it is committed or switched in (pg_dump:
        inside the open transaction; SQLite: before the file replacement; pgBackRest: with the
        server stopped, before ``pgbackrest restore``). ``reconnected`` is called by a method
        that restarts the server as soon as it accepts connections again (pgBackRest), before
        anything else can write: the caller takes its target lock again there."""
        from ..fingerprint import diff, fingerprint  # loads the database drivers

        target = self._require_target()
        m = self.verify(backup_id)
        expected = m.get_fingerprint()
        if not allow_other_database:
            self.check_identity(m)
        elif m.method not in target.dialect.backup_methods:
            raise WrongDatabase(f"backup {m.id} ({m.method}) cannot be restored into "
                                f"{target.shown}")
        driver = self._driver(m.method)
        t0 = _clock.monotonic_ms()
        damage: list[str] = []
        before = None
        if check and report_damage:
            try:
                before = fingerprint(target)
                damage = diff(expected, before)
            except StatekeeperError as e:
                damage = [f"(the target could not be fingerprinted before the restore: {e})"]
        try:
            driver.restore(m, hook or noop, reconnected or noop)
        except OSError as e:
            raise BackupError(
                f"restore of backup {m.id} failed: {e.strerror or e}"
                + (f": {e.filename}" if e.filename else "")
            ) from e
        if not check:
            return RestoreResult(m, None, int(_clock.monotonic_ms() - t0), damage,
                                 target.display)
        after = fingerprint(target)
        lines = diff(expected, after)
        if lines:
            raise RestoreMismatch(
                f"restore of backup {m.id} did not reproduce the backup: " + "; ".join(lines[:5])
                + (f" (and {len(lines) - 5} more)" if len(lines) > 5 else ""),
                lines,
            )
        return RestoreResult(m, after, int(_clock.monotonic_ms() - t0), damage,
                             target.display, before)

    @property
    def restarts_server(self) -> bool:
        """Does a restore by this method stop and start the server (so that it can run with
        the server down, and ends every session)?"""
        return method_class(self.method).restarts_server

    @property
    def whole_cluster(self) -> bool:
        """Does a restore by this method put back the whole cluster, every database of it?"""
        return method_class(self.method).whole_cluster

    def cluster_scope(self) -> ClusterScope | None:
        """What a restore by this method rewinds beyond the target: the target's cluster
        (system identifier and every database of it), or None for a method that restores the
        target alone."""
        if not self.whole_cluster:
            return None
        target = self._require_target()
        return target.dialect.cluster_of(target)

    def estimate_size(self) -> int:
        """Bytes the next backup may need (an upper bound), for a free-disk preflight."""
        return self._driver().estimate_size()

    def free_space(self) -> int:
        """Free bytes where the next backup will be written."""
        return self._driver().free_space(self.backup_dir)
