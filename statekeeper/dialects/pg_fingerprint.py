"""The fingerprint reader of PostgreSQL targets: rows through ``COPY ... TO STDOUT`` under
fixed session settings, the schema from ``pg_catalog`` (see :mod:`statekeeper.fingerprint`
for what a fingerprint covers).

Given the target, the rows are read by ``psql`` children (up to :data:`JOBS` at once, largest
table first), each in the snapshot the caller's transaction exports, and their output is
hashed as it arrives (reads of up to 1 MiB): the same bytes, so the same checksums, as
reading them through our own connection, which costs a Python round trip per row (2-3x the
COPY itself). Without ``psql``
on the machine the rows are read through the connection as before.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..targets import Target

from ..fingerprint import LARGE_OBJECTS, Fingerprint, TableFingerprint, definition, quote_ident
from ..progress import task as progress_task

_USER_NS = (
    "n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast') "
    "AND n.nspname !~ '^pg_(toast_)?temp_'"
)
# Liquibase's two tables are bookkeeping as statekeeper's own are: a run rolled back through
# Liquibase leaves them changed (created, a tag row) where the application's data is not
_NOT_BOOKKEEPING = ("c.relname NOT LIKE 'statekeeper\\_%' "
                    "AND c.relname NOT IN ('databasechangelog', 'databasechangeloglock')")
_NOT_EXTENSION = (
    "NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = {cat}::regclass "
    "AND d.objid = {oid} AND d.deptype = 'e')"
)

_PG_CLASS = "'pg_class'"

_SESSION = (
    ("search_path", ""),
    ("DateStyle", "ISO, YMD"),
    ("IntervalStyle", "postgres"),
    ("TimeZone", "UTC"),
    ("extra_float_digits", "1"),
    ("bytea_output", "hex"),
    ("lc_monetary", "C"),
)


JOBS = 2  # psql readers at once: a server backend and our hashing each, on a 2-core machine
_CHUNK = 1 << 20
_SMALL = 128  # pages (1 MiB): smaller tables are read through our own connection


def pg_fingerprint(conn: Any, *, begin: bool = True, target: Target | None = None,
                   snapshot: str | None = None, pg_bin: Path | None = None) -> Fingerprint:
    """Fingerprint through an open psycopg connection, inside the caller's transaction.

    With ``begin`` it must be the first thing in the transaction: it sets REPEATABLE READ so
    that every table is read from one snapshot. Without it, the caller has set the isolation
    level (and may have exported the snapshot for pg_dump or locked tables). The session
    settings it makes are local to the transaction. With ``target`` the rows are read by psql
    in that snapshot (``snapshot``: the one the caller exported, else one exported here); the
    transaction must stay open until this returns."""
    if begin:
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
    for name, value in _SESSION:
        conn.execute("SELECT set_config(%s, %s, true)", (name, value))
    tables: dict[str, TableFingerprint] = {}
    found = _pg_tables(conn)
    psql = _psql(pg_bin) if target is not None and found else None
    if psql is not None and snapshot is None:
        snapshot = _export_snapshot(conn)
    with progress_task("fingerprint", len(found), "tables") as done:
        if psql is None or target is None or snapshot is None:
            for schema, table, pk, _ in found:
                tables[_pg_name(schema, table)] = _pg_copy_fp(
                    conn, _pg_table_sql(schema, table, pk), _pg_name(schema, table))
                done.advance()
            return _pg_rest(conn, tables)
        reader = _PsqlReader(psql, target, snapshot, _client_encoding(conn))
        pool = ThreadPoolExecutor(JOBS, thread_name_prefix="fingerprint")
        try:
            # Largest first, so that the last table to finish is a small one.
            futures = {_pg_name(schema, table): pool.submit(
                reader.table_fp, _pg_table_sql(schema, table, pk), _pg_name(schema, table))
                for schema, table, pk, pages in sorted(found, key=lambda t: -t[3])
                if pages >= _SMALL}
            # Our own connection reads the small tables (a psql costs ~30 ms to start) and
            # the catalogs meanwhile, in the same snapshot: it would wait otherwise.
            for schema, table, pk, pages in found:
                if pages < _SMALL:
                    tables[_pg_name(schema, table)] = _pg_copy_fp(
                        conn, _pg_table_sql(schema, table, pk), _pg_name(schema, table))
                    done.advance()
            rest = _pg_rest(conn, {})
            for name, future in futures.items():
                tables[name] = future.result()
                done.advance()
        except BaseException:
            reader.stop()  # an interrupt or a failed table: do not wait for the others
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
    tables.update(rest.tables)
    return Fingerprint("postgresql", dict(sorted(tables.items())), rest.schema_objects)


def _export_snapshot(conn: Any) -> str | None:
    """The transaction's snapshot for the psql readers; None on a standby, which exports
    none (the rows are then read here). Not tried in a savepoint instead: the readers of a
    snapshot exported in a subtransaction measured 1.5x slower."""
    if conn.execute("SELECT pg_is_in_recovery()").fetchone()[0]:
        return None
    return str(conn.execute("SELECT pg_export_snapshot()").fetchone()[0])


def _pg_rest(conn: Any, tables: dict[str, TableFingerprint]) -> Fingerprint:
    """``tables`` with the large objects' pseudo-table, and the schema."""
    if conn.execute("SELECT EXISTS (SELECT 1 FROM pg_largeobject_metadata)").fetchone()[0]:
        tables[LARGE_OBJECTS] = _pg_copy_fp(
            conn, "COPY (SELECT oid, encode(sha256(lo_get(oid)), 'hex') "
                  "FROM pg_largeobject_metadata ORDER BY oid) TO STDOUT")
    return Fingerprint("postgresql", tables, _pg_schema_objects(conn))


