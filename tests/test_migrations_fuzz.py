"""Fuzzing the migration file loader (hypothesis): random bytes, and files built from known
pieces (SQL, directives in any case, near misses, transaction control in and out of bodies,
NULs, BOMs, invalid UTF-8, CRLF and CR line endings). The loader returns a correct
Migration or raises ConfigError naming the file, on one line; nothing else ever escapes.

Example counts: 250 (random bytes), 250 (random text of SQL-ish tokens), 300 (built files,
whose expected outcome is known piece by piece), 200 (transaction control hidden in bodies,
strings and comments), 200 (keywords used as names before transaction control), each for
both lexers where a backend matters."""

from __future__ import annotations

import hashlib
import tempfile
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from statekeeper.errors import ConfigError
from statekeeper.migrations import DOWN_MARKER, NO_TRANSACTION_MARKER, Migration, load_migrations

BACKENDS = ("postgresql", "sqlite")
FUZZ = settings(max_examples=250, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def mdir() -> Iterator[Path]:
    # One directory for all examples (hypothesis runs many per test): each writes the file anew.
    with tempfile.TemporaryDirectory() as d:
        yield Path(d)


def load_one(mdir: Path, data: bytes, backend: str) -> Migration | ConfigError:
    p = mdir / "0001_fuzz.sql"
    p.write_bytes(data)
    try:
        result = load_migrations(mdir, backend)
    except ConfigError as e:
        msg = str(e)
        assert msg.startswith(f"{p}: ") and "\n" not in msg and "\r" not in msg, msg
        return e
    assert len(result) == 1 and result[0].path == p and result[0].id == "0001_fuzz"
    return result[0]


def squash(s: str) -> str:
    return "".join(c for c in unicodedata.normalize("NFKC", s).casefold() if c.isalnum())


def is_comment_line(line: str) -> bool:
    i = 0
    while i < len(line) and (line[i].isspace() or unicodedata.category(line[i]) == "Cf"):
        i += 1
    return line.startswith(("--", "/*"), i)


def check_accepted(data: bytes, m: Migration) -> None:
    """What any accepted file must satisfy, whatever it was built from."""
    assert b"\0" not in data
    text = data.decode("utf-8").removeprefix("\ufeff").replace("\r\n", "\n").replace("\r", "\n")
    assert text.startswith(m.up)
    assert m.checksum == hashlib.sha256(m.up.encode()).hexdigest()
    lines = text.split("\n")
    directive_lines = set()
    if m.down is not None:
        assert text.endswith(m.down) and m.down_offset == len(text) - len(m.down)
        marker = text[len(m.up):m.down_offset]
        assert marker.rstrip("\n").rstrip(" \t").lower() == DOWN_MARKER
        directive_lines.add(m.up.count("\n"))
    else:
        assert m.up == text
    if m.no_transaction:
        assert lines[0].rstrip(" \t").lower() == NO_TRANSACTION_MARKER
        directive_lines.add(0)
    # no line that reads as a directive survives as a comment
    for n, line in enumerate(lines):
        if n not in directive_lines and is_comment_line(line):
            assert squash(line) not in (squash(DOWN_MARKER), squash(NO_TRANSACTION_MARKER)), line


@FUZZ
@given(data=st.binary(max_size=400), backend=st.sampled_from(BACKENDS))
def test_random_bytes(mdir: Path, data: bytes, backend: str) -> None:
    r = load_one(mdir, data, backend)
    if isinstance(r, Migration):
        check_accepted(data, r)


TOKENS = [
    "-- statekeeper:down", "-- STATEKEEPER:Down", "--statekeeper:down", "-- statekeeper: down",
    "-- statekeeper:no-transaction", "-- Statekeeper:No-Transaction", "/* statekeeper:down */",
    "-- statekeeper:dwon", "-- statekeeper", "statekeeper", "SELECT 1;", "BEGIN;", "COMMIT;",
    "END;", "ROLLBACK;", "ROLLBACK TO SAVEPOINT a;", "START TRANSACTION;", "$$", "$fn$", "'",
    '"', "/*", "*/", "--", ";", "BEGIN ATOMIC", "CASE", "END", "E'\\'", "\n", "\r\n", "\r",
    "\t", " ", "\ufeff", "\x00", "\u2028", "\x0c", "\x85", "\u200b", "\u00a0", "\uff53",
    "\u00b2", "\u0663", "1e", "E'", "U&'", "$1",
    "CREATE TRIGGER tr AFTER INSERT ON t BEGIN SELECT 1; END;",
    "begin", "case", "atomic", " AS begin", "(begin int)", " TO begin", "t.end",
    "CREATE FUNCTION g() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1; END;",
]


@FUZZ
@given(parts=st.lists(st.sampled_from(TOKENS) | st.text(max_size=8), max_size=40),
       bom=st.booleans(), backend=st.sampled_from(BACKENDS),
       junk=st.sampled_from([b"", b"\xff", b"\xc3", b"\xed\xa0\x80", b"\xe2\x82"]))
def test_random_text_of_sql_tokens(mdir: Path, parts: list[str], bom: bool, backend: str,
                                   junk: bytes) -> None:
    data = ("\ufeff" if bom else "").encode() + "".join(parts).encode("utf-8", "surrogatepass")
    data += junk
    r = load_one(mdir, data, backend)
    if isinstance(r, Migration):
        check_accepted(data, r)


# -- files built from known pieces -------------------------------------------------------------
@dataclass(frozen=True)
class Piece:
    text: str            # one or more lines, without the final newline
    kind: str            # sql, comment, txn, down, notx, nearmiss
    lines: int = 1


def piece(text: str, kind: str) -> Piece:
    return Piece(text, kind, text.count("\n") + 1)


SQL = [
    piece("SELECT 1;", "sql"),
    piece("CREATE TABLE t (x integer);", "sql"),
    piece("INSERT INTO t VALUES ('BEGIN;'), ('it''s; COMMIT');", "sql"),
    # keywords used as names (issue 7: each once hid every later ";" from the PostgreSQL lexer)
    piece("CREATE TABLE t2 (begin int, x int);", "sql"),
    piece("CREATE VIEW v AS SELECT 1 AS begin, 2 AS case;", "sql"),
    piece("ALTER TABLE t RENAME x TO begin;", "sql"),
    piece("SELECT x FROM t ORDER BY CASE WHEN x THEN 1 ELSE 2 END;", "sql"),
    piece("SELECT t.begin, t.end FROM t;", "sql"),
    piece("SAVEPOINT a;\nROLLBACK TO SAVEPOINT a;", "sql"),
    piece("SELECT \"commit\", begin_at FROM t;", "sql"),
    piece("-- BEGIN; a comment", "comment"),
    piece("/* COMMIT;\n   END; */", "comment"),
    piece("-- run by statekeeper:down later", "comment"),
    piece("-- statekeeper_changelog is ours", "comment"),
    piece("", "comment"),
]
# SQLite has no dollar quoting and no nested comments: these hide BEGIN only from PostgreSQL.
PG_ONLY = [
    piece("CREATE FUNCTION g(a int) RETURNS int LANGUAGE sql\nBEGIN ATOMIC\n"
          "  SELECT CASE WHEN a > 0 THEN 1 ELSE CASE a WHEN 0 THEN 0 END END AS end;\n"
          "  SELECT a AS begin;\nEND;", "sql"),
    piece("CREATE FUNCTION begin(x int) RETURNS int LANGUAGE sql RETURN x;", "sql"),
    piece("CREATE FUNCTION f() RETURNS int LANGUAGE plpgsql AS $fn$\nBEGIN\n  COMMIT;\n"
          "  RETURN 1;\nEND\n$fn$;", "sql"),
    piece("DO $$ BEGIN ROLLBACK; END $$;", "sql"),
    piece("/* COMMIT;\n   /* nested */ END; */", "comment"),
]
# PostgreSQL triggers have no BEGIN ... END body: there this END; is a statement.
SQLITE_ONLY = [
    piece("CREATE TRIGGER tr AFTER INSERT ON t BEGIN\n  SELECT 1;\nEND;", "sql"),
    piece("CREATE TRIGGER tr AFTER INSERT ON t BEGIN\n"
          "  UPDATE t SET x = CASE WHEN x THEN 1 END;\n  SELECT 1 AS begin;\nEND;", "sql"),
]
# ... and there a nested-looking comment ends at its first */, so the END after it is real.
SQLITE_TXN = [piece("/* a /* b */ END;", "txn")]
TXN = [piece(t, "txn") for t in
       ["BEGIN;", "COMMIT;", "END;", "ROLLBACK;", "START TRANSACTION;", "commit work;",
        "  /* c */ Begin Transaction;", "ABORT;", "PREPARE TRANSACTION 'x';"]]
NEAR_MISSES = ["--statekeeper:down", "-- statekeeper: down", "-- statekeeper down",
               "--  statekeeper:down", " -- statekeeper:down", "-- statekeeper:dwon",
               "-- statekeeper:down now", "-- statekeeper-down", "/* statekeeper:down */",
               "-- statekeeper:notransaction", "-- statekeeper:no transaction",
               "-- statekeeper:no-transaction!", "-- statekeeper", "-- statekeeper: see docs",
               "--- statekeeper:down", "-- statekeeper:down\u00a0", "--\u200b statekeeper:down",
               "-- state\u212aeeper:down", "\u3000-- statekeeper:down"]


@st.composite
def recased(draw: st.DrawFn, s: str) -> str:
    flips = draw(st.integers(0, 2 ** len(s) - 1))
    # ASCII only: the Kelvin sign's swapcase is a plain "k", which would mend a near miss
    return "".join(c.swapcase() if flips >> i & 1 and c.isascii() else c
                   for i, c in enumerate(s))


@st.composite
def directive(draw: st.DrawFn, marker: str, kind: str) -> Piece:
    return Piece(draw(recased(marker)) + draw(st.sampled_from(["", " ", "\t", " \t "])), kind)


@st.composite
def near_miss(draw: st.DrawFn) -> Piece:
    return Piece(draw(recased(draw(st.sampled_from(NEAR_MISSES)))), "nearmiss")


def pieces_for(backend: str) -> st.SearchStrategy[Piece]:
    sql = SQL + (PG_ONLY if backend == "postgresql" else SQLITE_ONLY)
    txn = TXN + (SQLITE_TXN if backend == "sqlite" else [])
    return st.one_of(
        st.sampled_from(sql), st.sampled_from(sql), st.sampled_from(sql), st.sampled_from(txn),
        directive(DOWN_MARKER, "down"), directive(NO_TRANSACTION_MARKER, "notx"), near_miss(),
    )


def expected(pieces: list[Piece]) -> tuple[str, int] | tuple[None, tuple[bool, bool, bool]]:
    """The first error (kind, line) the loader must report, or what it must accept
    (reversible, no_transaction, has a txn statement)."""
    line = 1
    seen_down = False
    for p in pieces:
        if p.kind == "nearmiss":
            return "directive", line
        if p.kind == "down":
            if seen_down:
                return "second", line
            seen_down = True
        if p.kind == "notx" and line != 1:
            return "first", line
        line += p.lines
    up = pieces
    for i, p in enumerate(pieces):
        if p.kind == "down":
            up = pieces[:i]
            break
    if not any(p.kind in ("sql", "txn") for p in up):
        return "nosql", 0
    notx = bool(pieces) and pieces[0].kind == "notx"
    if not notx:
        line = 1
        for p in pieces:
            if p.kind == "txn":
                return "txn", line
            line += p.lines
    return None, (seen_down, notx, any(p.kind == "txn" for p in pieces))


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(backend_pieces=st.sampled_from(BACKENDS).flatmap(
           lambda b: st.tuples(st.just(b), st.lists(pieces_for(b), min_size=1, max_size=10))),
       eol=st.sampled_from(["\n", "\r\n", "\r"]), bom=st.booleans(),
       final_eol=st.booleans(), nul_at=st.none() | st.floats(0, 1))
def test_built_files_are_accepted_or_refused_exactly(
    mdir: Path, backend_pieces: tuple[str, list[Piece]], eol: str, bom: bool, final_eol: bool,
    nul_at: float | None
) -> None:
    backend, pieces = backend_pieces
    text = eol.join(p.text.replace("\n", eol) for p in pieces) + (eol if final_eol else "")
    data = (b"\xef\xbb\xbf" if bom else b"") + text.encode()
    if nul_at is not None:
        i = int(nul_at * len(data))
        data = data[:i] + b"\0" + data[i:]
    r = load_one(mdir, data, backend)
    path = mdir / "0001_fuzz.sql"
    if nul_at is not None:
        assert isinstance(r, ConfigError)
        assert str(r).startswith(f"{path}: NUL byte at byte offset {data.index(0)} (line ")
        return
    if not text.strip():
        assert isinstance(r, ConfigError) and str(r) == f"{path}: migration file is empty"
        return
    kind, detail = expected(pieces)
    if kind is None:
        assert isinstance(r, Migration), r
        check_accepted(data, r)
        reversible, notx, _has_txn = detail  # type: ignore[misc]
        assert (r.reversible, r.no_transaction) == (reversible, notx)
        return
    assert isinstance(r, ConfigError), (kind, detail, r)
    msg = str(r)
    if kind == "nosql":
        assert msg == f"{path}: the up part has no SQL"
        return
    assert msg.startswith(f"{path}: line {detail}: "), (kind, msg)
    rest = msg[len(f"{path}: line {detail}: "):]
    assert rest.startswith({
        "directive": ("malformed directive ", "unknown directive "),
        "second": (f"a second {DOWN_MARKER} line",),
        "first": (f"{NO_TRANSACTION_MARKER} must be the first line",),
        "txn": tuple(w + " starts or ends a transaction" for w in
                     ("BEGIN", "COMMIT", "END", "ROLLBACK", "START TRANSACTION", "COMMIT WORK",
                      "BEGIN TRANSACTION", "ABORT", "PREPARE TRANSACTION")),
    }[kind]), (kind, msg)


# -- transaction control hidden where it is not a statement -----------------------------------
HIDERS = [
    ("$$", "$$"), ("$body$", "$body$"), ("'", "'"), ('"', '"'), ("/* ", " */"),
    ("/* /* ", " */ */"), ("-- ", ""), ("E'\\' ", "'"),
]


@settings(max_examples=200, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(hidden=st.lists(st.tuples(st.sampled_from(HIDERS),
                                 st.sampled_from(["BEGIN;", "COMMIT;", "END;", "ROLLBACK;",
                                                  "START TRANSACTION;", "\nBEGIN;\n"])),
                       min_size=1, max_size=5),
       exposed=st.booleans())
def test_begin_in_bodies_strings_and_comments_is_not_transaction_control(
    mdir: Path, hidden: list[tuple[tuple[str, str], str]], exposed: bool
) -> None:
    stmts = []
    for (open_, close), word in hidden:
        if open_ == "-- ":
            word = word.replace("\n", " ")
        lit = f"{open_}{word}{close}"
        stmts.append(f"SELECT {lit};" if not open_.startswith(("/*", "--")) else
                     f"SELECT 1; {lit}")
    if exposed:
        stmts.append("COMMIT;")
    data = "\n".join(stmts).encode() + b"\n"
    # the PostgreSQL lexer knows $$ bodies; SQLite has none, so only PostgreSQL is asked
    r = load_one(mdir, data, "postgresql")
    if exposed:
        assert isinstance(r, ConfigError) and "COMMIT starts or ends a transaction" in str(r)
    else:
        assert isinstance(r, Migration), r


# -- keywords used as names before transaction control (issue 7) ------------------------------
KEYWORD_NAMES = ["begin", "case", "end", "atomic", "BEGIN", "Case"]
NAME_SLOTS = [  # where a keyword is a name, not a keyword: {} is the keyword
    "CREATE TABLE t ({} int);", "CREATE TABLE t (x int, {} text);", "SELECT 1 AS {};",
    "ALTER TABLE t RENAME x TO {};", "SELECT t.{} FROM t;", "SELECT x AS {} FROM t;",
    "CREATE INDEX i ON t ({});", "UPDATE t SET x = 1 WHERE t.{} > 0;",
]


@settings(max_examples=200, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(names=st.lists(st.tuples(st.sampled_from(NAME_SLOTS), st.sampled_from(KEYWORD_NAMES)),
                      min_size=1, max_size=4),
       txn=st.sampled_from(TXN), backend=st.sampled_from(BACKENDS),
       sep=st.sampled_from(["\n", " ", "\n-- c\n", " /* c */ "]))
def test_keywords_used_as_names_never_hide_transaction_control(
    mdir: Path, names: list[tuple[str, str]], txn: Piece, backend: str, sep: str
) -> None:
    head = sep.join(slot.format(word) for slot, word in names)
    data = (head + "\n" + txn.text + "\nSELECT 1;\n").encode()
    r = load_one(mdir, data, backend)
    assert isinstance(r, ConfigError), (data, r)
    line = head.count("\n") + 2
    assert f": line {line}: " in str(r) and "starts or ends a transaction" in str(r), str(r)
