"""The fingerprint reader of SQLite targets: rows as JSON arrays of typed values, the schema
from ``sqlite_master`` (see :mod:`statekeeper.fingerprint` for what a fingerprint covers)."""

from __future__ import annotations

import hashlib
from json.encoder import encode_basestring
from typing import Any

from ..fingerprint import Fingerprint, TableFingerprint, canonical, definition, quote_ident
from ..progress import task as progress_task


def sqlite_fingerprint(conn: Any) -> Fingerprint:
    """Fingerprint through an open sqlite3 connection, inside one read transaction."""
    conn.execute("BEGIN")
    try:
        master = conn.execute(
            "SELECT type, name, tbl_name, sql FROM sqlite_master "
            "WHERE name NOT LIKE 'sqlite\\_%' ESCAPE '\\' "
            "AND tbl_name NOT LIKE 'statekeeper\\_%' ESCAPE '\\' ORDER BY type, name"
        ).fetchall()
        objs = {f"{typ} {name}": definition(sql or f"(automatic {typ} on {tbl})")
                for typ, name, tbl, sql in master}
        tables: dict[str, TableFingerprint] = {}
        names = [name for typ, name, _tbl, sql in master
                 if typ == "table" and not (sql or "").upper().startswith("CREATE VIRTUAL TABLE")]
        with progress_task("fingerprint", len(names), "tables") as done:
            for name in names:
                tables[name] = _sqlite_table_fp(conn, name)
                done.advance()
    finally:
        conn.execute("COMMIT")
    return Fingerprint("sqlite", tables, objs)


def _sqlite_table_fp(conn: Any, name: str) -> TableFingerprint:
    cols = conn.execute(f"PRAGMA table_info({quote_ident(name)})").fetchall()
    pk = [c[1] for c in sorted((c for c in cols if c[5]), key=lambda c: c[5])]
    order = ", ".join(quote_ident(c) for c in (pk or [c[1] for c in cols]))
    h = hashlib.sha256()
    rows = 0
    cur = conn.execute(f"SELECT * FROM {quote_ident(name)} ORDER BY {order}")
    with progress_task(f"  {name}", unit="rows") as read:
        while True:
            batch = cur.fetchmany(5000)
            if not batch:
                break
            h.update("".join(["[" + ",".join(map(_text, row)) + "]\n"
                              for row in batch]).encode("utf-8"))
            rows += len(batch)
            read.update(rows)
    return TableFingerprint(rows, h.hexdigest())


def _text(v: Any) -> str:
    """``canonical(_sqlite_value(v))``, written out: the same bytes at half the cost (one
    json.dumps per row built an encoder each time; this is a row's whole price on SQLite)."""
    c = v.__class__
    if c is str:
        return encode_basestring(v)  # what json.dumps(ensure_ascii=False) quotes with
    if c is int:
        return int.__repr__(v)
    if v is None:
        return "null"
    if c is float:
        return '{"f":"' + v.hex() + '"}'
    if c is bytes:
        return '{"b":"' + v.hex() + '"}'
    return canonical(_sqlite_value(v))


def _sqlite_value(v: Any) -> Any:
    if v is None or isinstance(v, int):
        return v
    if isinstance(v, float):
        return {"f": v.hex()}
    if isinstance(v, bytes):
        return {"b": v.hex()}
    return str(v)
