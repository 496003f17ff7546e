"""The Liquibase driver (``[migrations] tool = "liquibase"``): the user's changelog (XML, YAML
or formatted SQL) applied by the real Liquibase CLI, one changeset per ``migrate`` step.

* A migration is a changeset, named as Liquibase names it: ``FILE::ID::AUTHOR``; its checksum
  is Liquibase's MD5SUM. What is pending, in which order, with which checksum and which SQL
  comes from one ``update-sql`` (cached while the changelog's files are unchanged); what is
  applied is read from DATABASECHANGELOG directly, over statekeeper's own connection (the
  probes after a crash need no JVM).
* Writes: ``update-count --count=1`` (one changeset), ``tag --tag=NAME`` (the name statekeeper
  made: the version), ``rollback --tag=NAME`` to the newest tag recorded before the changeset
  (the run's own from-version tag), never a guessed name. Which run made a tag is kept in
  ``statekeeper_liquibase_tags`` (Liquibase's TAG column has no room for it).
* The child runs in a session of its own; before it can take DATABASECHANGELOGLOCK its pid,
  host and start time are written to the run's artifacts, so a lock row it left when killed
  can be proven stale (:meth:`LiquibaseDriver.release_stale_lock`) and released.
* The password reaches Liquibase in ``LIQUIBASE_COMMAND_PASSWORD``, never argv; its output is
  kept in the run's artifacts (0600) with the password masked.

PostgreSQL targets only (the JDBC URL is derived from ``[target] url``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from .. import clock as _clock
from .. import files
from ..errors import (
    ConfigError,
    IrreversibleError,
    LockHeld,
    MigrationError,
    StatekeeperError,
    TargetError,
    ValidationError,
)
from ..procs import _group_alive
from .changelog import AppliedMigration, MigrationStatus, Tag
from .fileformat import check_tag_name
from .migrator import BaselinePlan, Migrator, baseline_refused

if TYPE_CHECKING:
    from ..config import Config
    from ..targets import Target

Clock = Callable[[], datetime]
Hook = Callable[[], None]

OWNERS_TABLE = "statekeeper_liquibase_tags"
INTERNAL = "liquibase-internal"  # the FILENAME of the row `liquibase tag` adds to an empty log
# Faster JVM start for a short-lived CLI (~1 s of ~4); the user's JAVA_OPTS win.
JAVA_OPTS = "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC -Xshare:auto"
# Change types Liquibase can undo without a <rollback> of the changeset's own.
AUTO_ROLLBACK = frozenset({
    "addColumn", "addDefaultValue", "addForeignKeyConstraint", "addLookupTable",
    "addNotNullConstraint", "addPrimaryKey", "addUniqueConstraint", "createIndex",
    "createSequence", "createTable", "createView", "dropNotNullConstraint", "renameColumn",
    "renameSequence", "renameTable", "renameView", "tagDatabase", "addAutoIncrement",
    "createProcedure", "dropDefaultValue",
})
_IGNORED_CHILDREN = frozenset({"comment", "preConditions", "validCheckSum", "rollback"})


def changeset_error(changeset: str, message: str, *, sql_state: str | None = None,
                    failed_sql: str | None = None) -> MigrationError:
    """A changeset Liquibase could not apply or roll back, as a MigrationError: the changeset
    (``FILE::ID::AUTHOR``), the database's message, the SQL state when Liquibase printed one
    (``sql_state`` on the error as well)."""
    state = f" (SQL state {sql_state})" if sql_state else ""
    # the failed statement can quote data: displayed under the error, never recorded
    e = MigrationError(changeset, f"{message}{state}", detail=failed_sql)
    e.sql_state = sql_state  # type: ignore[attr-defined]
    return e


@dataclass(frozen=True)
class Changeset:
    """One changeset as the steps see a migration."""

    id: str  # FILE::ID::AUTHOR
    checksum: str  # Liquibase's MD5SUM ("9:...")
    path: Path  # the root changelog
    sql: str = ""  # what update-sql showed for it
    reversible: bool = False
    no_transaction: bool = False
    file_sha256: str | None = None
    tag: str | None = None  # the tag its tagDatabase change gives the database

    @property
    def down(self) -> str | None:
        return "" if self.reversible else None


@dataclass(frozen=True)
class _Row:
    id: str  # FILE::ID::AUTHOR
    filename: str
    md5sum: str
    tag: str | None
    executed: str


def changeset_key(filename: str, cid: str, author: str) -> str:
    return f"{filename}::{cid}::{author}"


class LiquibaseDriver(Migrator):
    """The Liquibase CLI behind the :class:`~.driver.MigrationDriver` interface. The target
    lock, its connections and their labels are :class:`Migrator`'s."""

    tool = "liquibase"

    def __init__(self, target: Target, changelog: Path, *, command: list[str],
                 properties: Path | None = None, clock: Clock = _clock.now,
                 artifacts: Callable[[str], Path] | None = None) -> None:
        super().__init__(target, changelog, clock=clock)
        if target.dialect.jdbc is None:
            raise ConfigError(f"[migrations] tool = \"liquibase\" needs a PostgreSQL target, "
                              f"not {target.shown}")
        self.changelog = changelog
        self.command = command
        self.properties = properties
        self._artifacts = artifacts
        self._known: tuple[str, list[Changeset], str] | None = None  # digest, pending, sql
        self._seq = 0
        self._ever: set[str] = set()  # every changeset seen applied or pending

    @classmethod
    def from_config(cls, cfg: Config, target: Target, *, clock: Clock,
                    artifacts: Callable[[str], Path] | None) -> LiquibaseDriver:
        changelog = cfg.changelog
        assert changelog is not None
        if not changelog.is_file():
            raise ConfigError(f"{cfg.origin('migrations.changelog')}: changelog {changelog} "
                              "is not a file")
        props = cfg.liquibase_properties
        if props is not None and not props.is_file():
            raise ConfigError(f"{cfg.origin('migrations.properties')}: {props} is not a file")
        try:
            argv = shlex.split(cfg.liquibase)
        except ValueError as e:
            raise ConfigError(f"{cfg.origin('migrations.liquibase')}: {e}") from e
        if not argv:
            raise ConfigError(f"{cfg.origin('migrations.liquibase')} is empty")
        if "/" in argv[0]:
            argv[0] = str(cfg.base_dir / Path(argv[0]).expanduser())
        return cls(target, changelog, command=argv, properties=props, clock=clock,
                   artifacts=artifacts)

    # -- running the CLI ---------------------------------------------------------------------
    def _jdbc(self) -> tuple[str, str | None, str | None]:
        """(JDBC URL, user, password) from ``[target] url``."""
        p = self.target.conn_params()
        host = p.pop("host", "localhost")
        if host.startswith("/"):
            raise ConfigError(f"target {self.target.shown}: Liquibase (JDBC) cannot use a "
                              "Unix socket; give [target] url a host")
        port = p.pop("port", "5432")
        db, user, password = p.pop("dbname"), p.pop("user", None), p.pop("password", None)
        p.pop("connect_timeout", None)
        query = "&".join(f"{k}={v}" for k, v in sorted(p.items()))
        return f"jdbc:postgresql://{host}:{port}/{db}" + (f"?{query}" if query else ""), \
            user, password

    def _dir(self, run_id: str | None) -> Path | None:
        if self._artifacts is None:
            return None
        return files.private_dir(self._artifacts(run_id or "plan") / "liquibase")

    def _cli(self, args: list[str], run_id: str | None, changeset: str | None = None) -> str:
        """Run ``liquibase ARGS`` on the target; its output (masked) is kept in the run's
        artifacts. Returns stdout+stderr; a failure raises, parsed (:func:`_failure`)."""
        url, user, password = self._jdbc()
        app = f"statekeeper-liquibase-{os.getpid()}-{time.monotonic_ns()}"
        url += ("&" if "?" in url else "?") + f"ApplicationName={app}"
        argv = [*self.command, f"--url={url}", f"--changelog-file={self.changelog.name}",
                "--show-banner=false", "--changelog-lock-wait-time-in-minutes=1"]
        if user:
            argv.append(f"--username={user}")
        if self.properties is not None:
            argv.append(f"--defaults-file={self.properties}")
        argv += args
        env = dict(os.environ)
        env.setdefault("JAVA_OPTS", JAVA_OPTS)
        if password:
            env["LIQUIBASE_COMMAND_PASSWORD"] = password
        where = self._dir(run_id)
        self._seq += 1
        try:
            proc = subprocess.Popen(argv, cwd=self.changelog.parent, env=env, text=True,
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
        except OSError as e:
            raise ConfigError(f"[migrations] liquibase: cannot run {self.command[0]}: "
                              f"{e.strerror or e}") from e
        record: dict[str, Any] = {
            "pid": proc.pid, "host": socket.gethostname(), "application_name": app,
            "started_local": datetime.now().isoformat(), "command": args[0]}
        rec_path = where / f"child-{proc.pid}-{self._seq}.json" if where else None
        if rec_path is not None:
            # before the JVM is up, so before it can take DATABASECHANGELOGLOCK
            files.write_atomic(rec_path, json.dumps(record))
        try:
            out, _ = proc.communicate()
        except BaseException:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise
        finally:
            if rec_path is not None:
                record.update(ended_local=datetime.now().isoformat(),
                              returncode=proc.returncode)
                files.write_atomic(rec_path, json.dumps(record))
        shown = _mask(out, password)
        if where is not None:
            log = where / f"{self._seq:03d}-{os.getpid()}-{args[0]}.log"
            files.write_atomic(log, f"$ {_mask(shlex.join(argv), password)}\n{shown}"
                               f"\n[exit status {proc.returncode}]\n")
        if proc.returncode != 0:
            raise _failure(args[0], shown, proc.returncode, changeset)
        return shown

    # -- the changelog as Liquibase reads it -----------------------------------------------
    def _digest(self) -> str:
        """Of the files Liquibase reads: the changelog, what it includes, the properties."""
        seen: set[Path] = set()
        _walk(self.changelog, {}, seen)
        if self.properties is not None:
            seen.add(self.properties)
        h = hashlib.sha256()
        for p in sorted(seen):
            with contextlib.suppress(OSError):
                h.update(str(p).encode() + b"\0" + p.read_bytes() + b"\0")
        return h.hexdigest()

    def _pending_now(self, run_id: str | None = None) -> tuple[list[Changeset], str]:
        digest = self._digest()
        if self._known is None or self._known[0] != digest:
            text = self._cli(["update-sql"], run_id)
            pending, sql = _parse_update_sql(text, self.changelog)
            undo = reversibility(self.changelog)
            pending = [replace(c, reversible=undo.get(_short(c.id), False)) for c in pending]
            self._known = (digest, pending, sql)
            self._ever.update(c.id for c in pending)
        return self._known[1], self._known[2]

    def migrations(self) -> list[Changeset]:  # type: ignore[override]
        """The applied changesets (in the order applied) and the pending ones after them."""
        rows = self._rows()
        pending, _ = self._pending_now()
        known = {c.id: c for c in pending}
        undo = reversibility(self.changelog)
        out = [known.get(r.id) or Changeset(r.id, r.md5sum, self.changelog,
                                            reversible=undo.get(_short(r.id), False))
               for r in rows if r.filename != INTERNAL]
        done = {c.id for c in out}
        return out + [c for c in pending if c.id not in done]

    def pending(self) -> list[Changeset]:  # type: ignore[override]
        done = {r.id for r in self._rows()}
        return [c for c in self._pending_now()[0] if c.id not in done]

    def plan_up(self, target_id: str | None = None) -> list[Changeset]:  # type: ignore[override]
        todo = self.pending()
        if target_id is None:
            return todo
        ids = [c.id for c in todo]
        if target_id not in ids:
            if self.is_applied(target_id):
                return []
            raise ConfigError(f"unknown changeset {target_id!r} (not pending in "
                              f"{self.changelog})")
        return todo[: ids.index(target_id) + 1]

    def validate(self) -> list[AppliedMigration]:
        """Liquibase's own validation (update-sql refuses a changed applied changeset), then
        the recorded MD5SUMs against the changesets as loaded."""
        pending, _ = self._pending_now()
        known = {c.id: c.checksum for c in pending}
        applied = self.applied()
        for r in applied:
            if r.id in known and known[r.id] != r.checksum:
                raise ValidationError(f"changeset {r.id} is recorded with MD5SUM {r.checksum}, "
                                      f"the changelog now has {known[r.id]}")
        return applied

    def sql(self, to_tag: str | None = None, *, target_id: str | None = None) -> str:
        if to_tag is not None:
            self.plan_down_to_tag(to_tag)
            return _sql_part(self._cli(["rollback-sql", f"--tag={to_tag}"], None))
        if target_id is not None:
            n = len(self.plan_up(target_id))
            return _sql_part(self._cli(["update-count-sql", f"--count={n}"], None))
        return self._pending_now()[1]

    # -- DATABASECHANGELOG, read directly --------------------------------------------------
    def _rows(self) -> list[_Row]:
        with self._connect(autocommit=True) as conn, self._errors():
            if conn.execute("SELECT to_regclass('databasechangelog')").fetchone()[0] is None:
                return []
            rows = conn.execute(
                "SELECT id, author, filename, md5sum, tag, dateexecuted::text "
                "FROM databasechangelog ORDER BY orderexecuted, dateexecuted").fetchall()
        out = [_Row(changeset_key(f, i, a), f, m or "", t, d) for i, a, f, m, t, d in rows]
        self._ever.update(r.id for r in out)
        return out

    def _owners(self) -> dict[str, str | None]:
        with self._connect(autocommit=True) as conn, self._errors():
            if conn.execute(f"SELECT to_regclass('{OWNERS_TABLE}')").fetchone()[0] is None:
                return {}
            return dict(conn.execute(f"SELECT name, run_id FROM {OWNERS_TABLE}").fetchall())

    def _read(self) -> tuple[list[AppliedMigration], list[Tag]]:
        rows, owners = self._rows(), self._owners()
        applied = [AppliedMigration(r.id, r.md5sum, r.executed, 0, None, r.tag)
                   for r in rows if r.filename != INTERNAL]
        tags = [Tag(r.tag, None if r.filename == INTERNAL else r.id, r.executed,
                    owners.get(r.tag)) for r in rows if r.tag]
        return applied, tags

    def applied(self) -> list[AppliedMigration]:
        return self._read()[0]

    def current(self, applied: list[AppliedMigration]) -> str | None:
        return applied[-1].id if applied else None

    def status(self) -> list[MigrationStatus]:
        applied = {r.id: r for r in self.applied()}
        out = []
        for c in self.migrations():
            r = applied.get(c.id)
            state = "pending" if r is None else ("edited" if c.checksum != r.checksum
                                                 else "applied")
            out.append(MigrationStatus(
                c.id, state, r is not None, c.checksum, r.applied_at if r else None,
                None, None, r.tag if r else None, c.reversible, False, c.path))
        return out

    # -- applying ----------------------------------------------------------------------------
    def apply(self, migration: Any, run_id: str | None = None, *,
              hook: Hook | None = None) -> AppliedMigration:
        """``update-count --count=1``: the next pending changeset, which must be this one.
        Already applied with the same MD5SUM: its record, nothing runs. ``hook``: after
        Liquibase committed it, before statekeeper records it."""
        with self.lock(run_id=run_id):
            for r in self.applied():
                if r.id == migration.id and r.checksum == migration.checksum:
                    return r
            todo = self.pending()
            if not todo or todo[0].id != migration.id:
                nxt = todo[0].id if todo else "none"
                raise ConfigError(f"cannot apply {migration.id}: the next pending changeset "
                                  f"is {nxt}")
            if todo[0].checksum != migration.checksum:
                raise ValidationError(f"changeset {migration.id} changed since it was planned")
            self._release_or_refuse(run_id)
            t0 = time.monotonic()
            self._cli(["update-count", "--count=1"], run_id, migration.id)
            ms = round((time.monotonic() - t0) * 1000)
            rec = next((r for r in self.applied() if r.id == migration.id), None)
            if rec is None:
                raise changeset_error(migration.id, "Liquibase exited successfully but "
                                      "DATABASECHANGELOG has no row for it")
            if hook is not None:
                hook()
            return replace(rec, execution_ms=ms, run_id=run_id)

    def up(self, run_id: str | None = None, target_id: str | None = None,
           on_applied: Callable[[AppliedMigration], None] | None = None
           ) -> list[AppliedMigration]:
        with self.lock(run_id=run_id):
            done = []
            for c in self.plan_up(target_id):
                done.append(self.apply(c, run_id))
                if on_applied is not None:
                    on_applied(done[-1])
            return done

    # -- rolling back --------------------------------------------------------------------------
    def _undo_plan(self, changeset: str) -> tuple[str | None, list[Changeset]]:
        """What rolling ``changeset`` back runs: the newest tag recorded before it (None: no
        tag, one changeset is rolled back by count) and the changesets that undoes, newest
        first. Refused unless ``changeset`` is the last applied and all are reversible."""
        rows = self._rows()
        idx = next(i for i, r in enumerate(rows) if r.id == changeset)
        after = [r for r in rows[idx + 1:] if r.filename != INTERNAL]
        if after:
            raise ConfigError(f"cannot roll back {changeset}: {after[-1].id} was applied "
                              "after it; roll that back first")
        tag_at = next((i for i in range(idx - 1, -1, -1) if rows[i].tag), None)
        tag = rows[tag_at].tag if tag_at is not None else None
        ids = [r.id for r in rows[(tag_at + 1 if tag_at is not None else idx):]
               if r.filename != INTERNAL]
        by_id = {c.id: c for c in self.migrations()}
        undo = [by_id[i] for i in reversed(ids)]
        for c in undo:
            if not c.reversible:
                raise IrreversibleError(f"changeset {c.id} has no rollback (no <rollback> and "
                                        "no change Liquibase can undo by itself); only "
                                        "restoring a backup can undo it")
        return tag, undo

    def revert(self, id: str, run_id: str | None = None, *,
               hook: Hook | None = None) -> AppliedMigration | None:
        """Roll back the last applied changeset: ``rollback --tag=T`` to the newest tag before
        it (which also undoes any changeset applied between the tag and it, as the run's
        rollback would next), or ``rollback-count --count=1`` when no tag precedes it.
        None when it is not applied (safe to repeat)."""
        with self.lock(run_id=run_id):
            rec = next((r for r in self.applied() if r.id == id), None)
            if rec is None:
                if id not in self._ever and id not in {c.id for c in self.migrations()}:
                    raise ConfigError(f"unknown changeset {id!r}")
                return None
            tag, _undo = self._undo_plan(id)
            self._release_or_refuse(run_id)
            args = ["rollback", f"--tag={tag}"] if tag else ["rollback-count", "--count=1"]
            try:
                self._cli(args, run_id, id)
            finally:
                self._known = None  # what is pending changed: update-sql reads it again
            if hook is not None:
                hook()
            return rec

    def plan_down_to_tag(self, tag: str) -> list[Changeset]:  # type: ignore[override]
        rows = self._rows()
        at = next((i for i, r in enumerate(rows) if r.tag == tag), None)
        if at is None:
            known = ", ".join(r.tag for r in rows if r.tag) or "none"
            raise ConfigError(f"unknown tag {tag!r} (known tags: {known})")
        later = [r for r in rows[at + 1:] if r.filename != INTERNAL]
        if not later:
            return []
        _tag, undo = self._undo_plan(later[-1].id)
        floor = {r.id for r in rows[: at + 1]}
        return [c for c in undo if c.id not in floor]

    def down_to_tag(self, tag: str, run_id: str | None = None,
                    on_reverted: Callable[[Any], None] | None = None) -> list[str]:
        with self.lock(run_id=run_id):
            plan = self.plan_down_to_tag(tag)
            if plan:
                self._release_or_refuse(run_id)
                try:
                    self._cli(["rollback", f"--tag={tag}"], run_id)
                finally:
                    self._known = None
            for c in plan:
                if on_reverted is not None:
                    on_reverted(c)
            return [c.id for c in plan]

    # -- tags ------------------------------------------------------------------------------------
    def tag(self, name: str, run_id: str | None = None) -> Tag:
        """``liquibase tag --tag=NAME``; who made it is recorded first (a crash between the
        two leaves an owner row for no tag, which nothing reads). Liquibase keeps one tag per
        row: a schema already tagged another name is refused."""
        check_tag_name(name)
        with self.lock(run_id=run_id):
            rows = self._rows()
            _applied, tags = self._read()
            for t in tags:
                if t.name == name:
                    if run_id is not None and t.run_id == run_id and rows[-1].tag == name:
                        return t
                    raise ConfigError(f"tag {name} already exists (created {t.created_at}); "
                                      "choose another name")
            if rows and rows[-1].tag:
                raise ConfigError(f"the schema is already tagged {rows[-1].tag}: Liquibase "
                                  f"keeps one tag per changeset, so it cannot also be {name}")
            self._own(name, run_id)
            self._release_or_refuse(run_id)
            self._cli(["tag", f"--tag={name}"], run_id)
            made = next(t for t in self._read()[1] if t.name == name)
            return made

    # -- baseline ------------------------------------------------------------------------
    def _in_order(self) -> list[Changeset]:
        """Every changeset of the changelog in the changelog's order: the applied ones, then
        what ``update-sql`` lists as pending, sorted by where the changelog itself has them
        (as its files say; when some changeset cannot be placed that way, applied first)."""
        every = self.migrations()
        walk = {k: i for i, k in enumerate(reversibility(self.changelog))}
        if all(_short(c.id) in walk for c in every):
            every.sort(key=lambda c: walk[_short(c.id)])
        return every

    def plan_baseline(self, tag: str, through: str | None = None, *,
                      force: bool = False) -> BaselinePlan:
        """As the SQL-file driver's, over DATABASECHANGELOG and the changesets ``update-sql``
        lists. Liquibase's order is the order executed, so the rows kept are the longest run
        of rows that already are the baseline's first changesets, in order, with their
        MD5SUM; everything else in DATABASECHANGELOG is replaced (forced only). A changeset
        whose ``tagDatabase`` gives it a tag of its own can only be ``--through`` with that
        same ``--tag`` (Liquibase keeps one tag per row). Read-only (one ``update-sql``)."""
        check_tag_name(tag, "--tag")
        every = self._in_order()
        ids = [c.id for c in every]
        if through is not None and through not in ids:
            raise ConfigError(f"--through {through}: no changeset {through!r} in "
                              f"{self.changelog} (changesets are named FILE::ID::AUTHOR)")
        upto = every[: ids.index(through) + 1] if through is not None else every
        last = upto[-1].id if upto else None
        if upto and upto[-1].tag not in (None, tag):
            raise ConfigError(f"--through {last}: its tagDatabase tags the database "
                              f"{upto[-1].tag}, and Liquibase keeps one tag per changeset: "
                              f"baseline it with --tag {upto[-1].tag}")
        early = next((c for c in upto[:-1] if c.tag == tag), None)
        if early is not None:
            raise ConfigError(f"--tag {tag}: changeset {early.id} tags the database {tag} "
                              "(tagDatabase) before the baseline's last changeset; choose "
                              f"another --tag, or --through {early.id}")
        rows = self._rows()
        applied, tags = self._read()
        real = [r for r in rows if r.filename != INTERNAL]
        k = 0
        while k < min(len(real), len(upto)) and real[k].id == upto[k].id and \
                real[k].md5sum == upto[k].checksum:
            k += 1
        kept = {c.id for c in upto[:k]}
        replaced = tuple(r for r in applied if r.id not in kept)

        def stays(t: Tag) -> bool:
            if t.name == tag:
                return t.migration_id == last and k == len(upto)
            # Liquibase keeps one tag per row: ours replaces another on the baseline's last
            return t.migration_id in kept and t.migration_id != last

        replaced_tags = tuple(t for t in tags if not stays(t))
        tag_exists = any(t.name == tag and stays(t) for t in tags)
        plan = BaselinePlan(tag, last, tuple(upto),  # type: ignore[arg-type]
                            tuple(c.id for c in upto[k:]), replaced, replaced_tags,
                            tag_exists, force)
        if not plan.changes:
            return plan
        if (applied or tags) and not force:
            raise baseline_refused(f"DATABASECHANGELOG of {self.target.shown}", "changeset",
                                   [a.id for a in applied], [t.name for t in tags])
        return plan

    def baseline(self, plan: BaselinePlan, run_id: str | None = None) -> list[AppliedMigration]:
        """Write ``plan`` through Liquibase: what it replaces deleted from DATABASECHANGELOG
        (one transaction), then the changesets marked as executed without running them, then
        the tag, named and owned as :meth:`tag` does. Liquibase 4.28 cannot mark "the first N
        changesets" in one command (``changelog-sync`` takes no count, ``changelog-sync-to-tag``
        stops only at a ``tagDatabase`` changeset), so: ``changelog-sync`` when the baseline
        is every pending changeset, ``changelog-sync-to-tag`` when it ends at the first
        changeset tagging the database ``--tag``, else ``mark-next-changeset-ran`` once per
        changeset. Each checks first that Liquibase's next pending changesets are the plan's."""
        with self.lock(run_id=run_id):
            if plan.replaced or plan.replaced_tags:
                self._forget(plan)
            if plan.write:
                self._sync(plan, run_id)
            rows = self._rows()
            if not plan.tag_exists:
                if rows and rows[-1].tag == plan.tag and (rows[-1].id == plan.through or (
                        plan.through is None and rows[-1].filename == INTERNAL)):
                    self._own(plan.tag, run_id)  # a tagDatabase changeset set it
                else:
                    self.tag(plan.tag, run_id)
            by_row = {r.id: r for r in self.applied()}
            return [replace(by_row[i], execution_ms=0, run_id=run_id) for i in plan.write
                    if i in by_row]

    def _forget(self, plan: BaselinePlan) -> None:
        """Delete the rows and tags a forced baseline replaces (the ledger has them)."""
        names = [t.name for t in plan.replaced_tags]
        self._release_or_refuse(None)
        with self._transaction() as conn:
            # statekeeper's target lock keeps statekeeper out, not a Liquibase someone runs by
            # hand: hold its lock row while deleting, and refuse when it is taken
            if conn.execute("SELECT to_regclass('databasechangeloglock')").fetchone()[0] \
                    is not None:
                held = conn.execute("SELECT locked, lockedby, lockgranted FROM "
                                    "databasechangeloglock WHERE id = 1 FOR UPDATE").fetchone()
                if held is not None and held[0]:
                    raise LockHeld(f"Liquibase's DATABASECHANGELOGLOCK on "
                                   f"{self.target.shown} is held by {held[1]} since "
                                   f"{held[2]}")
            for r in plan.replaced:
                fname, cid, author = r.id.rsplit("::", 2)
                conn.execute("DELETE FROM databasechangelog WHERE id = %s AND author = %s "
                             "AND filename = %s", (cid, author, fname))
            for name in names:
                conn.execute("DELETE FROM databasechangelog WHERE tag = %s AND filename = %s",
                             (name, INTERNAL))
                conn.execute("UPDATE databasechangelog SET tag = NULL WHERE tag = %s", (name,))
            if names and conn.execute(
                    f"SELECT to_regclass('{OWNERS_TABLE}')").fetchone()[0] is not None:
                conn.execute(f"DELETE FROM {OWNERS_TABLE} WHERE name = ANY(%s)", (names,))
        self._known = None

    def _sync(self, plan: BaselinePlan, run_id: str | None) -> None:
        pending = [c.id for c in self.pending()]
        want = list(plan.write)
        if pending[: len(want)] != want:
            raise ConfigError(f"Liquibase's next pending changesets are not the baseline's "
                              f"({', '.join(pending[:3]) or 'none'} ...): the changelog or "
                              "DATABASECHANGELOG changed since the baseline was planned")
        sets = cast("tuple[Changeset, ...]", plan.migrations)
        end = next(c for c in sets if c.id == want[-1])
        earlier = {c.tag for c in sets if c.id != end.id}
        done = {r.tag for r in self._rows()}
        self._release_or_refuse(run_id)
        try:
            if want == pending:
                self._cli(["changelog-sync"], run_id)
            elif end.tag == plan.tag and plan.tag not in earlier | done:
                self._cli(["changelog-sync-to-tag", f"--tag={plan.tag}"], run_id)
            else:
                for cid in want:
                    self._release_or_refuse(run_id)
                    self._cli(["mark-next-changeset-ran"], run_id, cid)
        finally:
            self._known = None
        got = [r.id for r in self._rows() if r.filename != INTERNAL]
        if got[-len(want):] != want:
            raise TargetError(f"liquibase marked {', '.join(got[-len(want):]) or 'nothing'} "
                              f"as executed, not {', '.join(want)}")

    def _own(self, name: str, run_id: str | None) -> None:
        """Record that ``run_id`` made tag ``name`` (Liquibase's TAG has no room for it)."""
        with self._transaction() as conn:
            conn.execute(f"CREATE TABLE IF NOT EXISTS {OWNERS_TABLE} (name TEXT PRIMARY "
                         "KEY, run_id TEXT, created_at TEXT NOT NULL)")
            conn.execute(f"DELETE FROM {OWNERS_TABLE} WHERE name = %s", (name,))
            conn.execute(f"INSERT INTO {OWNERS_TABLE} VALUES (%s, %s, %s)",
                         (name, run_id, _clock.stamp(self.clock())))

    def check_new_tag(self, name: str) -> str | None:
        check_tag_name(name)
        rows = self._rows()
        for r in rows:
            if r.tag == name:
                raise ConfigError(f"tag {name} already exists (created {r.executed}); "
                                  "choose another name")
        if rows and rows[-1].tag:
            raise ConfigError(f"the schema is already tagged {rows[-1].tag}: Liquibase keeps "
                              f"one tag per changeset, so it cannot also be {name}")
        applied = [r for r in rows if r.filename != INTERNAL]
        return applied[-1].id if applied else None

    def untag(self, name: str, run_id: str) -> bool:
        """Take back a tag run ``run_id`` made: the TAG cleared (the row ``liquibase tag``
        added to an empty changelog deleted), its owner row removed."""
        with self.lock(run_id=run_id):
            if self._owners().get(name) != run_id or not any(
                    r.tag == name for r in self._rows()):
                return False
            with self._transaction() as conn:
                conn.execute("DELETE FROM databasechangelog WHERE tag = %s AND filename = %s",
                             (name, INTERNAL))
                conn.execute("UPDATE databasechangelog SET tag = NULL WHERE tag = %s", (name,))
                conn.execute(f"DELETE FROM {OWNERS_TABLE} WHERE name = %s AND run_id = %s",
                             (name, run_id))
            return True

    # -- DATABASECHANGELOGLOCK ---------------------------------------------------------------
    def _lock_row(self) -> tuple[str, Any] | None:
        """(LOCKEDBY, LOCKGRANTED) when the lock is held; None when free or never created."""
        with self._connect(autocommit=True) as conn, self._errors():
            if conn.execute("SELECT to_regclass('databasechangeloglock')").fetchone()[0] is None:
                return None
            row = conn.execute("SELECT lockedby, lockgranted FROM databasechangeloglock "
                               "WHERE id = 1 AND locked").fetchone()
        return None if row is None else (str(row[0] or ""), row[1])

    def _release_or_refuse(self, run_id: str | None) -> None:
        """Before a child that takes DATABASECHANGELOGLOCK: a lock still held is refused now,
        not waited on for minutes. (Before every step the runner releases a lock a dead
        child of the run left, as an event of the run: :meth:`release_stale_lock`.)"""
        held = self._lock_row()
        if held is None:
            return
        dead = " (left by a child of this run that is gone: 'statekeeper resume' releases it)" \
            if run_id and self._stale(run_id, held, probe_only=True) else \
            " (if that process is gone, 'liquibase release-locks' frees it)"
        raise LockHeld(f"Liquibase's DATABASECHANGELOGLOCK on {self.target.shown} is held "
                       f"by {held[0]} since {held[1]}{dead}")

    def _stale(self, run_id: str, held: tuple[str, Any], *,
               probe_only: bool = False) -> dict[str, Any] | None:
        """Why ``held`` is provably a dead child of run ``run_id``, or None. Proof: a record
        of a child of this run, on this host, that LOCKEDBY names; the lock granted while the
        child lived; no process of its process group alive; no connection of its (its JDBC
        ApplicationName) open on the server."""
        where = self._dir(run_id)
        host = socket.gethostname()
        if where is None or held[0].split(" (", 1)[0] != host:
            return None
        granted = held[1]
        for p in sorted(where.glob("child-*.json"), key=lambda p: p.stat().st_mtime,
                        reverse=True):
            try:
                rec = json.loads(p.read_text())
                start = datetime.fromisoformat(rec["started_local"])
                end = datetime.fromisoformat(rec.get("ended_local") or
                                             datetime.now().isoformat())
            except (OSError, ValueError, KeyError, TypeError):
                continue
            if rec.get("host") != host or not isinstance(granted, datetime):
                continue
            if not (start.timestamp() - 2 <= granted.timestamp() <= end.timestamp() + 2):
                continue
            if _group_alive(int(rec["pid"])):
                return None
            # Its process is gone, but a backend of its may still be busy (a pg_sleep does
            # not notice the client left); nobody can send it a COMMIT any more: end it, so
            # that what DATABASECHANGELOG says next is final.
            ended = 0 if probe_only else self._end_backends(str(rec["application_name"]))
            if ended is None:
                return None
            return {"lockedby": held[0], "lockgranted": granted.isoformat(),
                    "pid": int(rec["pid"]), "host": host, "started": rec["started_local"],
                    "command": str(rec.get("command", "")), "backends_ended": ended,
                    "reason": "the Liquibase child that took it is gone (no process of its "
                              "group alive, no connection of its left on the server)"}
        return None

    def _end_backends(self, application_name: str) -> int | None:
        """End the server sessions a dead child left (its JDBC ApplicationName); how many.
        None when one is still there after 10 s."""
        q = "FROM pg_stat_activity WHERE application_name = %s AND pid <> pg_backend_pid()"
        with self._connect(autocommit=True) as conn, self._errors():
            n = len(conn.execute(f"SELECT pg_terminate_backend(pid) {q}",
                                 (application_name,)).fetchall())
            deadline = time.monotonic() + 10
            while conn.execute(f"SELECT count(*) {q}", (application_name,)).fetchone()[0]:
                if time.monotonic() > deadline:
                    return None
                time.sleep(0.05)
        return n

    def _free(self, held: tuple[str, Any]) -> bool:
        with self._transaction() as conn:
            cur = conn.execute(
                "UPDATE databasechangeloglock SET locked = FALSE, lockgranted = NULL, "
                "lockedby = NULL WHERE id = 1 AND locked AND lockedby = %s AND "
                "lockgranted = %s", held)
            return bool(cur.rowcount)

    def release_stale_lock(self, run_id: str) -> dict[str, Any] | None:
        held = self._lock_row()
        if held is None:
            return None
        why = self._stale(run_id, held)
        if why is None or not self._free(held):
            return None
        return why


# -- parsing -----------------------------------------------------------------------------------
_CHANGESET = re.compile(r"^-- Changeset (\S+)$", re.M)
_RECORD = re.compile(
    r"INSERT INTO \S*databasechangelog \(ID, AUTHOR, FILENAME, DATEEXECUTED, ORDEREXECUTED, "
    r"MD5SUM,[^)]*\) VALUES \('((?:[^']|'')*)', '((?:[^']|'')*)', '((?:[^']|'')*)', [^,]+, "
    r"\d+, '([^']*)'", re.I)
# a tagDatabase changeset's row: TAG is its last column
_TAGGED = re.compile(r"[^\n]*, TAG\) VALUES \(.*, '((?:[^']|'')*)'\);?$", re.M)


def _parse_update_sql(text: str, changelog: Path) -> tuple[list[Changeset], str]:
    """The pending changesets, in order, with their MD5SUM and SQL, and the whole preview."""
    out: list[Changeset] = []
    marks = list(_CHANGESET.finditer(text))
    for i, m in enumerate(marks):
        end = marks[i + 1].start() if i + 1 < len(marks) else len(text)
        block = text[m.end():end]
        rec = _RECORD.search(block)
        if rec is None:
            raise TargetError(f"liquibase update-sql: no DATABASECHANGELOG row for "
                              f"changeset {m.group(1)}")
        cid, author, fname = (g.replace("''", "'") for g in rec.groups()[:3])
        body = block[: rec.start()]
        body = "\n".join(line for line in body.splitlines()
                         if line.strip() and not line.startswith("SET SEARCH_PATH"))
        tagged = _TAGGED.match(block, rec.start())
        out.append(Changeset(changeset_key(fname, cid, author), rec.group(4), changelog,
                             sql=body.strip(),
                             tag=tagged.group(1).replace("''", "'") if tagged else None))
    return out, _sql_part(text)


def _sql_part(text: str) -> str:
    """The statements of a ``*-sql`` command's output, without Liquibase's lock and banner."""
    keep: list[str] = []
    on = False
    for line in text.splitlines():
        if line.startswith("-- Changeset ") or line.startswith("-- Rolling Back ChangeSet"):
            on = True
        if line.startswith("-- Release Database Lock") or line.startswith("Liquibase command"):
            on = False
        if on and not line.startswith("SET SEARCH_PATH") and (line.strip() or (
                keep and keep[-1].strip())):
            keep.append(line)
    return "\n".join(keep).strip() + ("\n" if keep else "")


def _short(key: str) -> tuple[str, str, str]:
    fname, cid, author = key.rsplit("::", 2) if key.count("::") >= 2 else (key, "", "")
    return Path(fname).name, cid, author


def _mask(text: str, password: str | None) -> str:
    if password:
        text = text.replace(password, "***")
    return re.sub(r"(password\s*[=:]\s*)\S+", r"\1***", text, flags=re.I)


def _failure(command: str, text: str, status: int,
             changeset: str | None = None) -> StatekeeperError:
    """Liquibase's error output as statekeeper's error: a changeset that failed ->
    :func:`changeset_error` (changeset, SQL state when printed, the database's message); killed
    -> MigrationError of ``changeset`` (the one it was running);
    validation -> ValidationError; a lock it waited on -> LockHeld; the rest -> TargetError
    with Liquibase's own first error line."""
    if status < 0 or status in (137, 143):
        return changeset_error(changeset or f"(liquibase {command})",
                               f"Liquibase was killed (exit status {status})")
    m = re.search(r"Migration failed for changeset (\S+?):\s*\n\s*Reason: (.*?)"
                  r"(?:\n\s*\n|\nFor more information|\Z)", text, re.S)
    if m:
        reason = " ".join(m.group(2).split())
        failed = re.search(r"\[Failed SQL: \((-?\d+)\) (.*)\]$", reason)
        if failed:
            reason = reason[: failed.start()].strip()
        reason = re.sub(r"^(?:[\w.]+Exception: )+", "", reason)
        state = re.search(r"SQL ?State:? ?([0-9A-Z]{5})", text, re.I)
        return changeset_error(m.group(1), reason, sql_state=state.group(1) if state else None,
                              failed_sql=failed.group(2) if failed else None)
    if "Validation Failed" in text or "check sum" in text.lower():
        lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
        at = next((i for i, ln in enumerate(lines) if "Validation Failed" in ln), 0)
        return ValidationError(f"liquibase {command}: " + "; ".join(lines[at: at + 3]))
    if "Could not acquire change log lock" in text:
        return LockHeld(f"liquibase {command}: could not acquire DATABASECHANGELOGLOCK")
    err = next((ln.strip() for ln in text.splitlines()
                if ln.startswith("Unexpected error running Liquibase")), None)
    last = err or next((ln.strip() for ln in reversed(text.splitlines()) if ln.strip()),
                       "no output")
    return TargetError(f"liquibase {command} failed (exit status {status}): {last}")



# -- which changesets have a rollback ----------------------------------------------------------
def reversibility(changelog: Path) -> dict[tuple[str, str, str], bool]:
    """(file name, id, author) -> whether Liquibase can roll the changeset back: it has a
    <rollback>, or all its changes are ones Liquibase inverts itself. Includes are followed.
    A file that cannot be read says nothing (its changesets count as without rollback)."""
    out: dict[tuple[str, str, str], bool] = {}
    _walk(changelog, out, set())
    return out


def _walk(path: Path, out: dict[tuple[str, str, str], bool], seen: set[Path]) -> None:
    path = path.resolve()
    if path in seen or not path.is_file():
        return
    seen.add(path)
    suffix = path.suffix.lower()
    with contextlib.suppress(ET.ParseError, OSError, UnicodeDecodeError, ValueError):
        if suffix == ".xml":
            _walk_xml(path, out, seen)
        elif suffix in (".yaml", ".yml", ".json"):
            _walk_yaml(path, out, seen)
        elif suffix == ".sql":
            _walk_sql(path, out)


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _include(path: Path, file: str, relative: bool, out: dict[tuple[str, str, str], bool],
             seen: set[Path], every: bool = False) -> None:
    target = (path.parent / file) if relative or not Path(file).is_absolute() else Path(file)
    if every and target.is_dir():
        for p in sorted(target.iterdir()):
            _walk(p, out, seen)
    else:
        _walk(target, out, seen)


def _walk_xml(path: Path, out: dict[tuple[str, str, str], bool], seen: set[Path]) -> None:
    root = ET.parse(path).getroot()
    for el in root:
        name = _local(el.tag)
        if name in ("include", "includeAll"):
            _include(path, el.get("file") or el.get("path") or "",
                     el.get("relativeToChangelogFile") == "true", out, seen,
                     every=name == "includeAll")
        elif name == "changeSet":
            kids = [_local(k.tag) for k in el]
            changes = [k for k in kids if k not in _IGNORED_CHILDREN]
            ok = "rollback" in kids or (bool(changes) and all(k in AUTO_ROLLBACK
                                                              for k in changes))
            out[(path.name, el.get("id", ""), el.get("author", ""))] = ok


def _walk_yaml(path: Path, out: dict[tuple[str, str, str], bool], seen: set[Path]) -> None:
    try:
        import yaml
    except ImportError:  # pragma: no cover - PyYAML is there wherever SQLAlchemy's tests are
        return
    doc = yaml.safe_load(path.read_text())
    for item in (doc or {}).get("databaseChangeLog", []) or []:
        if not isinstance(item, dict):
            continue
        if "include" in item or "includeAll" in item:
            inc = item.get("include") or item.get("includeAll") or {}
            _include(path, str(inc.get("file") or inc.get("path") or ""),
                     bool(inc.get("relativeToChangelogFile")), out, seen,
                     every="includeAll" in item)
        cs = item.get("changeSet")
        if isinstance(cs, dict):
            changes = [next(iter(c)) for c in cs.get("changes", []) or []
                       if isinstance(c, dict) and c]
            ok = "rollback" in cs or (bool(changes) and all(c in AUTO_ROLLBACK
                                                            for c in changes))
            out[(path.name, str(cs.get("id", "")), str(cs.get("author", "")))] = ok


_SQL_CHANGESET = re.compile(r"^--\s*changeset\s+([^:\s]+):(\S+)", re.I)
_SQL_ROLLBACK = re.compile(r"^--\s*rollback\b", re.I)


def _walk_sql(path: Path, out: dict[tuple[str, str, str], bool]) -> None:
    key: tuple[str, str, str] | None = None
    for line in path.read_text().splitlines():
        m = _SQL_CHANGESET.match(line)
        if m:
            key = (path.name, m.group(2), m.group(1))
            out[key] = False
        elif key is not None and _SQL_ROLLBACK.match(line):
            out[key] = True

