"""PostgreSQL targets: psycopg 3, libpq connection parameters, a session advisory lock.

psycopg is imported by the methods that use it, not here: configuration checks pick a dialect
from a URL and must not pay for the driver.

A migration runs statement by statement (:mod:`.pg_exec`, as ``psql -1 -f``) in psycopg's own
transaction (a connection that is not in autocommit mode opens one at the first statement); a
migration that must run outside one (``VACUUM``, ``CREATE INDEX CONCURRENTLY``) runs on an
autocommit connection, each statement on its own, and its changelog row is then a single
statement of its own.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from ..errors import (
    ConfigError,
    LockHeld,
    MigrationError,
    TargetError,
    TargetRefused,
    TargetUnreachable,
)
from .base import ClusterScope, Dialect, Held, first_line

if TYPE_CHECKING:
    from ledger import DatabaseURL as URL

    from ..fingerprint import Fingerprint
    from ..targets import Target

#: The advisory lock's key (two int4: ``pg_locks.classid``, ``objid``; ``objsubid`` 2).
ADVISORY_LOCK_KEY = (int.from_bytes(b"stkp", "big"), 1)

# Connection keywords that are secrets: never on a child's command line.
SECRET_PARAMS = frozenset({
    "password", "sslpassword", "scram_client_key", "scram_server_key", "oauth_client_secret",
})


class PostgresDialect(Dialect):
    name = "postgresql"
    schemes = ("postgresql", "postgres")
    backup_methods = ("pg_dump", "pgbackrest")
    jdbc = "postgresql"
    nested_comments = True
    integer_type = "bigint"
    session_lock = True

    # -- the target URL ----------------------------------------------------------------------
    def check_target(self, target: Target) -> None:
        import psycopg

        try:
            self.conninfo(target)
        except psycopg.ProgrammingError as e:  # a query parameter libpq does not know
            raise ConfigError(f"target URL {target.shown!r}: {first_line(e)}") from e

    def url_error(self, url: URL) -> Exception | None:
        """The error libpq would give for the URL's query parameters at the first
        connection, found now."""
        import psycopg

        try:
            psycopg.conninfo.make_conninfo(**{k: str(v) for k, v in url.query.items()})
        except psycopg.ProgrammingError as e:
            return e
        return None

    def conn_params(self, target: Target) -> dict[str, str]:
        """libpq keywords for what the URL says, and nothing it does not: a host, port or user
        left out is left to libpq (PGHOST, PGPORT, PGUSER, PGSERVICE, the socket directory),
        exactly as psql resolves it. Our own connection and the client programs both start
        from this, so they reach the same server."""
        u = target.url
        params: dict[str, str] = {"dbname": str(u.database)}
        if u.host:
            params["host"] = u.host
        if u.port:
            params["port"] = str(u.port)
        if u.username:
            params["user"] = u.username
        if u.password:
            params["password"] = str(u.password)
        params.update({k: str(v) for k, v in u.query.items()})
        if "connect_timeout" not in params and not os.environ.get("PGCONNECT_TIMEOUT"):
            params["connect_timeout"] = "10"
        return params

    def conninfo(self, target: Target) -> str:
        import psycopg

        return str(psycopg.conninfo.make_conninfo(**self.conn_params(target)))

    def client_conninfo(self, target: Target) -> str:
        import psycopg

        params = {k: v for k, v in self.conn_params(target).items() if k not in SECRET_PARAMS}
        return str(psycopg.conninfo.make_conninfo(**params))

    def libpq_env(self, target: Target) -> dict[str, str]:
        env = dict(os.environ)
        password = self.conn_params(target).get("password")
        if password:
            env["PGPASSWORD"] = password
        return env

    def endpoint(self, target: Target, conn: Any = None) -> tuple[str, int]:
        if conn is not None:
            return str(conn.info.host), int(conn.info.port)
        c = self.connect(target, autocommit=True)
        try:
            return str(c.info.host), int(c.info.port)
        finally:
            c.close()

    # -- connections and transactions -----------------------------------------------------
    def connect(self, target: Target, *, autocommit: bool = False) -> Any:
        import psycopg

        try:
            # prepare_threshold None: psycopg prepares nothing behind a migration's back (one
            # running DEALLOCATE inside a DO block would leave its cache pointing at nothing)
            return psycopg.connect(self.conninfo(target), autocommit=autocommit,
                                   connect_timeout=10, prepare_threshold=None)
        except psycopg.Error as e:
            cls = TargetUnreachable if _unreachable(e) else TargetRefused
            raise cls(f"target {target.shown}: {first_line(e)}") from e

    def driver_error(self) -> tuple[type[BaseException], ...]:
        import psycopg

        return (psycopg.Error,)

    def label_session(self, conn: Any, label: str) -> None:
        # application_name: what pg_stat_activity shows, and so what a second holder is told
        conn.execute("SELECT set_config('application_name', %s, false)", [label])
        if not conn.autocommit:
            conn.commit()

    def migration_autocommit(self, transactional: bool) -> bool:
        return True  # transactions are begun explicitly: the run's one connection stays as is

    def begin(self, conn: Any) -> None:
        conn.execute("BEGIN")

    def end(self, conn: Any) -> None:
        conn.commit()  # COMMIT when a transaction is open (psycopg asks the server), else nothing

    def commit(self, conn: Any, migration_id: str, what: str) -> None:
        import psycopg

        try:
            self.end(conn)
        except psycopg.Error as e:
            if e.sqlstate:  # the server refused the commit (deferred constraint, ...)
                raise MigrationError(migration_id, e.diag.message_primary or first_line(e)) from e
            raise TargetError(
                f"migration {migration_id}: the connection failed while committing its {what}; "
                f"whether it took effect is unknown: check `statekeeper migrate status` "
                f"({first_line(e)})"
            ) from e

    def rollback(self, conn: Any) -> None:
        with contextlib.suppress(Exception):
            conn.rollback()

    def reset_session(self, conn: Any, label: str) -> None:
        # DISCARD ALL without pg_advisory_unlock_all(): the target lock lives on this session
        from psycopg import sql as pgsql

        with contextlib.suppress(Exception):
            conn.execute(
                "CLOSE ALL; SET SESSION AUTHORIZATION DEFAULT; RESET ALL; DEALLOCATE ALL; "
                "UNLISTEN *; DISCARD PLANS; DISCARD TEMP; DISCARD SEQUENCES; "
                + pgsql.SQL("SELECT set_config('application_name', {}, false)").format(
                    pgsql.Literal(label)).as_string(conn))

    # -- migration texts --------------------------------------------------------------------
    def statement_starts(self, text: str) -> list[tuple[int, bool]]:
        from ..sqltext import pg_scan

        spans, inner = pg_scan(text)
        return [(s, False) for s, _e in spans] + inner

    def execute(self, conn: Any, migration_id: str, text: str, offset: int,
                transactional: bool) -> tuple[tuple[str, str, int], ...]:
        from .pg_exec import execute

        return execute(conn, migration_id, text, offset, transactional)

    # -- our own tables ---------------------------------------------------------------------
    def own_schema(self, conn: Any, table: str, display: str) -> str:
        """The first schema of the search path that has ``table``, else ``current_schema()``:
        settled once, so that a migration changing the search path does not lose it."""
        row = conn.execute(
            "SELECT n.nspname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE c.oid = to_regclass(%s)", [table]
        ).fetchone()
        if row is None:
            row = conn.execute("SELECT current_schema()").fetchone()
            if row[0] is None:
                raise ConfigError(
                    f"target {display}: no schema of the search_path exists to hold {table}"
                )
        return str(row[0])

    def tables_exist(self, conn: Any, schema: str, names: tuple[str, ...]) -> bool:
        from psycopg import sql as pgsql

        row = conn.execute(
            "SELECT " + " AND ".join("to_regclass(%s) IS NOT NULL" for _ in names),
            [pgsql.Identifier(schema, t).as_string(conn) for t in names],
        ).fetchone()
        return bool(row[0])

    def run(self, conn: Any, schema: str, query: str, params: Any = None,
            **tables: str) -> Any:
        from psycopg import sql as pgsql

        composed = pgsql.SQL(query).format(
            **{k: pgsql.Identifier(schema, v) for k, v in tables.items()}
        )
        return conn.execute(composed, params)

    @contextlib.contextmanager
    def created_concurrently(self) -> Iterator[None]:
        import psycopg

        with contextlib.suppress(psycopg.errors.UniqueViolation, psycopg.errors.DuplicateTable):
            yield

    # -- the target lock --------------------------------------------------------------------
    def lock(self, target: Target, label: str, since: str, conn: Any = None) -> Held:
        """A session advisory lock (``pg_try_advisory_lock``, key :data:`ADVISORY_LOCK_KEY`) on
        ``conn`` (the run's one connection) or a connection of its own, released when the
        block ends, the session ends or the process dies."""
        import psycopg

        own = conn is None
        if own:
            conn = self.connect(target, autocommit=True)
        k1, k2 = ADVISORY_LOCK_KEY
        try:
            with self.errors(f"target {target.shown}"):
                self.label_session(conn, label)
                for _ in range(3):
                    if conn.execute(f"SELECT pg_try_advisory_lock({k1}, {k2})").fetchone()[0]:
                        break
                    holder = self._holder(conn)
                    if holder and not self._end_orphan(conn):
                        raise LockHeld(
                            f"migrations on {target.shown} are locked by another "
                            f"process: {holder}"
                        )
                    time.sleep(0.05)  # released between the two queries: try again
                else:
                    raise LockHeld(f"migrations on {target.shown} are locked by another "
                                   "process (holder not visible)")
        except BaseException:
            if own:
                conn.close()
            raise

        def release() -> None:
            with contextlib.suppress(psycopg.Error):
                conn.execute(f"SELECT pg_advisory_unlock({k1}, {k2})")
            if own:
                conn.close()

        def alive() -> bool:
            # the session lives, and still holds the lock: a migration on a shared session
            # could have run pg_advisory_unlock_all()
            try:
                row = conn.execute(
                    "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' "
                    f"AND pid = pg_backend_pid() AND classid::bigint = {k1} "
                    f"AND objid::bigint = {k2} AND objsubid = 2 AND granted)").fetchone()
            except psycopg.Error:
                return False
            return bool(row[0])

        return Held(release, alive, None if own else conn)

    @staticmethod
    def _end_orphan(conn: Any) -> bool:
        """The lock's holder is the backend of a statekeeper process of this host that is
        gone (SIGKILLed during a long migration: the server notices only when the statement
        ends): end that backend, so its lock goes now. Its open transaction can never commit
        (migrations COMMIT from the client), so ending it loses nothing the in-doubt step's
        probe would not already say did not happen. Anything else (alive, another host, no
        right to signal it) is a holder to refuse."""
        import re
        import socket

        import psycopg

        from ..procs import pid_alive

        k1, k2 = ADVISORY_LOCK_KEY
        row = conn.execute(
            "SELECT l.pid, a.application_name FROM pg_locks l "
            "JOIN pg_stat_activity a ON a.pid = l.pid "
            f"WHERE l.locktype = 'advisory' AND l.classid::bigint = {k1} "
            f"AND l.objid::bigint = {k2} AND l.objsubid = 2 AND l.granted "
            "AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())"
        ).fetchone()
        label = (row[1] if row else None) or ""
        m = re.fullmatch(r"statekeeper pid=(\d+) host=(\S*)(?: run=\S+)?", label)
        if not row or not m:
            return False
        pid, host = int(m.group(1)), m.group(2)
        here = socket.gethostname()
        if not host or not here.startswith(host) or pid == os.getpid() or pid_alive(pid):
            return False
        try:
            ended = conn.execute("SELECT pg_terminate_backend(%s, 10000)", [row[0]]).fetchone()
        except psycopg.Error:
            return False
        return bool(ended and ended[0])

    @staticmethod
    def _holder(conn: Any) -> str | None:
        from ..clock import stamp

        k1, k2 = ADVISORY_LOCK_KEY
        row = conn.execute(
            "SELECT l.pid, a.application_name, host(a.client_addr), a.client_hostname, "
            "a.backend_start, a.usename FROM pg_locks l "
            "LEFT JOIN pg_stat_activity a ON a.pid = l.pid "
            f"WHERE l.locktype = 'advisory' AND l.classid::bigint = {k1} "
            f"AND l.objid::bigint = {k2} AND l.objsubid = 2 AND l.granted "
            "AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())"
        ).fetchone()
        if not row:
            return None
        pid, app, addr, hostname, since, user = row
        where = [f"PostgreSQL backend pid {pid}"]
        if user:
            where.append(f"user {user}")
        if hostname or addr:
            where.append(f"client {hostname or addr}")
        if since:
            where.append(f"connected since {stamp(since)}")
        who = app or "an unnamed session"
        return f"{who} ({', '.join(where)})"

    # -- reading ----------------------------------------------------------------------------
    def cluster_of(self, target: Target) -> ClusterScope:
        import psycopg

        conn = self.connect(target, autocommit=True)
        try:
            with self.errors(f"cluster of {target.shown}"):
                rows = conn.execute("SELECT datname FROM pg_database WHERE datallowconn "
                                    "AND NOT datistemplate ORDER BY datname").fetchall()
                try:
                    sysid: str | None = str(conn.execute(
                        "SELECT system_identifier FROM pg_control_system()").fetchone()[0])
                except psycopg.errors.InsufficientPrivilege:
                    sysid = None
        finally:
            conn.close()
        return ClusterScope(sysid, tuple(str(r[0]) for r in rows))

    def fingerprint(self, target: Target, conn: Any = None) -> Fingerprint:
        """A consistent snapshot: one REPEATABLE READ transaction (on ``conn``, an autocommit
        connection, it is begun and ended here)."""
        from .pg_fingerprint import pg_fingerprint

        own = conn is None
        if own:
            conn = self.connect(target)
        try:
            with self.errors(f"fingerprint of {target.shown}"), conn.transaction():
                return pg_fingerprint(conn, target=target)
        finally:
            if own:
                conn.close()

    def health_query(self, target: Target, sql: str, timeout_ms: int) -> Any:
        import psycopg

        conn = self.connect(target, autocommit=True)
        try:
            # server-side: covers lock waits as well as the query's own work
            conn.execute(f"SET statement_timeout = {int(timeout_ms)}")
            try:
                return conn.execute(sql).fetchone()
            except psycopg.Error as e:
                if e.sqlstate == "57014":  # query_canceled
                    raise TimeoutError() from e
                raise
        finally:
            conn.close()


#: libpq's words for "no server there to talk to" (its socket errors carry no SQLSTATE)
_NO_SERVER = (
    "connection refused", "timeout expired",
    "could not translate host name", "server closed the connection unexpectedly",
    "no route to host", "network is unreachable", "failed to resolve host",
    # the server's own FATAL at connect (57P03), which libpq may report without its SQLSTATE
    "the database system is starting up", "the database system is shutting down",
    "the database system is not yet accepting connections",
    "the database system is not accepting connections", "the database system is in recovery",
)


def _unreachable(e: BaseException) -> bool:
    """Is a connection error the server's absence (down, starting, stopping, no such host)
    rather than a refusal (a bad password, a missing database)?"""
    if getattr(e, "sqlstate", None) == "57P03":  # cannot_connect_now: starting, stopping
        return True
    text = str(e).lower()
    if getattr(e, "sqlstate", None) is not None:
        return False
    # no socket file: nothing listens (a missing certificate file is not this)
    no_socket = 'on socket "' in text and "no such file or directory" in text
    return no_socket or any(w in text for w in _NO_SERVER)
