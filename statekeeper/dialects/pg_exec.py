"""PostgreSQL: running a whole migration text with the simple query protocol, and where in
the file it failed. Imported when a migration runs (psycopg is heavy)."""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg.pq import ExecStatus, TransactionStatus

from ..errors import MigrationError
from ..sqltext import pg_statements
from .base import first_line


class CountingCursor(psycopg.Cursor[Any]):
    """Remembers how many statements of a multi-statement string completed before an error
    (psycopg internals; if they change, only the fallback error position is lost)."""

    failed_index: int | None = None

    def _check_results(self, results: list[Any]) -> None:
        self.failed_index = None
        for i, res in enumerate(results):
            if res.status == ExecStatus.FATAL_ERROR:
                self.failed_index = i
                break
        super()._check_results(results)


def execute(conn: Any, migration_id: str, text: str, offset: int, transactional: bool) -> None:
    cur = CountingCursor(conn)
    try:
        cur.execute(text)  # whole text, simple query protocol (no parameters)
    except psycopg.Error as e:
        diag = e.diag
        message = diag.message_primary or first_line(e)
        pos: int | None = None
        if diag.statement_position:
            pos = int(diag.statement_position)
        elif cur.failed_index is not None:
            spans = pg_statements(text)
            if cur.failed_index < len(spans):
                pos = spans[cur.failed_index][0] + 1
        raise MigrationError(migration_id, message, offset + pos if pos else None) from e
    finally:
        cur.close()
    if transactional and conn.info.transaction_status != TransactionStatus.INTRANS:
        raise MigrationError(migration_id, "the migration ended its transaction itself "
                             "(COMMIT/ROLLBACK in the file); it may be partly applied")
