"""Migration files (no database): format, natural order, checksums, clear errors; and the
statement-boundary scanner used for error positions."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from statekeeper.errors import ConfigError
from statekeeper.migrations import load_migrations, natural_key
from statekeeper.sqltext import (
    is_transaction_control,
    leading_words,
    pg_scan,
    pg_statements,
    sqlite_inner_semicolons,
    sqlite_statements,
)


def write(d: Path, name: str, text: str | bytes) -> Path:
    p = d / name
    if isinstance(text, bytes):
        p.write_bytes(text)
    else:
        p.write_text(text, encoding="utf-8")
    return p


def test_natural_order_ids_and_parts(tmp_path: Path) -> None:
    for name in ["10_c.sql", "2_b.sql", "1_a.sql", "V1.10__x.sql", "V1.9__x.sql"]:
        write(tmp_path, name, "SELECT 1;\n")
    write(tmp_path, "notes.txt", "not a migration")
    write(tmp_path, ".#1_a.sql", "editor lock file")
    (tmp_path / "sub.sql").mkdir()
    ids = [m.id for m in load_migrations(tmp_path)]
    assert ids == ["1_a", "2_b", "10_c", "V1.9__x", "V1.10__x"]
    assert natural_key("a2") < natural_key("a10") < natural_key("b1")


def test_up_down_split_checksum_and_flags(tmp_path: Path) -> None:
    up = "CREATE TABLE t (x int);\n-- a comment\n"
    write(tmp_path, "1_t.sql", up + "-- statekeeper:down\nDROP TABLE t;\n")
    write(tmp_path, "2_i.sql",
          "-- statekeeper:no-transaction\nCREATE INDEX CONCURRENTLY i ON t (x);\n")
    write(tmp_path, "3_crlf.sql",
          b"\xef\xbb\xbfSELECT 1;\r\n-- statekeeper:down \t\r\nSELECT 2;\r\n")
    write(tmp_path, "4_noop_down.sql", "SELECT 1;\n-- statekeeper:down\n-- nothing to undo\n")
    m1, m2, m3, m4 = load_migrations(tmp_path)
    assert (m1.up, m1.down) == (up, "DROP TABLE t;\n")
    assert m1.checksum == hashlib.sha256(up.encode()).hexdigest()
    assert m1.reversible and not m1.no_transaction
    full = (tmp_path / "1_t.sql").read_text()
    assert full[m1.down_offset:] == m1.down
    assert m2.no_transaction and not m2.reversible and m2.down is None
    assert m2.up.startswith("-- statekeeper:no-transaction\n")
    # BOM dropped, CRLF normalised (the checksum does not depend on line endings)
    assert (m3.up, m3.down) == ("SELECT 1;\n", "SELECT 2;\n")
    assert m3.checksum == hashlib.sha256(b"SELECT 1;\n").hexdigest()
    assert m4.reversible and m4.down == "-- nothing to undo\n"


KNOWN = "known: -- statekeeper:down, -- statekeeper:no-transaction"
RESERVED = "a comment whose first word is 'statekeeper' is reserved for directives"
TXN = ("starts or ends a transaction: statekeeper runs each migration in a transaction of its "
       "own (remove it, or make the first line -- statekeeper:no-transaction)")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "migration file is empty"),
        ("  \n\n", "migration file is empty"),
        ("-- only a comment\n/* and another */\n", "the up part has no SQL"),
        ("-- a /* nested /* comment */ still */\n", "the up part has no SQL"),
        ("-- statekeeper:down\nDROP TABLE t;\n", "the up part has no SQL"),
        ("SELECT 1;\n-- statekeeper:down\nSELECT 2;\n-- statekeeper:down\n",
         "line 4: a second -- statekeeper:down line (the first is on line 2)"),
        ("SELECT 1;\n-- STATEKEEPER:DOWN\nSELECT 2;\n-- Statekeeper:Down\n",
         "line 4: a second -- statekeeper:down line (the first is on line 2)"),
        ("SELECT 1;\n-- statekeeper:no-transaction\n",
         "line 2: -- statekeeper:no-transaction must be the first line"),
        ("SELECT 1;\n-- statekeeper:down\n-- statekeeper:no-transaction\nSELECT 2;\n",
         "line 3: -- statekeeper:no-transaction must be the first line"),
        # near misses: never a comment, always refused, naming the line
        ("SELECT 1;\n-- statekeeper:dwon\nSELECT 2;\n",
         f"line 2: unknown directive '-- statekeeper:dwon' ({KNOWN}; {RESERVED})"),
        ("SELECT 1;\n-- statekeeper: see the docs\n",
         f"line 2: unknown directive '-- statekeeper: see the docs' ({KNOWN}; {RESERVED})"),
        ("SELECT 1;\n-- statekeeper\n",
         f"line 2: unknown directive '-- statekeeper' ({KNOWN}; {RESERVED})"),
        ("SELECT 1;\n--statekeeper:down\nSELECT 2;\n",
         "line 2: malformed directive '--statekeeper:down': write it exactly as "
         "'-- statekeeper:down', at the start of its line"),
        ("SELECT 1;\n-- statekeeper: down\nSELECT 2;\n",
         "line 2: malformed directive '-- statekeeper: down': write it exactly as "
         "'-- statekeeper:down', at the start of its line"),
        ("SELECT 1;\n-- statekeeper down\n",
         "line 2: malformed directive '-- statekeeper down': write it exactly as "
         "'-- statekeeper:down', at the start of its line"),
        ("SELECT 1;\n--  statekeeper:down\n",
         "line 2: malformed directive '--  statekeeper:down': write it exactly as "
         "'-- statekeeper:down', at the start of its line"),
        ("SELECT 1;\n  -- statekeeper:down\n",
         "line 2: malformed directive '  -- statekeeper:down': write it exactly as "
         "'-- statekeeper:down', at the start of its line"),
        ("SELECT 1;\n-- statekeeper-down\n",
         "line 2: malformed directive '-- statekeeper-down': write it exactly as "
         "'-- statekeeper:down', at the start of its line"),
        ("SELECT 1;\n/* statekeeper:down */\n",
         "line 2: malformed directive '/* statekeeper:down */': write it exactly as "
         "'-- statekeeper:down', at the start of its line"),
        ("SELECT 1;\n-- statekeeper:down\u00a0\n",
         "line 2: malformed directive '-- statekeeper:down\\xa0': write it exactly as "
         "'-- statekeeper:down', at the start of its line"),
        ("SELECT 1;\n--\u200b statekeeper:down\n",
         "line 2: malformed directive '--\\u200b statekeeper:down': write it exactly as "
         "'-- statekeeper:down', at the start of its line"),
        ("SELECT 1;\n-- \uff53tatekeeper:down\n",  # a fullwidth s
         "line 2: malformed directive '-- \uff53tatekeeper:down': write it exactly as "
         "'-- statekeeper:down', at the start of its line"),
        ("SELECT 1;\n-- statekeeper:no transaction\n",
         "line 2: malformed directive '-- statekeeper:no transaction': write it exactly as "
         "'-- statekeeper:no-transaction', at the start of its line"),
        ("SELECT 1;\n-- statekeeper:down please\nSELECT 2;\n",
         "line 2: malformed directive '-- statekeeper:down please': nothing may follow "
         "'-- statekeeper:down' on its line"),
        ("-- statekeeper:no-transaction -- for CONCURRENTLY\nSELECT 1;\n",
         "line 1: malformed directive '-- statekeeper:no-transaction -- for CONCURRENTLY': "
         "nothing may follow '-- statekeeper:no-transaction' on its line"),
        # transaction control, refused when the files are loaded
        ("BEGIN;\nCREATE TABLE t (x integer);\nCOMMIT;\n", f"line 1: BEGIN {TXN}"),
        ("CREATE TABLE t (x integer);\n  /* c */ commit work;\n", f"line 2: COMMIT WORK {TXN}"),
        ("SELECT 1;\nSTART TRANSACTION ISOLATION LEVEL SERIALIZABLE;\n",
         f"line 2: START TRANSACTION {TXN}"),
        ("SELECT 1;\nEND", f"line 2: END {TXN}"),
        ("SELECT 1;\nabort;\n", f"line 2: ABORT {TXN}"),
        ("SELECT 1;\n-- statekeeper:down\nSELECT 2;\nROLLBACK;\n", f"line 4: ROLLBACK {TXN}"),
        ("SELECT 1;\nPREPARE TRANSACTION 'x';\n", f"line 2: PREPARE TRANSACTION {TXN}"),
    ],
)
def test_bad_files_name_the_file(tmp_path: Path, text: str, message: str) -> None:
    p = write(tmp_path, "0001_bad.sql", text)
    for backend in ("postgresql", "sqlite"):
        with pytest.raises(ConfigError) as e:
            load_migrations(tmp_path, backend)
        assert str(e.value) == f"{p}: {message}"


@pytest.mark.parametrize(
    ("text", "up", "down", "no_transaction"),
    [
        ("SELECT 1;\n-- Statekeeper:Down\nSELECT 2;\n", "SELECT 1;\n", "SELECT 2;\n", False),
        ("SELECT 1;\n-- STATEKEEPER:DOWN\t \nSELECT 2;\n", "SELECT 1;\n", "SELECT 2;\n", False),
        ("-- Statekeeper:No-Transaction\nSELECT 1;\n",
         "-- Statekeeper:No-Transaction\nSELECT 1;\n", None, True),
        ("SELECT 1;\n-- statekeeper:down", "SELECT 1;\n", "", False),
        # mentioning statekeeper is fine unless it is the comment's first word
        ("-- run by statekeeper:down below\nSELECT 1; -- statekeeper:down\n"
         "-- statekeeper_changelog is ours\n",
         "-- run by statekeeper:down below\nSELECT 1; -- statekeeper:down\n"
         "-- statekeeper_changelog is ours\n", None, False),
        # only \n ends a line: a form feed or U+2028 does not start a directive line
        ("SELECT 1;\f-- statekeeper:down\nSELECT 2;\u2028-- statekeeper:down\n",
         "SELECT 1;\f-- statekeeper:down\nSELECT 2;\u2028-- statekeeper:down\n", None, False),
        # its own transaction control is allowed where statekeeper opens none
        ("-- statekeeper:no-transaction\nBEGIN;\nSELECT 1;\nCOMMIT;\n-- statekeeper:down\n"
         "END;\n",
         "-- statekeeper:no-transaction\nBEGIN;\nSELECT 1;\nCOMMIT;\n", "END;\n", True),
        ("SAVEPOINT a;\nSELECT 1;\nROLLBACK TO SAVEPOINT a;\nRELEASE SAVEPOINT a;\n",
         "SAVEPOINT a;\nSELECT 1;\nROLLBACK TO SAVEPOINT a;\nRELEASE SAVEPOINT a;\n",
         None, False),
        # Python calls "²" and "٣" digits; SQL does not (the lexer once asserted on them)
        ("SELECT ² + ٣ AS started;\n", "SELECT ² + ٣ AS started;\n", None, False),
        ("CREATE TABLE begin_end (commit_at int);\nSELECT 'BEGIN;\nCOMMIT;';\n"
         "-- BEGIN;\n/* COMMIT; */\n",
         "CREATE TABLE begin_end (commit_at int);\nSELECT 'BEGIN;\nCOMMIT;';\n"
         "-- BEGIN;\n/* COMMIT; */\n", None, False),
    ],
)
def test_directives_match_in_any_case_and_only_exactly(
    tmp_path: Path, text: str, up: str, down: str | None, no_transaction: bool
) -> None:
    write(tmp_path, "1_x.sql", text)
    (m,) = load_migrations(tmp_path)
    assert (m.up, m.down, m.no_transaction) == (up, down, no_transaction)
    assert m.checksum == hashlib.sha256(up.encode()).hexdigest()
    if down is not None:
        assert text[m.down_offset:] == down


PLPGSQL = """CREATE FUNCTION f() RETURNS trigger LANGUAGE plpgsql AS $fn$
BEGIN
  BEGIN
    INSERT INTO log VALUES ('BEGIN; COMMIT;');
  EXCEPTION WHEN others THEN
    ROLLBACK; -- not at statement level: inside the body
  END;
  COMMIT;
  RETURN NEW;
