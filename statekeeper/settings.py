"""Settings: the configuration plus the command-line overrides every command shares (the
ledger URL, the signing key), and the ledger they open."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from . import clock, files
from ._version import __version__
from .config import FLAG_KEYS, Config, load_config, override
from .errors import ConfigError, boundary

if TYPE_CHECKING:
    from ledger import Ledger

    from .lease import LeaseStore

TOOL = f"statekeeper/{__version__}"


@dataclass
class Settings:
    """Configuration plus the command-line overrides that apply to every command."""

    config: Config
    ledger_url: str
    key_path: Path

    @classmethod
    @boundary
    def load(
        cls, config: str | None = None, ledger_url: str | None = None, key: str | None = None,
        target_url: str | None = None,
    ) -> Settings:
        """Flags > environment (``STATEKEEPER_*``, :data:`statekeeper.config.ENV_KEYS`) >
        statekeeper.toml > defaults; each value's origin is kept in ``config.origins``. An
        empty flag (a script's unset variable) is an error, not "use the default"."""
        given = [(f, v) for f, v in (("--ledger", ledger_url), ("--key", key),
                                     ("--target", target_url)) if v is not None]
        cfg = load_config(config, flags=frozenset(FLAG_KEYS[f] for f, _ in given))
        cwd = Path.cwd()
        for flag, value in given:
            override(cfg, *FLAG_KEYS[flag], value, ("flag", flag), cwd)
        return cls(cfg, cfg.ledger.url, cfg.key_path())

    def checkpoint_dir(self) -> Path:
        """Where terminal-state checkpoints are written (copy them to write-once storage);
        created 0700 (with ``.statekeeper``) when missing."""
        return files.private_dir(self.config.base_dir / ".statekeeper" / "checkpoints")

    def artifacts_dir(self, run_id: str) -> Path:
        """The run's private files (configuration snapshots, commands' output): created 0700
        when first needed, never read back without checking them against the ledger."""
        return files.private_dir(self.config.base_dir / ".statekeeper" / "runs" / run_id)

    def fingerprint_secret_path(self) -> Path:
        """The per-ledger secret of keyed fingerprints, beside the signing key."""
        from .keyed import secret_path

        return secret_path(self.key_path)

    def _ensure_sqlite_dir(self, create: bool) -> None:
        import ledger
        from ledger.errors import LedgerUnreachable

        u = ledger.database_url(self.ledger_url, self.config.base_dir)
        db = ledger.database_file(u)
        if db is not None:
            d = db.parent
            # Only the default location is created for the user (0700); a typo elsewhere is
            # an error, for reading commands as for writing ones.
            if create and d == self.config.base_dir / ".statekeeper":
                try:
                    files.private_dir(d)
                except OSError as e:
                    raise LedgerUnreachable(
                        ledger.redact(self.ledger_url),
                        f"cannot create directory {d}: {e.strerror or e}",
                    ) from e
            elif not d.is_dir() and d == self.config.base_dir / ".statekeeper":
                # Not an outage: nothing was set up here yet.
                raise ConfigError(
                    f"no ledger yet in {d}: run 'statekeeper init' (or pass --ledger URL)"
                )
            elif not d.is_dir():
                raise LedgerUnreachable(ledger.redact(self.ledger_url),
                                        f"directory {d} does not exist")

    def open_ledger(self, *, signing: bool, create: bool | None = None) -> Ledger:
        """Open the ledger; ``signing`` loads the private key (needed to append or sign)."""
        import ledger
        from ledger import Ledger

        signer = ledger.load_signer(self.key_path) if signing else None
        if create is None:
            create = signing
        self._ensure_sqlite_dir(create)
        return Ledger(
            self.ledger_url,
            signer=signer,
            tool=TOOL,
            base_dir=self.config.base_dir,
            create=create,
            clock=clock.now,
        )


    def open_lease_store(self) -> LeaseStore:
        """The lease table in the ledger's database (one run per target)."""
        import ledger

        from .lease import LeaseStore

        return LeaseStore(ledger.database_url(self.ledger_url, self.config.base_dir),
                          ledger.redact(self.ledger_url))

