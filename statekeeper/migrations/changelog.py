"""What is applied, recorded in the target database: ``statekeeper_changelog`` (one row per
applied migration, with the sha256 of its up part) and ``statekeeper_tags``.

The SQL is written once, with ``%s`` parameters and ``{cl}``/``{tg}`` for the two tables; the
target's dialect runs it (parameter style, where the tables live). The caller owns the
connection and its transaction: a migration and its changelog row commit together.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..targets import Target
    from .fileformat import Migration

CHANGELOG_TABLE = "statekeeper_changelog"
TAGS_TABLE = "statekeeper_tags"


@dataclass(frozen=True)
class AppliedMigration:
    """A row of ``statekeeper_changelog``. ``tag`` is the latest tag set while this was the
    last applied migration (all tags: :meth:`Migrator.tags`)."""

    id: str
    checksum: str
    applied_at: str
    execution_ms: int
    run_id: str | None
    tag: str | None


@dataclass(frozen=True)
class Tag:
    """A named schema state: the migrations applied up to and including ``migration_id``
    (``None``: none applied)."""

    name: str
    migration_id: str | None
    created_at: str
    run_id: str | None


@dataclass(frozen=True)
class MigrationStatus:
    """One row of :meth:`Migrator.status`. ``state``: ``applied``, ``pending``, ``edited``
    (applied, but the file's up part changed) or ``missing`` (applied, file gone)."""

    id: str
    state: str
    applied: bool
    checksum: str
    applied_at: str | None
    execution_ms: int | None
    run_id: str | None
    tag: str | None
    reversible: bool
    no_transaction: bool
    path: Path | None


class Changelog:
    """The two tables of one target. Where they live is settled by the first look
    (:meth:`exists`) and kept: a migration that changes the search path does not move them."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self.dialect = target.dialect
        self._schema: str | None = None

    def _q(self, conn: Any, query: str, params: Any = None) -> Any:
        assert self._schema is not None  # exists() ran first on this target
        return self.dialect.run(conn, self._schema, query, params,
                                cl=CHANGELOG_TABLE, tg=TAGS_TABLE)

    def exists(self, conn: Any) -> bool:
        """Do both tables exist?"""
        if self._schema is None:
            self._schema = self.dialect.own_schema(conn, CHANGELOG_TABLE, self.target.shown)
        return self.dialect.tables_exist(conn, self._schema, (CHANGELOG_TABLE, TAGS_TABLE))

    def create(self, conn: Any) -> None:
        """Create the tables unless they exist (another process may create them at the same
        moment)."""
        if self.exists(conn):
            return
        big = self.dialect.integer_type
        for s in (
            f"CREATE TABLE IF NOT EXISTS {{cl}} ("
            f"id text PRIMARY KEY, seq {big} NOT NULL UNIQUE, checksum text NOT NULL, "
            f"applied_at text NOT NULL, execution_ms {big} NOT NULL, "
            f"run_id text, tag text)",
            f"CREATE TABLE IF NOT EXISTS {{tg}} ("
            f"name text PRIMARY KEY, seq {big} NOT NULL UNIQUE, migration_id text, "
            f"created_at text NOT NULL, run_id text)",
        ):
            with self.dialect.created_concurrently():
                self._q(conn, s)

    def read(self, conn: Any) -> tuple[list[AppliedMigration], list[Tag]]:
        """Changelog rows (in the order applied) and tags (in the order created); empty when
        the tables do not exist yet. Creates nothing."""
        if not self.exists(conn):
            return [], []
        rows = self._q(
            conn, "SELECT id, checksum, applied_at, execution_ms, run_id, tag "
            "FROM {cl} ORDER BY seq"
        ).fetchall()
        tags = self._q(
            conn, "SELECT name, migration_id, created_at, run_id FROM {tg} ORDER BY seq"
        ).fetchall()
        return (
            [AppliedMigration(r[0], r[1], r[2], int(r[3]), r[4], r[5]) for r in rows],
            [Tag(t[0], t[1], t[2], t[3]) for t in tags],
        )

    def record(self, conn: Any, m: Migration, applied_at: str, ms: int,
               run_id: str | None) -> None:
        row = self._q(conn, "SELECT COALESCE(MAX(seq), 0) + 1 FROM {cl}").fetchone()
        self._q(
            conn, "INSERT INTO {cl} (id, seq, checksum, applied_at, execution_ms, "
            "run_id, tag) VALUES (%s, %s, %s, %s, %s, %s, NULL)",
            (m.id, int(row[0]), m.checksum, applied_at, ms, run_id),
        )

    def remove(self, conn: Any, migration_id: str) -> None:
        self._q(conn, "DELETE FROM {cl} WHERE id = %s", (migration_id,))
        # A tag names a schema state; once that state is gone, so is its name
        # (a rolled-back v2.6 must not remain the "last tag").
        self._q(conn, "DELETE FROM {tg} WHERE migration_id = %s", (migration_id,))

    def add_tag(self, conn: Any, tag: Tag) -> None:
        row = self._q(conn, "SELECT COALESCE(MAX(seq), 0) + 1 FROM {tg}").fetchone()
        self._q(conn, "INSERT INTO {tg} (name, seq, migration_id, created_at, run_id)"
                " VALUES (%s, %s, %s, %s, %s)",
                (tag.name, int(row[0]), tag.migration_id, tag.created_at, tag.run_id))
        if tag.migration_id is not None:
            self._q(conn, "UPDATE {cl} SET tag = %s WHERE id = %s", (tag.name, tag.migration_id))

    def forget(self, conn: Any, migration_ids: list[str], tag_names: list[str]) -> None:
        """Delete changelog rows and tags whatever wrote them (a forced baseline replaces
        them, having recorded them in the ledger first)."""
        for mid in migration_ids:
            self.remove(conn, mid)
        for name in tag_names:
            self._q(conn, "DELETE FROM {tg} WHERE name = %s", (name,))
            self._q(conn, "UPDATE {cl} SET tag = NULL WHERE tag = %s", (name,))

    def remove_tag(self, conn: Any, name: str, run_id: str) -> bool:
        """Remove tag ``name`` if run ``run_id`` created it; True if it did."""
        cur = self._q(conn, "DELETE FROM {tg} WHERE name = %s AND run_id = %s", (name, run_id))
        removed = bool(cur.rowcount and cur.rowcount > 0)
        # the changelog row's tag column falls back to the newest tag left there
        self._q(conn, "UPDATE {cl} SET tag = (SELECT t.name FROM {tg} t WHERE "
                "t.migration_id = {cl}.id ORDER BY t.seq DESC LIMIT 1) "
                "WHERE tag = %s", (name,))
        return removed
