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
    pg_statements,
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
          b"\xef\xbb\xbfSELECT 1;\r\n--  statekeeper:down  \r\nSELECT 2;\r\n")
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


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "migration file is empty"),
        ("  \n\n", "migration file is empty"),
        ("-- only a comment\n/* and another */\n", "the up part has no SQL"),
        ("-- statekeeper:down\nDROP TABLE t;\n", "the up part has no SQL"),
        ("SELECT 1;\n-- statekeeper:down\nSELECT 2;\n-- statekeeper:down\n",
         "line 4: a second -- statekeeper:down line (the first is on line 2)"),
        ("SELECT 1;\n-- statekeeper:no-transaction\n",
         "line 2: -- statekeeper:no-transaction must be the first line"),
        ("SELECT 1;\n-- statekeeper:dwon\nSELECT 2;\n",
         "line 2: unknown directive '-- statekeeper:dwon' "
         "(known: -- statekeeper:down, -- statekeeper:no-transaction)"),
    ],
)
def test_bad_files_name_the_file(tmp_path: Path, text: str, message: str) -> None:
    p = write(tmp_path, "0001_bad.sql", text)
    with pytest.raises(ConfigError) as e:
        load_migrations(tmp_path)
    assert str(e.value) == f"{p}: {message}"


def test_unreadable_files_and_directories(tmp_path: Path) -> None:
    p = write(tmp_path, "1_latin1.sql", b"SELECT '\xe9';\n")
    with pytest.raises(ConfigError) as e:
        load_migrations(tmp_path)
    assert str(e.value) == f"{p}: not UTF-8 text (byte 8)"
    p.unlink()
    (tmp_path / "2_link.sql").symlink_to(tmp_path / "nowhere.sql")
    assert load_migrations(tmp_path) == []  # a dangling link is not a file
    missing = tmp_path / "nope"
    with pytest.raises(ConfigError, match=f"^migrations directory {missing} does not exist$"):
        load_migrations(missing)
    f = write(tmp_path, "file", "x")
    with pytest.raises(ConfigError, match=f"^migrations directory {f} is not a directory$"):
        load_migrations(f)


def test_a_comment_mentioning_statekeeper_is_not_a_directive(tmp_path: Path) -> None:
    write(tmp_path, "1_x.sql", "-- statekeeper: see the docs\nSELECT 1;\n")
    (m,) = load_migrations(tmp_path)
    assert not m.reversible and not m.no_transaction


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
