"""A fingerprint of a target database: per table the row count and a checksum of its rows in a
stable order, plus a checksum of the schema built from the catalogs.

Equal fingerprints are the proof that a restore brought back exactly what was backed up.

* Rows: every user table (``statekeeper_*`` bookkeeping tables excluded), read in primary-key
  order (no primary key: in the order of the rows' canonical text), each row written as one
  canonical line; the table's checksum is the sha256 of those lines, ``\\n``-terminated.
  PostgreSQL: the line is the row in ``COPY ... TO STDOUT`` text format under fixed session
  settings (UTC, ISO dates, hex bytea, shortest-exact floats), so it does not depend on the
  client's locale or time zone. SQLite: a JSON array of typed values.
* Schema: one entry per object (schema, table, column, constraint, index, view, function,
  sequence definition, trigger, type, extension), each the object's definition read from
  ``pg_catalog`` (``sqlite_master`` on SQLite), never from ``pg_dump`` text (which carries a
  random ``\\restrict`` key since 15.14). Long definitions are kept as their sha256. The schema
  checksum is the sha256 of the canonical JSON of these entries.
* Not included: sequence current values (PostgreSQL logs them 32 ahead, so a point-in-time
  restore legitimately moves them), ownership, privileges and comments, statistics, physical
  order, dropped-column slots, OIDs.

The fingerprint reads inside one REPEATABLE READ transaction (PostgreSQL), so it is a
consistent snapshot even while others write; the PostgreSQL reader's psql children read the
rows in that transaction's exported snapshot (:mod:`statekeeper.dialects.pg_fingerprint`),
producing the very bytes, so the very checksums, of the format-1 reader through the
connection: fingerprints recorded before compare with those taken now.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .targets import Target

FORMAT = 1
BOOKKEEPING_PREFIX = "statekeeper_"
LARGE_OBJECTS = "(large objects)"  # pseudo-table: oid and sha256 of each large object
_LONG = 160  # definitions longer than this are stored as their sha256


def _sha256(data: bytes | str) -> str:
    if isinstance(data, str):
        data = data.encode("utf-8")
    return hashlib.sha256(data).hexdigest()


def canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


@dataclass(frozen=True)
class TableFingerprint:
    rows: int
    checksum: str


@dataclass(frozen=True)
class Fingerprint:
    """Row counts and checksums per table, and the schema's objects and checksum."""

    backend: str
    tables: dict[str, TableFingerprint]
    schema_objects: dict[str, str] = field(default_factory=dict)
    format: int = FORMAT

    @property
    def schema(self) -> str:
        """sha256 of the schema's objects (canonical JSON)."""
        return _sha256(canonical(self.schema_objects))

    @property
    def digest(self) -> str:
        """One sha256 over everything the fingerprint covers."""
        body = {
            "format": self.format,
            "schema": self.schema,
            "tables": {k: [t.rows, t.checksum] for k, t in sorted(self.tables.items())},
        }
        return _sha256(canonical(body))

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "backend": self.backend,
            "digest": self.digest,
            "schema": self.schema,
            "tables": {
                k: {"rows": t.rows, "checksum": t.checksum} for k, t in sorted(self.tables.items())
            },
            "schema_objects": dict(sorted(self.schema_objects.items())),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Fingerprint:
        """Rebuild a fingerprint; refuses one whose recorded digest does not match its body."""
        try:
            fp = cls(
                backend=str(data["backend"]),
                tables={
                    str(k): TableFingerprint(int(v["rows"]), str(v["checksum"]))
                    for k, v in data["tables"].items()
                },
                schema_objects={str(k): str(v) for k, v in data["schema_objects"].items()},
                format=int(data.get("format", FORMAT)),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise ValueError(f"not a fingerprint: {e!r}") from e
        if "digest" in data and data["digest"] != fp.digest:
            raise ValueError("fingerprint digest does not match its contents")
        return fp

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Fingerprint):
            return NotImplemented
        return self.digest == other.digest

    def __hash__(self) -> int:
        return hash(self.digest)


def diff(a: Fingerprint, b: Fingerprint) -> list[str]:
    """Human lines, table by table, saying how ``b`` (after) differs from ``a`` (before).

    An empty list means the fingerprints are equal."""
    out: list[str] = []
    for name in sorted(set(a.tables) | set(b.tables)):
        ta, tb = a.tables.get(name), b.tables.get(name)
        if ta is None:
            assert tb is not None
            out.append(f"table {name} exists only after ({_rows(tb.rows)})")
        elif tb is None:
            out.append(f"table {name} exists only before ({_rows(ta.rows)})")
        elif ta.rows != tb.rows:
            out.append(f"{name}: {_rows(ta.rows)} -> {_rows(tb.rows)}")
        elif ta.checksum != tb.checksum:
            out.append(f"{name}: {_rows(ta.rows)}, contents differ")
    sa, sb = a.schema_objects, b.schema_objects
    for key in sorted(set(sa) | set(sb)):
        va, vb = sa.get(key), sb.get(key)
        if va == vb:
            continue
        if va is None:
            out.append(f"schema differs: {key} exists only after")
        elif vb is None:
            out.append(f"schema differs: {key} exists only before")
        elif va.startswith("sha256:") or vb.startswith("sha256:"):
            out.append(f"schema differs: {key} changed")
        else:
            out.append(f"schema differs: {key}: {va} -> {vb}")
    if not out and a.digest != b.digest:
        out.append(f"fingerprint format differs: {a.format} -> {b.format}")
    return out


def _rows(n: int) -> str:
    return f"{n} row" if n == 1 else f"{n} rows"


def fingerprint(target: Target, conn: Any = None) -> Fingerprint:
    """Fingerprint the target database (a consistent snapshot on PostgreSQL), with the reader
    of its dialect; on ``conn`` (an open autocommit connection, the run's) or one of its own."""
    return target.dialect.fingerprint(target, conn)


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def definition(text: str | None) -> str:
    """A schema object's definition as recorded: white space collapsed, a long one as its
    sha256."""
    text = "" if text is None else " ".join(str(text).split())
    return text if len(text) <= _LONG else "sha256:" + _sha256(text)