END
$fn$;
DO $$ BEGIN PERFORM 1; END $$;
CREATE PROCEDURE p() LANGUAGE plpgsql AS $$
BEGIN
  COMMIT;
END $$;
CREATE FUNCTION g() RETURNS int LANGUAGE sql
BEGIN ATOMIC
  SELECT CASE WHEN true THEN 1 ELSE 0 END;
END;
SELECT E'it\\'s; BEGIN', "COMMIT" FROM t;
"""

SQLITE_TRIGGER = """CREATE TABLE t (x);
CREATE TRIGGER tr AFTER INSERT ON t BEGIN
  INSERT INTO t VALUES (CASE WHEN 1 THEN 'BEGIN;' ELSE 'COMMIT;' END);
  DELETE FROM t WHERE x = ';END;';
END;
-- statekeeper:down
DROP TRIGGER tr;
DROP TABLE t;
"""


@pytest.mark.parametrize(("backend", "text"),
                         [("postgresql", PLPGSQL), ("sqlite", SQLITE_TRIGGER)])
def test_begin_inside_bodies_strings_and_comments_is_not_transaction_control(
    tmp_path: Path, backend: str, text: str
) -> None:
    write(tmp_path, "1_f.sql", text)
    (m,) = load_migrations(tmp_path, backend)
    assert m.up + ("-- statekeeper:down\n" + m.down if m.down is not None else "") == text


def test_a_sqlite_trigger_body_is_no_block_to_postgresql(tmp_path: Path) -> None:
    # PostgreSQL triggers have no BEGIN ... END body: there its END; is a statement (COMMIT).
    # Nothing is lost by refusing it: PostgreSQL parses the whole text before running any of
    # it, and this text is a syntax error there.
    p = write(tmp_path, "1_f.sql", SQLITE_TRIGGER)
    with pytest.raises(ConfigError) as e:
        load_migrations(tmp_path, "postgresql")
    assert str(e.value) == f"{p}: line 5: END {TXN}"


def test_transaction_control_after_a_body_is_still_found(tmp_path: Path) -> None:
    p = write(tmp_path, "1_f.sql", PLPGSQL + "COMMIT;\n")
    with pytest.raises(ConfigError) as e:
        load_migrations(tmp_path, "postgresql")
    assert str(e.value) == f"{p}: line {PLPGSQL.count(chr(10)) + 1}: COMMIT {TXN}"
    p.write_text(SQLITE_TRIGGER.replace("DROP TABLE t;", "DROP TABLE t;\nEND TRANSACTION;"))
    with pytest.raises(ConfigError) as e:
        load_migrations(tmp_path, "sqlite")
    assert str(e.value) == f"{p}: line 9: END TRANSACTION {TXN}"


def test_nul_bytes_and_invalid_utf8_are_refused_with_their_byte_offset(tmp_path: Path) -> None:
    # PostgreSQL would never see what follows the NUL (libpq sends a C string), yet the
    # migration would be recorded as applied.
    p = write(tmp_path, "1_nul.sql", b"CREATE TABLE a (x int);\r\n\x00CREATE TABLE b (x int);\n")
    with pytest.raises(ConfigError) as e:
        load_migrations(tmp_path)
    assert str(e.value) == f"{p}: NUL byte at byte offset 25 (line 2); a migration must be text"
    p.write_bytes(b"\xef\xbb\xbfSELECT 1;\n-- statekeeper:down\nSELECT 2; -- \x00\n")
    with pytest.raises(ConfigError) as e:
        load_migrations(tmp_path)
    assert str(e.value) == f"{p}: NUL byte at byte offset 46 (line 3); a migration must be text"
    p.unlink()
    p = write(tmp_path, "1_latin1.sql", b"SELECT 1;\rSELECT '\xe9';\n")
    with pytest.raises(ConfigError) as e:
        load_migrations(tmp_path)
    assert str(e.value) == (f"{p}: not UTF-8 text: invalid byte at byte offset 18 (line 2)")


def test_unreadable_files_and_directories(tmp_path: Path) -> None:
    (tmp_path / "2_link.sql").symlink_to(tmp_path / "nowhere.sql")
    assert load_migrations(tmp_path) == []  # a dangling link is not a file
    missing = tmp_path / "nope"
    with pytest.raises(ConfigError, match=f"^migrations directory {missing} does not exist$"):
        load_migrations(missing)
    f = write(tmp_path, "file", "x")
    with pytest.raises(ConfigError, match=f"^migrations directory {f} is not a directory$"):
        load_migrations(f)


# -- statement boundaries ---------------------------------------------------------------------
PG_TEXT = """-- header; with a semicolon
CREATE FUNCTION f() RETURNS int AS $body$
BEGIN
  RETURN 1; -- inside the body
