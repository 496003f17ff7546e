"""The seam between the steps and a migration tool: what a run, ``plan`` and the ``migrate``
verbs ask of the migrations, whichever tool keeps them.

:class:`MigrationDriver` is that interface; :class:`~.migrator.Migrator` (statekeeper's own
SQL-file directory, ``[migrations] tool = "files"``, the default) and
:class:`~.liquibase.LiquibaseDriver` (``tool = "liquibase"``: the user's changelog, applied
by the real Liquibase CLI) implement it. A "migration" is one unit the tool applies and
records: a SQL file, or a Liquibase changeset (``FILE::ID::AUTHOR``). :func:`open_driver`
picks one from the configuration.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from ..config import Config
    from ..targets import Target
    from .changelog import AppliedMigration, MigrationStatus, Tag
    from .migrator import BaselinePlan

Hook = Callable[[], None]


class PlannedUnit(Protocol):
    """What the steps read of one migration (a :class:`~.fileformat.Migration`, a
    Liquibase changeset)."""

    @property
    def id(self) -> str: ...
    @property
    def checksum(self) -> str: ...
    @property
    def file_sha256(self) -> str | None: ...
    @property
    def no_transaction(self) -> bool: ...
    @property
    def reversible(self) -> bool: ...
    @property
    def path(self) -> Path: ...


class MigrationDriver(Protocol):
    """What the steps, the plan, the session and the ``migrate`` verbs call. Reads are
    read-only; the writing methods take the target lock themselves."""

    target: Target
    #: what the plan records as the migrations' source (a directory, a changelog file)
    migrations_dir: Path
    #: the tool, as ``[migrations] tool`` names it
    tool: str

    def migrations(self) -> Sequence[Any]: ...
    def applied(self) -> list[AppliedMigration]: ...
    def is_applied(self, migration_id: str) -> bool: ...
    def pending(self) -> Sequence[Any]: ...
    def plan_up(self, target_id: str | None = None) -> Sequence[Any]: ...
    def validate(self) -> list[AppliedMigration]: ...
    def current(self, applied: list[AppliedMigration]) -> str | None:
        """The migration the schema is at (the last one applied), None: none."""
        ...
    def status(self) -> list[MigrationStatus]: ...
    def tags(self) -> list[Tag]: ...
    def last_tag(self) -> str | None: ...
    def check_new_tag(self, name: str) -> str | None: ...
    def plan_baseline(self, tag: str, through: str | None = None, *,
                      force: bool = False) -> BaselinePlan: ...
    def baseline(self, plan: BaselinePlan,
                 run_id: str | None = None) -> list[AppliedMigration]: ...

    def apply(self, migration: Any, run_id: str | None = None, *,
              hook: Hook | None = None) -> AppliedMigration: ...
    def revert(self, id: str, run_id: str | None = None, *,
               hook: Hook | None = None) -> AppliedMigration | None: ...
    def tag(self, name: str, run_id: str | None = None) -> Tag: ...
    def untag(self, name: str, run_id: str) -> bool: ...
    def plan_down_to_tag(self, tag: str) -> Sequence[Any]: ...
    def sql(self, to_tag: str | None = None, *, target_id: str | None = None) -> str: ...

    def lock(self, *, run_id: str | None = None,
             defer_unreachable: bool = False) -> contextlib.AbstractContextManager[None]: ...
    def ensure_lock(self) -> None: ...
    @property
    def lock_deferred(self) -> bool: ...
    def forget_connections(self) -> None: ...
    def keep_connection(self) -> None: ...
    def connection(self) -> contextlib.AbstractContextManager[Any]: ...
    def close(self) -> None: ...

    def release_stale_lock(self, run_id: str) -> dict[str, Any] | None:
        """The tool's own lock left behind by a process of run ``run_id`` that is provably
        dead: released, and what was released returned (for the run's event); None when
        there was nothing to release."""
        ...


def open_driver(cfg: Config, target: Target, *, clock: Callable[[], datetime],
                artifacts: Callable[[str], Path] | None = None,
                migrations_dir: Path | None = None) -> MigrationDriver:
    """The driver ``[migrations] tool`` names. ``artifacts``: a run's (or operation's)
    private artifacts directory by id, where a tool's output is kept. ``migrations_dir``
    overrides ``[migrations] dir`` (the files tool's ``--dir``)."""
    if cfg.migrations_tool == "liquibase":
        from .liquibase import LiquibaseDriver

        return LiquibaseDriver.from_config(cfg, target, clock=clock, artifacts=artifacts)
    from .migrator import Migrator

    return Migrator(target, migrations_dir or cfg.require_migrations_dir(), clock=clock)

