"""The ledger's tables as SQLAlchemy metadata: what the PostgreSQL recorder creates (and the
benchmarks' plain SQLAlchemy system writes). The SQLite recorder spells its own DDL (see
ledger/recorders/sqlite.py), so a SQLite ledger never imports SQLAlchemy."""

from __future__ import annotations

from typing import Any

from sqlalchemy import BigInteger, Boolean, Column, MetaData, String, Table, Text, UniqueConstraint
from sqlalchemy.ext.compiler import compiles

metadata = MetaData()


class SeqType(BigInteger):
    """The type of the ``seq`` keys: a 64-bit integer."""

    inherit_cache = True


@compiles(SeqType, "sqlite")
def _seq_is_the_rowid(_type: SeqType, _compiler: Any, **_kw: Any) -> str:
    # "INTEGER" (not "BIGINT", same 64-bit range) makes seq the table's rowid, as in the
    # SQLite recorder's own DDL (these tables on SQLite: the benchmarks' plain system).
    return "INTEGER"


_SEQ = SeqType()

events = Table(
    "ledger_events",
    metadata,
    Column("seq", _SEQ, primary_key=True, autoincrement=False),
    Column("stream", String(200), nullable=False),
    Column("stream_seq", BigInteger, nullable=False),
    Column("type", String(200), nullable=False),
    Column("recorded_at", String(27), nullable=False),
    Column("actor", Text, nullable=False),
    Column("payload", Text, nullable=False),
    Column("closes", Boolean, nullable=False),
    Column("prev_hash", String(64), nullable=False),
    Column("stream_prev_hash", String(64), nullable=False),
    Column("hash", String(64), nullable=False),
    UniqueConstraint("stream", "stream_seq", name="ledger_events_stream_pos"),
    # No index on recorded_at (ledgers made before issue 15 have one, unused): nothing reads
    # by time, and every index is one more B-tree page written on every commit.
)

seals = Table(
    "ledger_seals",
    metadata,
    Column("seq", _SEQ, primary_key=True, autoincrement=False),
    Column("first_seq", BigInteger, nullable=False),
    Column("key_id", String(64), nullable=False),
    Column("signature", String(100), nullable=False),
)

keys = Table(
    "ledger_keys",
    metadata,
    Column("key_id", String(64), primary_key=True),
    Column("public_key", String(64), nullable=False),
    Column("added_seq", BigInteger, nullable=False),
)
