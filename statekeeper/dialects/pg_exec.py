"""PostgreSQL: running a migration text statement by statement, as ``psql -1 -f`` does, and
where in the file it failed. Imported when a migration runs (psycopg is heavy).

Why one statement at a time: a multi-statement string in the simple query protocol is parsed
whole by the server before any of it runs, so a syntax error on line 90 was reported instead
of the real first failure on line 3; and it runs as one implicit transaction block, so
``VACUUM`` or ``CREATE INDEX CONCURRENTLY`` failed in a no-transaction file with anything else
in it. The statement boundaries are :func:`statekeeper.sqltext.pg_statements` (psql's lexer).
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg.pq import TransactionStatus

from ..errors import MigrationError
from .base import first_line

#: the severities kept from the server's messages (DEBUG, LOG and INFO are not the user's)
_KEPT = ("NOTICE", "WARNING")


def execute(conn: Any, migration_id: str, text: str, offset: int,
            transactional: bool) -> tuple[tuple[str, str, int], ...]:
    """Run ``text`` one statement at a time on ``conn`` (in the open transaction when
    ``transactional``, else each statement on its own in autocommit). ``offset``: where
    ``text`` starts in the file. Returns the NOTICEs/WARNINGs the server raised (severity,
    message, the file position of the statement); MigrationError at the first failing
    statement, with the server's DETAIL, HINT and CONTEXT and the notices raised until then."""
    from ..sqltext import pg_statements

    notices: list[tuple[str, str, int]] = []
    where = [0]  # the file position (1-based) of the statement running

    def on_notice(diag: Any) -> None:
        severity = diag.severity_nonlocalized or diag.severity or "NOTICE"
        if severity in _KEPT:
            notices.append((severity, diag.message_primary or "", where[0]))

    conn.add_notice_handler(on_notice)
    try:
        for start, end in pg_statements(text):
            where[0] = offset + start + 1
            try:
                conn.execute(text[start:end])  # no parameters: the simple query protocol
            except psycopg.Error as e:
                diag = e.diag
                pos = start + (int(diag.statement_position) if diag.statement_position else 1)
                raise MigrationError(
                    migration_id, diag.message_primary or first_line(e), offset + pos,
                    detail=diag.message_detail, hint=diag.message_hint,
                    context=diag.context, notices=tuple(notices),
                ) from e
            if transactional and conn.info.transaction_status != TransactionStatus.INTRANS:
                raise MigrationError(
                    migration_id, "the migration ended its transaction itself (COMMIT/ROLLBACK "
                    "in the file); it may be partly applied", offset + start + 1,
                    notices=tuple(notices))
    finally:
        conn.remove_notice_handler(on_notice)
    return tuple(notices)