def _pg_name(schema: str, table: str) -> str:
    return table if schema == "public" else f"{schema}.{table}"


def _pg_tables(conn: Any) -> list[tuple[str, str, list[str], int]]:
    """(schema, table, primary key columns, pages) of every user table, by name. The pages
    are the files' (with TOAST), not ``relpages``: that is 0 until the table's first ANALYZE."""
    rows = conn.execute(
        f"""
        SELECT n.nspname, c.relname, pg_table_size(c.oid) / 8192,
               coalesce((SELECT array_agg(a.attname ORDER BY k.ord)
                           FROM pg_index i
                           CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord)
                           JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
                          WHERE i.indrelid = c.oid AND i.indisprimary), '{{}}')
          FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE c.relkind = 'r' AND {_USER_NS} AND {_NOT_BOOKKEEPING}
           AND {_NOT_EXTENSION.format(cat="'pg_class'", oid="c.oid")}
         ORDER BY 1, 2
        """
    ).fetchall()
    return [(r[0], r[1], list(r[3]), int(r[2])) for r in rows]


def _pg_table_sql(schema: str, table: str, pk: list[str]) -> str:
    rel = f"{quote_ident(schema)}.{quote_ident(table)}"
    if pk:
        order = ", ".join(f"_sk_row.{quote_ident(c)}" for c in pk)
    else:
        order = '(ROW(_sk_row.*)::text) COLLATE "C"'
    return f"COPY (SELECT * FROM ONLY {rel} AS _sk_row ORDER BY {order}) TO STDOUT"


def _psql(pg_bin: Path | None) -> str | None:
    """psql as the backups find it (``pg_bin``, $STATEKEEPER_PG_BIN, PATH), 15 or newer."""
    d = pg_bin or (Path(os.environ["STATEKEEPER_PG_BIN"])
                   if os.environ.get("STATEKEEPER_PG_BIN") else None)
    psql = str(d / "psql") if d is not None else shutil.which("psql")
    if psql is None or not os.access(psql, os.X_OK):
        return None
    return psql if _psql_major(psql) >= 15 else None


