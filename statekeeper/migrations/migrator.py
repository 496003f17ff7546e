"""The migrator: load, validate, apply, tag, roll back, under the target lock.

The applied migrations are always a prefix of the directory in file order: ``validate``
refuses an applied file that changed or disappeared, and a pending file that sorts before an
applied one. A migration and its changelog row commit in one transaction (on SQLite too: its
DDL is transactional), unless the file says ``-- statekeeper:no-transaction``.

This module orchestrates; what differs between the backends (connections, transactions,
running a text, the lock) is the target's dialect, the tables are :mod:`.changelog`'s.
Library only: nothing here prints or exits; errors are :mod:`statekeeper.errors`.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from .. import clock as _clock
from ..errors import ConfigError, IrreversibleError, MigrationError, ValidationError
from ..targets import Target
from .changelog import CHANGELOG_TABLE, AppliedMigration, Changelog, MigrationStatus, Tag
from .fileformat import (
    DOWN_MARKER,
    Migration,
    check_tag_name,
    load_migrations,
    natural_key,
    version_of,
)
from .lock import TargetLock

Clock = Callable[[], datetime]
Hook = Callable[[], None]


@dataclass(frozen=True)
class BaselinePlan:
    """What ``migrate baseline`` will write, decided read-only under the lock: the
    migrations to record as applied without running them (in file order), and, when forced,
    the changelog rows and tags that disagree with the baseline and are replaced. Rows that
    already say the same (same id, same checksum) and tags naming a state that stays are
    kept. A migrations driver other than the SQL directory produces the same value from its
    own tool (Liquibase: ``changelog-sync-to-tag``) and writes it with its ``baseline``."""

    tag: str
    through: str | None  # the last migration recorded; None: the directory has none
    migrations: tuple[Migration, ...]  # everything up to ``through``, in file order
    write: tuple[str, ...]  # the ids among them not yet in the changelog as they are
    replaced: tuple[AppliedMigration, ...]  # rows removed (forced only)
    replaced_tags: tuple[Tag, ...]  # tags removed (forced only)
    tag_exists: bool  # the tag already names this state
    forced: bool

    @property
    def changes(self) -> bool:
        return bool(self.write or self.replaced or self.replaced_tags or not self.tag_exists)


class Migrator:
    """Migrations of one directory on one target database. The target lock (a PostgreSQL
    advisory lock, a SQLite lock file) is held by :meth:`lock`, which the writing methods take
    themselves (reentrant per instance). Outside a lock every method opens and closes its own
    connections; inside one, everything shares one connection for the lock's whole duration:
    reads, migrations, tags, the PostgreSQL advisory lock itself. After :meth:`keep_connection`
    (a session: ``start``, ``resume``, ``rollback``, ``plan``) that connection is opened at the
    first read and kept until :meth:`close`, so a run opens one target connection in all."""

    tool = "files"

    def __init__(self, target: Target, migrations_dir: Path, *,
                 clock: Clock = _clock.now) -> None:
        self.target = target
        self.migrations_dir = migrations_dir
        self.clock = clock
        self._dialect = target.dialect
        self._changelog = Changelog(target)
        self._lock = TargetLock(target, clock, connection=self._shared)
        self._session: Any = None  # the shared connection (while the lock is held, or kept)
        self._keep = False
        #: migration id -> the NOTICEs and WARNINGs the server raised the last time it ran here
        #: (severity, message, file position), whether it succeeded or failed
        self.heard: dict[str, tuple[tuple[str, str, int], ...]] = {}

    # -- files ---------------------------------------------------------------------------
    def migrations(self) -> list[Migration]:
        return load_migrations(self.migrations_dir, self.target.backend)

    # -- connections ---------------------------------------------------------------------
    def _errors(self) -> contextlib.AbstractContextManager[None]:
        """A driver error on this target, as TargetError naming it."""
        return self._dialect.errors(f"target {self.target.shown}")

    def keep_connection(self) -> None:
        """Share one connection from the first read on, not only under the lock, until
        :meth:`close` (the session's: planning reads before the lock use it too)."""
        self._keep = True

    @contextlib.contextmanager
    def connection(self) -> Iterator[Any]:
        """An autocommit connection to the target for a read of the caller's (the
        fingerprint): the shared one under the lock or in a kept session, else one of its
        own. The caller leaves it as it found it: no transaction open."""
        with self._connect(autocommit=True) as conn:
            yield conn

    @contextlib.contextmanager
    def _connect(self, *, autocommit: bool) -> Iterator[Any]:
        if autocommit and (self._lock.held or self._keep):
            yield self._shared()
            return
        conn = self.target.connect(autocommit=autocommit)
        try:
            with self._errors():
                self._dialect.label_session(conn, self._lock.label)
            yield conn
        finally:
            self._dialect.release(conn)
            conn.close()

    def _shared(self) -> Any:
        conn = self._session
        if conn is not None and _gone(conn):
            self._session = None
            with contextlib.suppress(Exception):
                conn.close()
            conn = None
        if conn is None:
            conn = self.target.connect(autocommit=True)
            try:
                with self._errors():
                    self._dialect.label_session(conn, self._lock.label)
            except BaseException:
                conn.close()
                raise
            self._session = conn
        return conn

    def forget_connections(self) -> None:
        """Drop the shared connection (around a restore: the file may be replaced, the server
        restarted); the next read opens a new one. One that holds the target lock is kept
        while it lives: closing it would release the lock (a restarted server's is replaced
        when :meth:`ensure_lock` takes the lock again)."""
        conn, self._session = self._session, None
        if conn is None:
            return
        if self._lock.lives_on(conn) and not _gone(conn):
            self._session = conn
            return
        with contextlib.suppress(Exception):
            conn.close()

    def close(self) -> None:
        """End a kept session: its connection is closed (the lock is released by then)."""
        self._keep = False
        if not self._lock.held:
            self.forget_connections()

    def _ensure_tables(self) -> None:
        with self._connect(autocommit=True) as conn, self._errors():
            self._changelog.create(conn)

    # -- reading the changelog -----------------------------------------------------------
    def _read(self) -> tuple[list[AppliedMigration], list[Tag]]:
        """Changelog rows (in the order applied) and tags (in the order created); empty when
        the tables do not exist yet. Creates nothing."""
        with self._connect(autocommit=True) as conn, self._errors():
            return self._changelog.read(conn)

    def applied(self) -> list[AppliedMigration]:
        """The changelog, in the order applied (creates the tables if missing)."""
        self._ensure_tables()
        return self._read()[0]

    def is_applied(self, migration_id: str) -> bool:
        """The probe after a crash: is this migration recorded as applied? (Read-only.)"""
        return any(r.id == migration_id for r in self._read()[0])

    def current(self, applied: list[AppliedMigration]) -> str | None:
        return max((r.id for r in applied), key=natural_key, default=None)

    def release_stale_lock(self, run_id: str) -> dict[str, Any] | None:
        return None  # the target lock dies with its holder's session or process

    def pending(self) -> list[Migration]:
        done = {r.id for r in self._read()[0]}
        return [m for m in self.migrations() if m.id not in done]

    def tags(self) -> list[Tag]:
        return self._read()[1]

    def last_tag(self) -> str | None:
        tags = self.tags()
        return tags[-1].name if tags else None

    def status(self) -> list[MigrationStatus]:
        """One row per migration file and per applied migration whose file is gone."""
        files = {m.id: m for m in self.migrations()}
        rows = {r.id: r for r in self._read()[0]}
        out: list[MigrationStatus] = []
        for mid in sorted(set(files) | set(rows), key=natural_key):
            m, r = files.get(mid), rows.get(mid)
            if r is None:
                assert m is not None
                out.append(MigrationStatus(mid, "pending", False, m.checksum, None, None, None,
                                           None, m.reversible, m.no_transaction, m.path))
                continue
            state = "missing" if m is None else ("edited" if m.checksum != r.checksum
                                                 else "applied")
            out.append(MigrationStatus(
                mid, state, True, r.checksum, r.applied_at, r.execution_ms, r.run_id, r.tag,
                m.reversible if m else False, m.no_transaction if m else False,
                m.path if m else None,
            ))
        return out

    def _check(
        self, migrations: list[Migration], applied: list[AppliedMigration], *, order: bool
    ) -> None:
        files = {m.id: m for m in migrations}
        for r in applied:
            m = files.get(r.id)
            if m is None:
                path = self.migrations_dir / f"{r.id}.sql"
                raise ValidationError(
                    f"migration {r.id} is applied but its file {path} is missing "
                    f"(restore the file; applied migrations must stay in the directory)"
                )
            if m.checksum != r.checksum:
                raise ValidationError(
                    f"migration {r.id} was edited after it was applied: the up part of "
                    f"{m.path} has sha256 {m.checksum[:12]}, the changelog recorded "
                    f"{r.checksum[:12]} (restore the file and put the change in a new migration)"
                )
        if not order:
            return
        done = {r.id for r in applied}
        seen: dict[tuple[int, ...], Migration] = {}
        for m in migrations:
            v = version_of(m.id)
            if v is None:
                continue
            other = seen.setdefault(v, m)
            if other is not m and not (other.id in done and m.id in done):
                # two branches merged, each with "the next" migration: which runs first is
                # an accident of their names (both applied already: history, left alone)
                later = m if m.id not in done else other
                raise ValidationError(
                    f"migrations {other.id} and {m.id} have the same version "
                    f"{'.'.join(map(str, v))} ({other.path}, {m.path}); give {later.id} "
                    f"a version of its own"
                )
        if not applied:
            return
        last = max((i for i, m in enumerate(migrations) if m.id in done), default=-1)
        for m in migrations[:last]:
            if m.id not in done:
                raise ValidationError(
                    f"migration {m.id} ({m.path}) is not applied but sorts before applied "
                    f"migration {migrations[last].id}; rename it to sort after "
                    f"{migrations[last].id}"
                )

    def validate(self) -> list[AppliedMigration]:
        """Refuse (:class:`ValidationError`, naming the file) an applied migration whose file
        changed or disappeared, and a pending one that sorts before an applied one. Returns
        the applied migrations. Read-only."""
        applied = self._read()[0]
        self._check(self.migrations(), applied, order=True)
        return applied

    # -- lock ----------------------------------------------------------------------------
    @contextlib.contextmanager
    def lock(self, *, run_id: str | None = None,
             defer_unreachable: bool = False) -> Iterator[None]:
        """Exclusive right to change this target's migrations, across processes and hosts.

        PostgreSQL: a session advisory lock (``pg_try_advisory_lock``) on a connection of its
        own, released when the block ends or the process dies. SQLite: ``flock`` on
        ``<database>.statekeeper-lock`` beside the database file (released by the kernel when
        the process dies). Another holder: :class:`LockHeld` naming it. Reentrant within one
        Migrator. ``defer_unreachable``: a server that is down defers taking the lock to
        :meth:`ensure_lock` (a run resumed while a restore has the server stopped)."""
        try:
            with self._lock.hold(run_id, defer_unreachable=defer_unreachable):
                yield
        finally:
            if not self._lock.held and not self._keep:
                self.forget_connections()  # the lock is released: nothing shared outlives it

    def ensure_lock(self) -> None:
        """Inside :meth:`lock`: the lock is really held (taken now if it was deferred, or
        again if a server restart ended its session) before the target is read or written."""
        if self._lock.ensure():
            self.forget_connections()  # opened before the restart, or never (kept: the lock's)

    @property
    def lock_deferred(self) -> bool:
        return self._lock.deferred

    # -- running a migration's text ------------------------------------------------------
    def _run(self, m: Migration, text: str, offset: int, write: Callable[[Any], None],
             what: str, hook: Hook | None, ran: Callable[[int], None] | None = None) -> None:
        """Run one part of a migration and ``write`` its changelog change: in one transaction,
        or, for a no-transaction migration, the text first and the change after it.
        ``ran`` is told how long the text took, as soon as it did; ``hook`` is called in the
        middle (before the commit; no-transaction: between the two). MigrationError for the
        text (the transaction is rolled back)."""
        d = self._dialect
        transactional = not m.no_transaction
        with self._connect(autocommit=d.migration_autocommit(transactional)) as conn:
            try:
                self._run_on(conn, m, text, offset, write, what, hook, ran)
            finally:
                if conn is self._session:
                    # the next migration gets the session as if it were a connection of its
                    # own: nothing this one SET (role, search_path, temporary tables) remains
                    d.reset_session(conn, self._lock.label)

    def _run_on(self, conn: Any, m: Migration, text: str, offset: int,
                write: Callable[[Any], None], what: str, hook: Hook | None,
                ran: Callable[[int], None] | None) -> None:
        d = self._dialect
        transactional = not m.no_transaction
        try:
            if transactional:
                d.begin(conn)
            t0 = time.monotonic()
            self.heard[m.id] = d.execute(conn, m.id, text, offset, transactional)
            if ran is not None:
                ran(round((time.monotonic() - t0) * 1000))
            if not transactional:
                if hook is not None:
                    hook()
                d.begin(conn)  # the changelog change: a transaction of its own
            write(conn)
            if transactional and hook is not None:
                hook()
            d.commit(conn, m.id, what)
        except MigrationError as e:
            d.rollback(conn)
            e.locate(str(m.path), m.locate)
            self.heard[m.id] = e.raised
            raise
        except BaseException:
            d.rollback(conn)
            raise

    # -- applying --------------------------------------------------------------------------
    def apply(
        self, migration: Migration, run_id: str | None = None, *, hook: Hook | None = None
    ) -> AppliedMigration:
        """Apply one migration, which must be the next pending one. Already applied with the
        same checksum: the existing record is returned and nothing runs (safe to repeat).
        ``hook`` is called in the middle: after the SQL and the changelog row, before the
        commit (no-transaction migrations: after the SQL, before the row is written)."""
        with self.lock(run_id=run_id):
            migrations = self.migrations()
            self._ensure_tables()
            applied = self._read()[0]
            for r in applied:
                if r.id == migration.id and r.checksum == migration.checksum:
                    return r
            self._check(migrations, applied, order=True)
            done = {r.id for r in applied}
            pending = [m for m in migrations if m.id not in done]
            current = next((m for m in migrations if m.id == migration.id), None)
            if current is None:
                raise ConfigError(f"migration {migration.id} is not in {self.migrations_dir}")
            if current.checksum != migration.checksum:
                raise ValidationError(f"{current.path} changed since it was loaded")
            if pending[0].id != migration.id:
                raise ConfigError(
                    f"cannot apply {migration.id} before {pending[0].id} (file order)"
                )
            return self._apply(current, run_id, hook)

    def _apply(self, m: Migration, run_id: str | None, hook: Hook | None = None
               ) -> AppliedMigration:
        done: list[AppliedMigration] = []

        def ran(ms: int) -> None:
            at = _clock.stamp(self.clock())
            done.append(AppliedMigration(m.id, m.checksum, at, ms, run_id, None))

        def write(conn: Any) -> None:
            rec = done[0]
            how = "" if not m.no_transaction else " (it ran: it is not transactional)"
            with self._dialect.errors(f"migration {m.id}: could not record it in "
                                      f"{CHANGELOG_TABLE}{how}"):
                self._changelog.record(conn, m, rec.applied_at, rec.execution_ms, run_id)

        self._run(m, m.up, 0, write, "up part", hook, ran)
        return done[0]

    def up(
        self,
        run_id: str | None = None,
        target_id: str | None = None,
        on_applied: Callable[[AppliedMigration], None] | None = None,
    ) -> list[AppliedMigration]:
        """Validate, lock, and apply the pending migrations in order (up to and including
        ``target_id``). A failure raises :class:`MigrationError`; the migrations before it stay
        applied and recorded. ``on_applied`` is called after each one commits."""
        with self.lock(run_id=run_id):
            todo = self._plan_up(target_id, create=True)
            done: list[AppliedMigration] = []
            for m in todo:
                rec = self._apply(m, run_id)
                done.append(rec)
                if on_applied is not None:
                    on_applied(rec)
            return done

    def plan_up(self, target_id: str | None = None) -> list[Migration]:
        """The migrations ``up`` would apply, in order, after validation. Read-only (not even
        the changelog table is created)."""
        return self._plan_up(target_id, create=False)

    def _plan_up(self, target_id: str | None, *, create: bool) -> list[Migration]:
        migrations = self.migrations()  # a bad file is refused before anything is written
        if create:
            self._ensure_tables()
        applied = self._read()[0]
        self._check(migrations, applied, order=True)
        done = {r.id for r in applied}
        todo = [m for m in migrations if m.id not in done]
        if target_id is not None:
            ids = [m.id for m in migrations]
            if target_id not in ids:
                raise ConfigError(f"unknown migration {target_id!r} (not in "
                                  f"{self.migrations_dir})")
            if target_id in done:
                return []
            todo = todo[: [m.id for m in todo].index(target_id) + 1]
        return todo

    # -- reverting ---------------------------------------------------------------------------
    def revert(
        self, id: str, run_id: str | None = None, *, hook: Hook | None = None
    ) -> AppliedMigration | None:
        """Run the down part of the last applied migration and delete its changelog row, in one
        transaction. Returns the removed record, or None when it was not applied (safe to
        repeat). ``hook`` is called in the middle, before the commit."""
        with self.lock(run_id=run_id):
            migrations = self.migrations()
            applied = self._read()[0]
            self._check(migrations, applied, order=False)
            rec = next((r for r in applied if r.id == id), None)
            if rec is None:
                if not any(m.id == id for m in migrations):
                    raise ConfigError(f"unknown migration {id!r}")
                return None
            last = max(applied, key=lambda r: natural_key(r.id))
            if last.id != id:
                raise ConfigError(
                    f"cannot revert {id}: {last.id} was applied after it; revert that first"
                )
            m = next(m for m in migrations if m.id == id)
            if not m.reversible:
                raise IrreversibleError(self._irreversible(m))
            self._revert(m, hook)
            return rec

    @staticmethod
    def _irreversible(m: Migration) -> str:
        return (f"migration {m.id} has no down part (no {DOWN_MARKER!r} line in {m.path}); "
                f"only restoring a backup can undo it")

    def _revert(self, m: Migration, hook: Hook | None = None) -> None:
        assert m.down is not None

        def write(conn: Any) -> None:
            with self._dialect.errors(f"migration {m.id}: could not remove it from "
                                      f"{CHANGELOG_TABLE}"):
                self._changelog.remove(conn, m.id)

        self._run(m, m.down, m.down_offset, write, "down part", hook)

    # -- tags ------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _transaction(self) -> Iterator[Any]:
        """A connection in a transaction of our own, committed when the block ends."""
        d = self._dialect
        with self._connect(autocommit=d.migration_autocommit(True)) as conn:
            try:
                with self._errors():
                    d.begin(conn)
                    yield conn
                    d.end(conn)
            except BaseException:
                d.rollback(conn)
                raise

    def tag(self, name: str, run_id: str | None = None) -> Tag:
        """Name the current schema state (works with nothing applied). A name already used is
        refused, unless it is the same run tagging the same state again (a repeat)."""
        check_tag_name(name)
        with self.lock(run_id=run_id):
            self._ensure_tables()
            applied, tags = self._read()
            last = max((r.id for r in applied), key=natural_key, default=None)
            for t in tags:
                if t.name == name:
                    if run_id is not None and t.run_id == run_id and t.migration_id == last:
                        return t
                    raise _tag_exists(t)
            new = Tag(name, last, _clock.stamp(self.clock()), run_id)
            with self._transaction() as conn:
                self._changelog.add_tag(conn, new)
            return new

    def check_new_tag(self, name: str) -> str | None:
        """Before tagging (read-only): ``name`` is a valid tag name not used yet. Returns the
        migration the tag would name (None: nothing applied)."""
        check_tag_name(name)
        applied, tags = self._read()
        for t in tags:
            if t.name == name:
                raise _tag_exists(t)
        return max((r.id for r in applied), key=natural_key, default=None)

    def untag(self, name: str, run_id: str) -> bool:
        """Remove tag ``name`` if run ``run_id`` created it: a rolled-back run takes back the
        names it gave. True if removed; False if there is none (safe to repeat). A tag of that
        name made by someone else is left alone (False)."""
        with self.lock(run_id=run_id):
            if not self._read()[1]:
                return False
            with self._transaction() as conn:
                return self._changelog.remove_tag(conn, name, run_id)

    def plan_down_to_tag(self, tag: str) -> list[Migration]:
        """The migrations that rolling back to ``tag`` reverts, in the order it would revert
        them. Unknown tag: ConfigError; an edited or missing file: ValidationError; one without
        a down part on the way: IrreversibleError naming the first. Read-only."""
        migrations = self.migrations()
        applied, tags = self._read()
        t = next((t for t in tags if t.name == tag), None)
        if t is None:
            known = ", ".join(x.name for x in tags) or "none"
            raise ConfigError(f"unknown tag {tag!r} (known tags: {known})")
        self._check(migrations, applied, order=False)
        done = {r.id for r in applied}
        if t.migration_id is not None and t.migration_id not in done:
            raise ConfigError(
                f"the schema is behind tag {tag}: its last migration {t.migration_id} is not "
                f"applied (nothing to roll back; `migrate up` applies forward)"
            )
        floor = natural_key(t.migration_id) if t.migration_id is not None else None
        by_id = {m.id: m for m in migrations}
        plan = sorted(
            (by_id[r.id] for r in applied if floor is None or natural_key(r.id) > floor),
            key=lambda m: natural_key(m.id), reverse=True,
        )
        for m in plan:
            if not m.reversible:
                raise IrreversibleError(f"cannot roll back to tag {tag}: {self._irreversible(m)}")
        return plan

    def down_to_tag(
        self,
        tag: str,
        run_id: str | None = None,
        on_reverted: Callable[[Migration], None] | None = None,
    ) -> list[str]:
        """Revert, newest first, every migration applied after ``tag``; returns their ids.
        Nothing runs unless the whole way down is reversible. A failure raises
        :class:`MigrationError`; the migrations reverted before it stay reverted."""
        with self.lock(run_id=run_id):
            plan = self.plan_down_to_tag(tag)
            out: list[str] = []
            for m in plan:
                self._revert(m)
                out.append(m.id)
                if on_reverted is not None:
                    on_reverted(m)
            return out

    # -- baseline ------------------------------------------------------------------------
    def plan_baseline(self, tag: str, through: str | None = None, *,
                      force: bool = False) -> BaselinePlan:
        """Record that the files up to ``through`` (default: all) are already reflected in
        the database. Refused (ConfigError) when the changelog has rows or tags that are not
        exactly this baseline, unless ``force``; an unknown ``through``, or a result that
        ``validate`` would refuse, is refused too. Read-only."""
        check_tag_name(tag, "--tag")
        migrations = self.migrations()
        ids = [m.id for m in migrations]
        if through is not None and through not in ids:
            raise ConfigError(f"--through {through}: no migration {through!r} in "
                              f"{self.migrations_dir}")
        upto = migrations[: ids.index(through) + 1] if through is not None else migrations
        last = upto[-1].id if upto else None
        applied, tags = self._read()
        wanted = {m.id: m.checksum for m in upto}
        kept = {r.id for r in applied if wanted.get(r.id) == r.checksum}
        replaced = tuple(r for r in applied if r.id not in kept)
        gone = {r.id for r in replaced}
        replaced_tags = tuple(t for t in tags if t.migration_id in gone
                              or (t.name == tag and t.migration_id != last))
        tag_exists = any(t.name == tag and t.migration_id == last and t not in replaced_tags
                         for t in tags)
        plan = BaselinePlan(tag, last, tuple(upto), tuple(m.id for m in upto
                                                          if m.id not in kept),
                            replaced, replaced_tags, tag_exists, force)
        if not plan.changes:
            return plan
        if (applied or tags) and not force:
            raise baseline_refused(f"the changelog of {self.target.shown}", "migration",
                                   [a.id for a in applied], [t.name for t in tags])
        after = [AppliedMigration(m.id, m.checksum, "", 0, None, None) for m in upto]
        self._check(migrations, after, order=True)
        return plan

    def baseline(self, plan: BaselinePlan, run_id: str | None = None) -> list[AppliedMigration]:
        """Write ``plan`` (from :meth:`plan_baseline`, under the same lock) in one
        transaction: the replaced rows and tags removed, the rows written (no SQL runs;
        ``execution_ms`` 0), the tag added. Returns the rows written."""
        with self.lock(run_id=run_id):
            self._ensure_tables()
            at = _clock.stamp(self.clock())
            by_id = {m.id: m for m in plan.migrations}
            with self._transaction() as conn:
                self._changelog.forget(conn, [r.id for r in plan.replaced],
                                       [t.name for t in plan.replaced_tags])
                for mid in plan.write:
                    self._changelog.record(conn, by_id[mid], at, 0, run_id)
                if not plan.tag_exists:
                    self._changelog.add_tag(conn, Tag(plan.tag, plan.through, at, run_id))
            return [AppliedMigration(mid, by_id[mid].checksum, at, 0, run_id, None)
                    for mid in plan.write]

    # -- dry run -----------------------------------------------------------------------------
    def sql(self, to_tag: str | None = None, *, target_id: str | None = None) -> str:
        """The SQL that ``up`` (or, with ``to_tag``, ``down_to_tag``) would run, in order, with
        nothing changed (not even the changelog table created)."""
        if to_tag is not None:
            plan, part = self.plan_down_to_tag(to_tag), "down"
        else:
            plan, part = self._plan_up(target_id, create=False), "up"
        chunks = []
        for m in plan:
            how = "outside a transaction" if m.no_transaction else "in one transaction"
            text = m.up if part == "up" else (m.down or "")
            record = ("recorded in" if part == "up" else "removed from") + f" {CHANGELOG_TABLE}"
            chunks.append(
                f"-- statekeeper: {m.id} ({part}, {how}; {record})\n"
                f"{text.rstrip()}\n"
            )
        return "\n".join(chunks)


def _tag_exists(t: Tag) -> ConfigError:
    at = t.migration_id or "no migrations applied"
    return ConfigError(f"tag {t.name} already exists (created {t.created_at} at {at}); "
                       "choose another name")


def baseline_refused(changelog: str, noun: str, applied: list[str],
                     tags: list[str]) -> ConfigError:
    """The one refusal of a baseline over a changelog that already has entries (either
    driver): what is there, and the way on."""
    what = [f"{len(applied)} {noun}{'s' if len(applied) != 1 else ''} recorded"
            f"{' (last ' + applied[-1] + ')' if applied else ''}"]
    if tags:
        what.append("tags " + ", ".join(tags))
    return ConfigError(f"{changelog} already has entries ({'; '.join(what)}): a baseline is the "
                       "first record; pass --force to replace what disagrees with it (recorded "
                       "in the ledger)")


def _gone(conn: Any) -> bool:
    """A connection the driver knows is unusable (closed, or broken by a failure)."""
    return bool(getattr(conn, "broken", False) or getattr(conn, "closed", False))