END
$body$ LANGUAGE plpgsql;
/* block /* nested; */ comment; */
INSERT INTO t VALUES ('it''s; fine', E'back\\\\slash\\'; quote', "we;ird");
CREATE FUNCTION g(a int) RETURNS int LANGUAGE sql
BEGIN ATOMIC
  SELECT CASE WHEN a > 0 THEN 1 ELSE 0 END;
  SELECT a;
END;
;;
SELECT $$a;b$$, $1x, (SELECT 1; ), x$y FROM t
"""


def test_pg_statements_follow_psql_lexing() -> None:
    spans = pg_statements(PG_TEXT)
    firsts = [PG_TEXT[s:e].split(None, 2)[:2] for s, e in spans]
    assert firsts == [["CREATE", "FUNCTION"], ["INSERT", "INTO"], ["CREATE", "FUNCTION"],
                      ["SELECT", "$$a;b$$,"]]
    assert PG_TEXT[spans[0][0]:].startswith("CREATE FUNCTION f()")
    assert PG_TEXT[:spans[0][1]].endswith("LANGUAGE plpgsql;")
    assert PG_TEXT[:spans[2][1]].endswith("SELECT a;\nEND;")
    assert spans[-1][1] == len(PG_TEXT)


def test_sqlite_statements_use_sqlites_tokenizer() -> None:
    text = ("CREATE TABLE t (x);\nCREATE TRIGGER tr AFTER INSERT ON t BEGIN\n"
            "  INSERT INTO t2 VALUES (';');\n  SELECT 1;\nEND;\n-- trailing comment\n")
    spans = sqlite_statements(text)
    chunks = [text[s:e] for s, e in spans]
    assert chunks[0] == "CREATE TABLE t (x);"
    assert chunks[1].strip().startswith("CREATE TRIGGER") and chunks[1].endswith("END;")
    assert chunks[2].strip() == "-- trailing comment"


def test_transaction_control_words() -> None:
    text = "  -- c\n  commit work;"
    assert leading_words(text, 0) == ["commit", "work"]
    assert is_transaction_control(["begin"]) and is_transaction_control(["end"])
    assert is_transaction_control(["rollback"]) and not is_transaction_control(["rollback", "to"])
    assert is_transaction_control(["start", "transaction"])
    assert not is_transaction_control(["savepoint", "a"]) and not is_transaction_control([])


# -- keywords used as names (issue 7) ---------------------------------------------------------
# Before: any BEGIN or CASE after a statement's first word opened a block, so every later ";"
# was inside it and a COMMIT after `CREATE TABLE t2 (begin int);` was never seen: the file
# loaded, and `migrate up` committed t2 half-way with no changelog row.
REPRO = ("CREATE TABLE t2 (begin int);\nCOMMIT;\nCREATE TABLE t3 (x int);\n"
         "SELECT no_such_col FROM t3;\n")
BEGIN_ATOMIC = """CREATE OR REPLACE FUNCTION g(a int) RETURNS int LANGUAGE sql
BEGIN ATOMIC
  SELECT CASE WHEN a > 0 THEN 1 ELSE CASE a WHEN 0 THEN 0 END END AS end;
  SELECT t.begin, t.end FROM t WHERE (CASE WHEN a = 1 THEN true END);
  SELECT a AS case;
END;
"""


@pytest.mark.parametrize(("backend", "text", "line", "words"), [
    ("postgresql", REPRO, 2, "COMMIT"),
    ("sqlite", REPRO, 2, "COMMIT"),
    ("postgresql", "CREATE TABLE t (x int, begin int);\nCOMMIT;\n", 2, "COMMIT"),
    ("postgresql", "CREATE VIEW v AS SELECT 1 AS begin;\nROLLBACK;\n", 2, "ROLLBACK"),
    ("postgresql", "ALTER TABLE t RENAME x TO begin;\nABORT;\n", 2, "ABORT"),
    ("postgresql", "SELECT 1 AS case;\nEND;\n", 2, "END"),
    ("postgresql", "SELECT x FROM t ORDER BY CASE WHEN x THEN 1 END;\nCOMMIT;\n", 2, "COMMIT"),
    ("postgresql", "CREATE FUNCTION begin(x int) RETURNS int LANGUAGE sql RETURN x;\n"
                   "START TRANSACTION;\n", 2, "START TRANSACTION"),
    ("postgresql", "SELECT begin atomic FROM t;\nCOMMIT;\n", 2, "COMMIT"),
    ("sqlite", "CREATE TABLE q (x, begin, \"case\");\nCOMMIT;\n", 2, "COMMIT"),
    ("sqlite", "SELECT 1 AS begin, CASE WHEN 1 THEN 2 END AS x;\nEND;\n", 2, "END"),
    # a real body, then transaction control: the body's END closed it
    ("postgresql", BEGIN_ATOMIC + "COMMIT;\n", 7, "COMMIT"),
    ("sqlite", SQLITE_TRIGGER.split("-- statekeeper:down")[0] + "COMMIT;\n", 6, "COMMIT"),
])
def test_keywords_used_as_names_do_not_hide_transaction_control(
    tmp_path: Path, backend: str, text: str, line: int, words: str
) -> None:
    p = write(tmp_path, "002_b.sql", text)
    with pytest.raises(ConfigError) as e:
        load_migrations(tmp_path, backend)
    assert str(e.value) == f"{p}: line {line}: {words} {TXN}"


@pytest.mark.parametrize(("backend", "text", "line", "words"), [
    # a depth that never closes: the backstop still finds the COMMIT after a ";"
    ("postgresql", "CREATE FUNCTION g() RETURNS int LANGUAGE sql BEGIN ATOMIC\n"
                   "  SELECT CASE WHEN true THEN 1;\n  COMMIT;\n  SELECT 1;\n", 3, "COMMIT"),
    ("postgresql", "CREATE FUNCTION g() RETURNS int LANGUAGE sql BEGIN ATOMIC\n  SELECT 1;\n"
                   "  PREPARE TRANSACTION 'x';\nEND;\n", 3, "PREPARE TRANSACTION"),
    ("postgresql", "CREATE FUNCTION g() RETURNS int LANGUAGE sql BEGIN ATOMIC\n  SELECT 1;\n"
                   "  begin;\nEND;\n", 3, "BEGIN"),
    ("postgresql", "CREATE RULE r AS ON INSERT TO t DO ALSO (\n  INSERT INTO u VALUES (1);\n"
                   "  ROLLBACK);\n", 3, "ROLLBACK"),
    ("sqlite", "CREATE TRIGGER tr AFTER INSERT ON t BEGIN\n  SELECT 1;\n  COMMIT;\nEND;\n",
     3, "COMMIT"),
    ("sqlite", "CREATE TRIGGER tr AFTER INSERT ON t BEGIN\n  SELECT 1;\n  BEGIN;\nEND;\n",
     3, "BEGIN"),
])
def test_transaction_control_inside_a_block_is_refused(
    tmp_path: Path, backend: str, text: str, line: int, words: str
) -> None:
    p = write(tmp_path, "1_f.sql", text)
    with pytest.raises(ConfigError) as e:
        load_migrations(tmp_path, backend)
    assert str(e.value) == f"{p}: line {line}: {words} {TXN}"


def test_real_bodies_and_names_that_are_keywords_are_accepted(tmp_path: Path) -> None:
    text = ("CREATE TABLE t (x int, begin int, \"end\" int);\n"
            "ALTER TABLE t RENAME x TO begin_at;\nSELECT 1 AS begin, 2 AS case;\n"
            + BEGIN_ATOMIC + "SELECT 1;\n")
    write(tmp_path, "1_f.sql", text)
    (m,) = load_migrations(tmp_path, "postgresql")
    assert m.up == text
    spans = pg_statements(text)
    assert [text[s:e].split(None, 3)[:3] for s, e in spans][3:] == [
        ["CREATE", "OR", "REPLACE"], ["SELECT", "1;"]]
    assert text[:spans[3][1]].endswith("AS case;\nEND;")
    # the body's ";" are inside it, and END after the last one closes it
    _spans, inner = pg_scan(text)
    assert [text[i:].split(None, 1)[0] for i, _ in inner] == ["SELECT", "SELECT", "END;"]
    assert all(in_body for _, in_body in inner)
    trigger = SQLITE_TRIGGER.split("-- statekeeper:down")[0]
    assert [trigger[i:].split(None, 1)[0] for i in sqlite_inner_semicolons(trigger)] == [
        "DELETE", "END;"]
