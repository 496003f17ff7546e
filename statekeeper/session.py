"""One session per run: everything ``start``, ``resume`` and ``rollback`` act on, opened once
from the settings and closed once.

The target side (target, migrator, backup manager, health checks) is built first, so that a
configuration error is reported before anything is opened; then the ledger; the lease store
(a table in the ledger's database) when first asked for. ``plan`` opens only the target side.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import clock

if TYPE_CHECKING:
    from ledger import Ledger

    from .backups import BackupManager
    from .lease import LeaseStore
    from .migrations.driver import MigrationDriver
    from .release import ReleaseConfig
    from .settings import Settings
    from .targets import Target


@dataclass
class Session:
    settings: Settings
    target: Target
    migrator: MigrationDriver  # the SQL-file Migrator, or the Liquibase driver
    backups: BackupManager | None  # None when [backup] enabled = false
    health_checks: list[dict[str, Any]]
    release: ReleaseConfig | None = None  # None without [deploy]
    _ledger: Ledger | None = None
    _secret: bytes | None = field(default=None, repr=False)
    _leases: LeaseStore | None = field(default=None, repr=False)
    _closed: bool = field(default=False, repr=False)

    @classmethod
    def open(cls, settings: Settings, *, ledger: bool = True) -> Session:
        """Build the target side from the configuration, then open the ledger (signing: a run
        appends) unless ``ledger`` is false."""
        from .backups import manager_for
        from .health import validate_health
        from .migrations.driver import open_driver
        from .targets import Target

        cfg = settings.config
        target = Target.from_url(cfg.require_target(), cfg.base_dir)
        migrator = open_driver(cfg, target, clock=clock.now,
                               artifacts=lambda run_id: settings.artifacts_dir(run_id))
        migrator.keep_connection()  # one target connection for the whole session
        backups = manager_for(cfg, target, clock=clock.now) if cfg.backup.enabled else None
        checks = validate_health(cfg.raw.get("health", {}), cfg.source)
        session = cls(settings, target, migrator, backups, checks, cfg.release)
        if ledger:
            session._ledger = settings.open_ledger(signing=True)
        return session

    @property
    def ledger(self) -> Ledger:
        if self._ledger is None:
            raise RuntimeError("this session was opened without the ledger")
        return self._ledger

    @property
    def secret(self) -> bytes:
        """The keyed-fingerprint secret (created beside the signing key on first use)."""
        if self._secret is None:
            from .keyed import load_or_create

            self._secret = load_or_create(self.settings.fingerprint_secret_path())
        return self._secret

    def artifacts(self, run_id: str, *parts: str) -> Path:
        from . import files

        return files.private_dir(self.settings.artifacts_dir(run_id).joinpath(*parts))

    @property
    def leases(self) -> LeaseStore:
        """The one lease store of the session (created on first use: a run that stops at
        verification never touches the lease table)."""
        if self._leases is None:
            self._leases = self.settings.open_lease_store()
        return self._leases

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        # each is closed even if another fails: a close must not hide the run's own error
        with contextlib.suppress(Exception):
            self.migrator.close()
        if self._leases is not None:
            with contextlib.suppress(Exception):
                self._leases.dispose()
        if self._ledger is not None:
            self._ledger.close()

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