@functools.lru_cache(maxsize=4)
def _psql_major(psql: str) -> int:
    """psql's major version (0 when unreadable). The reader needs 15 (the one tested): it
    relies on COPY TO STDOUT going to a ``\\g`` file and its tag to the query output."""
    try:
        out = subprocess.run([psql, "--version"], capture_output=True, text=True,
                             timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return 0
    m = re.search(r"\s(\d+)(?:\.\d+)?", out)
    return int(m.group(1)) if m else 0


def _client_encoding(conn: Any) -> str:
    raw = conn.pgconn.parameter_status(b"client_encoding")
    return raw.decode("ascii") if raw else "UTF8"


class _PsqlReader:
    """Reads one table's canonical rows with a psql child in the exported snapshot."""

    def __init__(self, psql: str, target: Target, snapshot: str, encoding: str) -> None:
        self.argv = [psql, "-X", "-q", "--no-password", "-v", "ON_ERROR_STOP=1",
                     "-v", "VERBOSITY=terse", "-o", "/dev/stderr", "-f", "-",
                     f"--dbname={target.client_conninfo()}"]
        # Our connection's encoding, so that psql receives the bytes it would have received.
        self.env = dict(target.libpq_env(), PGCLIENTENCODING=encoding,
                        PGAPPNAME="statekeeper-fingerprint")
        settings = ", ".join(f"set_config('{k}', '{v}', true)" for k, v in _SESSION)
        self.prelude = (
            "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY;\n"
            f"SET TRANSACTION SNAPSHOT '{snapshot}';\n"
            f"SELECT {settings} \\g /dev/null\n"
        )
        self.lock = threading.Lock()
        self.running: set[subprocess.Popen[bytes]] = set()
        self.stopped = False

    def stop(self) -> None:
        """Kill the readers running now; those not started yet are never started."""
        with self.lock:
            self.stopped = True
            running = list(self.running)
        for proc in running:
            _kill(proc)

    def table_fp(self, sql: str, label: str) -> TableFingerprint:
        from ..errors import TargetError

        # COPY's tag, the server's count of the rows it sent, goes to psql's query output
        # (-o: stderr) when the rows go to a \\g file: counting the newlines here would
        # cost as much CPU as hashing them.
        script = (f"{self.prelude}\\set QUIET off\n{sql} \\g /dev/stdout\n"
                  "\\set QUIET on\nCOMMIT;\n")
        h = hashlib.sha256()
        with tempfile.TemporaryFile() as err:
            with self.lock:
                if self.stopped:
                    raise TargetError(f"fingerprint of table {label}: stopped")
                # Not statekeeper.children (it would make an import cycle of the dialects):
                # psql dies of the broken pipe at its next write when statekeeper dies.
                proc = subprocess.Popen(self.argv, env=self.env, stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, stderr=err,
                                        start_new_session=True)
                self.running.add(proc)
            assert proc.stdin is not None and proc.stdout is not None
            try:
                proc.stdin.write(script.encode())  # within the pipe's buffer
                proc.stdin.close()
                while data := os.read(proc.stdout.fileno(), _CHUNK):
                    h.update(data)
                proc.stdout.close()
                rc = proc.wait()
            except BaseException:
                _kill(proc)
                raise
            with self.lock:
                self.running.discard(proc)
            err.seek(0)
            text = err.read().decode("utf-8", "replace")
        if rc != 0:
            lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
            first = next((ln for ln in lines if "ERROR:" in ln or "FATAL:" in ln or
                          "error:" in ln), lines[-1] if lines else "(no message)")
            first = re.sub(r"^.*?(ERROR|FATAL|error):\s*", "", first)
            raise TargetError(f"fingerprint of table {label}: psql: {first}")
        tags = [ln.split()[1] for ln in text.splitlines()
                if ln.startswith("COPY ") and ln[5:].strip().isdigit()]
        if len(tags) != 1:
            raise TargetError(f"fingerprint of table {label}: psql did not say how many rows "
                              "it read")
        rows = int(tags[0])
        return TableFingerprint(rows, h.hexdigest())


def _kill(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _pg_copy_fp(conn: Any, sql: str, label: str = LARGE_OBJECTS) -> TableFingerprint:
    h = hashlib.sha256()
    rows = 0
    with (conn.cursor() as cur, cur.copy(sql) as copy,
          progress_task(f"  {label}", unit="rows") as read):
        for chunk in copy:
            data = bytes(chunk)
            h.update(data)
            rows += data.count(b"\n")  # COPY text escapes newlines inside values
            read.update(rows)
    return TableFingerprint(rows, h.hexdigest())


def _pg_schema_objects(conn: Any) -> dict[str, str]:
    objs: dict[str, str] = {}

    def add(rows: Iterable[tuple[Any, ...]]) -> None:
        for key, value in rows:
            objs[str(key)] = definition(value)

    add(conn.execute(
        f"""SELECT 'schema ' || n.nspname, 'schema' FROM pg_namespace n
             WHERE {_USER_NS} AND {_NOT_EXTENSION.format(cat="'pg_namespace'", oid="n.oid")}"""
    ).fetchall())
    add(conn.execute(
        "SELECT 'extension ' || extname, 'version ' || extversion || ' in ' || "
        "extnamespace::regnamespace::text FROM pg_extension WHERE extname <> 'plpgsql'"
    ).fetchall())
    rel_filter = (
        f"{_USER_NS} AND {_NOT_BOOKKEEPING} "
        f"AND {_NOT_EXTENSION.format(cat=_PG_CLASS, oid='c.oid')}"
    )
    # Tables, partitioned tables, views, materialized views, foreign tables.
    add(conn.execute(
        f"""
        SELECT CASE c.relkind WHEN 'v' THEN 'view ' WHEN 'm' THEN 'materialized view '
                              WHEN 'f' THEN 'foreign table ' ELSE 'table ' END
               || n.nspname || '.' || c.relname,
               CASE WHEN c.relkind IN ('v', 'm') THEN pg_get_viewdef(c.oid, true)
                    ELSE concat_ws(' ',
                        CASE c.relkind WHEN 'p' THEN 'partitioned by '
                             || pg_get_partkeydef(c.oid) END,
                        CASE WHEN c.relispartition THEN 'partition of '
                             || (SELECT string_agg(inhparent::regclass::text, ', ')
                                   FROM pg_inherits WHERE inhrelid = c.oid)
                             || ' ' || pg_get_expr(c.relpartbound, c.oid) END,
                        CASE WHEN NOT c.relispartition AND EXISTS (
                               SELECT 1 FROM pg_inherits WHERE inhrelid = c.oid)
                             THEN 'inherits ' || (SELECT string_agg(inhparent::regclass::text,
                                   ', ' ORDER BY inhseqno) FROM pg_inherits
                                   WHERE inhrelid = c.oid) END,
                        CASE c.relpersistence WHEN 'u' THEN 'unlogged' END,
                        CASE WHEN c.relrowsecurity THEN 'row level security' END)
               END
          FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f') AND {rel_filter}
        """
    ).fetchall())
    # Columns: position among live columns (dropped-column slots vanish in a dump/restore).
    add(conn.execute(
        f"""
        SELECT 'column ' || n.nspname || '.' || c.relname || '.' || a.attname,
               concat_ws(' ',
                 '#' || row_number() OVER (PARTITION BY c.oid ORDER BY a.attnum),
                 format_type(a.atttypid, a.atttypmod),
                 CASE WHEN a.attnotnull THEN 'not null' END,
                 CASE WHEN a.attcollation <> 0 AND a.attcollation <> t.typcollation
                      THEN 'collate ' || a.attcollation::regcollation::text END,
                 CASE a.attidentity WHEN 'a' THEN 'generated always as identity'
                                    WHEN 'd' THEN 'generated by default as identity' END,
                 CASE WHEN a.attgenerated = 's'
                      THEN 'generated always as (' || pg_get_expr(ad.adbin, ad.adrelid) || ')'
                      WHEN ad.adbin IS NOT NULL
                      THEN 'default ' || pg_get_expr(ad.adbin, ad.adrelid) END)
          FROM pg_attribute a
          JOIN pg_class c ON c.oid = a.attrelid
          JOIN pg_namespace n ON n.oid = c.relnamespace
          JOIN pg_type t ON t.oid = a.atttypid
          LEFT JOIN pg_attrdef ad ON ad.adrelid = a.attrelid AND ad.adnum = a.attnum
         WHERE a.attnum > 0 AND NOT a.attisdropped
           AND c.relkind IN ('r', 'p', 'v', 'm', 'f') AND {rel_filter}
        """
    ).fetchall())
    add(conn.execute(
        f"""
        SELECT 'constraint ' || n.nspname || '.' || c.relname || '.' || k.conname,
               pg_get_constraintdef(k.oid, true)
          FROM pg_constraint k
          JOIN pg_class c ON c.oid = k.conrelid
          JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE k.conrelid <> 0 AND k.conislocal AND {rel_filter}
        """
    ).fetchall())
    add(conn.execute(
        f"""
        SELECT 'constraint ' || n.nspname || '.' || t.typname || '.' || k.conname,
               pg_get_constraintdef(k.oid, true)
          FROM pg_constraint k
          JOIN pg_type t ON t.oid = k.contypid
          JOIN pg_namespace n ON n.oid = t.typnamespace
         WHERE k.contypid <> 0 AND {_USER_NS}
        """
    ).fetchall())
    add(conn.execute(
        f"""
        SELECT 'index ' || n.nspname || '.' || ic.relname, pg_get_indexdef(i.indexrelid)
          FROM pg_index i
          JOIN pg_class ic ON ic.oid = i.indexrelid
          JOIN pg_class c ON c.oid = i.indrelid
          JOIN pg_namespace n ON n.oid = ic.relnamespace
         WHERE {rel_filter}
        """
    ).fetchall())
    add(conn.execute(
        f"""
        SELECT 'sequence ' || n.nspname || '.' || c.relname,
               format_type(s.seqtypid, NULL) || ' start ' || s.seqstart || ' increment '
               || s.seqincrement || ' min ' || s.seqmin || ' max ' || s.seqmax || ' cache '
               || s.seqcache || CASE WHEN s.seqcycle THEN ' cycle' ELSE '' END
          FROM pg_sequence s
          JOIN pg_class c ON c.oid = s.seqrelid
          JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE {rel_filter}
        """
    ).fetchall())
    add(conn.execute(
        f"""
        SELECT CASE p.prokind WHEN 'p' THEN 'procedure ' WHEN 'a' THEN 'aggregate '
                              WHEN 'w' THEN 'window function ' ELSE 'function ' END
               || n.nspname || '.' || p.proname
               || '(' || pg_get_function_identity_arguments(p.oid) || ')',
               CASE WHEN p.prokind = 'a'
                    THEN 'returns ' || format_type(p.prorettype, NULL)
                    ELSE pg_get_functiondef(p.oid) END
          FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
         WHERE {_USER_NS} AND {_NOT_EXTENSION.format(cat="'pg_proc'", oid="p.oid")}
        """
    ).fetchall())
    add(conn.execute(
        f"""
        SELECT 'trigger ' || n.nspname || '.' || c.relname || '.' || tg.tgname,
               pg_get_triggerdef(tg.oid, true)
               || CASE tg.tgenabled WHEN 'D' THEN ' (disabled)' WHEN 'A' THEN ' (always)'
                                    WHEN 'R' THEN ' (replica)' ELSE '' END
          FROM pg_trigger tg
          JOIN pg_class c ON c.oid = tg.tgrelid
          JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE NOT tg.tgisinternal AND {rel_filter}
        """
    ).fetchall())
    add(conn.execute(
        f"""
        SELECT 'policy ' || n.nspname || '.' || c.relname || '.' || po.polname,
               CASE WHEN po.polpermissive THEN 'permissive ' ELSE 'restrictive ' END
               || po.polcmd::text || ' ' || coalesce(pg_get_expr(po.polqual, po.polrelid), '')
               || ' / ' || coalesce(pg_get_expr(po.polwithcheck, po.polrelid), '')
          FROM pg_policy po
          JOIN pg_class c ON c.oid = po.polrelid
          JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE {rel_filter}
        """
    ).fetchall())
    # Enums, domains, composite and range types (not the row types of tables).
    add(conn.execute(
        f"""
        SELECT 'type ' || n.nspname || '.' || t.typname,
               CASE t.typtype
                 WHEN 'e' THEN 'enum (' || (SELECT string_agg(quote_literal(e.enumlabel), ', '
                                             ORDER BY e.enumsortorder)
                                              FROM pg_enum e WHERE e.enumtypid = t.oid) || ')'
                 WHEN 'd' THEN 'domain ' || format_type(t.typbasetype, t.typtypmod)
                      || CASE WHEN t.typnotnull THEN ' not null' ELSE '' END
                      || coalesce(' default ' || t.typdefault, '')
                 WHEN 'c' THEN 'composite (' || (SELECT string_agg(a.attname || ' '
                                   || format_type(a.atttypid, a.atttypmod), ', ' ORDER BY a.attnum)
                                   FROM pg_attribute a WHERE a.attrelid = t.typrelid
                                   AND a.attnum > 0 AND NOT a.attisdropped) || ')'
                 WHEN 'r' THEN 'range of ' || (SELECT format_type(r.rngsubtype, NULL)
                                                 FROM pg_range r WHERE r.rngtypid = t.oid)
                 ELSE 'type ' || t.typtype::text END
          FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
         WHERE {_USER_NS} AND t.typtype IN ('e', 'd', 'c', 'r')
           AND (t.typtype <> 'c' OR (SELECT relkind FROM pg_class WHERE oid = t.typrelid) = 'c')
           AND {_NOT_EXTENSION.format(cat="'pg_type'", oid="t.oid")}
        """
    ).fetchall())
    return objs
