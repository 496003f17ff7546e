"""What a backend reached through SQLAlchemy shares (PostgreSQL): the engine and its pool, the
schema from :mod:`.tables`, SQLAlchemy's errors in the translation. SQLite does without
(ledger/recorders/sqlite.py), so a SQLite ledger never imports this."""

from __future__ import annotations

import contextlib
import os
from abc import abstractmethod
from collections.abc import Iterator
from typing import Any

from sqlalchemy import Connection, Engine, event
from sqlalchemy import exc as sa_exc

from ..errors import OperationalError
from .base import _SQL_STREAM_STARTS_INDEX, Recorder, format_1_refused
from .tables import metadata


class EngineRecorder(Recorder):
    """A recorder on a SQLAlchemy engine: reads and appends on its pooled driver connections
    (SQLAlchemy's per-statement machinery costs more there than the database does), DDL and
    schema inspection through SQLAlchemy."""

    _sa_engine: Engine

    @property
    def engine(self) -> Engine:
        return self._sa_engine

    def _open(self) -> None:
        self._sa_engine = self._create_engine()
        _no_pool_sharing_across_fork(self.engine)
        self._unreachable_on_connect()

    def _driver_errors(self) -> tuple[type[Exception], type[Exception]]:
        dbapi = self.engine.dialect.loaded_dbapi
        return dbapi.Error, dbapi.IntegrityError

    def _unreachable_on_connect(self) -> None:
        """Connecting is where an unreachable ledger shows (a closed port, a bad host, a
        refused login): one LedgerUnreachable on one line, raised for every command at the
        same place, instead of whatever a driver says mid-way."""

        @event.listens_for(self.engine, "do_connect")
        def _connect(dialect: Any, _record: Any, cargs: Any, cparams: Any) -> Any:
            with self.translate(connecting=True):
                return dialect.connect(*cargs, **cparams)

    def _operational(self, e: Exception) -> OperationalError:
        if isinstance(e, sa_exc.DBAPIError):
            msg = str(e.orig).strip().splitlines()[0] if e.orig is not None else str(e)
            return OperationalError(f"ledger {self.display_url}: {msg}")
        if isinstance(e, sa_exc.SQLAlchemyError):
            return OperationalError(f"ledger {self.display_url}: {e}")
        return super()._operational(e)

    @contextlib.contextmanager
    def _driver(self) -> Iterator[Any]:
        raw = self.engine.raw_connection()
        try:
            yield raw.driver_connection
        except self._driver_error as e:
            if self.engine.dialect.is_disconnect(e, raw.driver_connection, None):  # type: ignore[arg-type]
                raw.invalidate(e)
            raise
        finally:
            raw.close()

    def _writer_checkout(self) -> Any:
        return self.engine.raw_connection()

    def _dbapi(self, handle: Any) -> Any:
        return handle.driver_connection

    def _writer_broken(self, handle: Any, e: Exception) -> bool:
        if self.engine.dialect.is_disconnect(e, handle.driver_connection, None):  # type: ignore[arg-type]
            handle.invalidate(e)
            return True
        return False

    def _writer_release(self, handle: Any) -> None:
        handle.close()

    def _close(self) -> None:
        self.engine.dispose()

    # -- schema ------------------------------------------------------------------------------
    def ensure_schema(self) -> None:
        with self.translate(), self.engine.begin() as conn:
            self._lock_head(conn)
            if self._schema_ready(conn):  # no DDL: the appending role may only INSERT
                self._check_format(conn)
                return
            metadata.create_all(conn, checkfirst=True)
            self._check_format(conn)
            self._install_triggers(conn)
            conn.exec_driver_sql(_SQL_STREAM_STARTS_INDEX)

    def exists(self) -> bool:
        with self.translate(), self.engine.connect() as conn:
            found = bool(self.engine.dialect.has_table(conn, "ledger_events"))
            if found:
                self._check_format(conn)
            return found

    def _check_format(self, conn: Connection) -> None:
        from sqlalchemy import inspect

        names = {c["name"] for c in inspect(conn).get_columns("ledger_seals")}
        if "first_seq" not in names:
            raise format_1_refused(self.display_url)

    @abstractmethod
    def _create_engine(self) -> Engine: ...

    @abstractmethod
    def _lock_head(self, conn: Connection) -> None: ...

    @abstractmethod
    def _install_triggers(self, conn: Connection) -> None: ...

    def _schema_ready(self, conn: Connection) -> bool:
        """Whether tables and triggers are all in place, so that opening needs no DDL."""
        return False


def _no_pool_sharing_across_fork(engine: Engine) -> None:
    """A forked child must never use a pooled connection its parent opened (two processes on
    one socket): such a connection is discarded at checkout, as SQLAlchemy's pooling guide
    recommends for multiprocessing."""

    @event.listens_for(engine, "connect")
    def _connect(dbapi_conn: Any, record: Any) -> None:
        record.info["pid"] = os.getpid()

    @event.listens_for(engine, "checkout")
    def _checkout(dbapi_conn: Any, record: Any, proxy: Any) -> None:
        if record.info.get("pid") != os.getpid():
            record.dbapi_connection = proxy.dbapi_connection = None
            raise sa_exc.DisconnectionError("connection opened by another process")
