"""Migrations run like ``psql -1 -f``: statement by statement in one transaction, so the first
failing statement is the one reported, with file:line:column, the line and a caret, the
server's DETAIL/HINT/CONTEXT and the NOTICEs raised before it; a no-transaction file runs each
statement on its own in autocommit. Both backends where it applies."""

from __future__ import annotations

from pathlib import Path

import pytest

from statekeeper.errors import ConfigError, MigrationError, ValidationError
from statekeeper.migrations import Migrator
from statekeeper.migrations.fileformat import parse_migration
from statekeeper.targets import Target

from .test_migrations import mdir, mig, tables, target, write

__all__ = ["mdir", "mig", "target"]  # fixtures, shared with test_migrations.py



def failure(mig: Migrator) -> MigrationError:
    with pytest.raises(MigrationError) as e:
        mig.up()
    return e.value


def test_the_first_failing_statement_is_reported_not_a_later_syntax_error(
    mig: Migrator, mdir: Path, target: Target
) -> None:
    p = write(mdir, "1_a.sql", "CREATE TABLE a (x integer);\n"
                               "INSERT INTO missing VALUES (1);\n"
                               "SELEC this is not SQL;\n")
    err = failure(mig)
    if target.backend == "postgresql":  # the server's cursor: at "missing"
        assert err.server_message == 'relation "missing" does not exist'
        assert (err.line, err.column) == (2, 13)
        assert err.display_lines()[:2] == ["2 | INSERT INTO missing VALUES (1);",
                                           "  |             ^"]
    else:  # SQLite gives no cursor: the statement's start
        assert err.server_message == "no such table: missing"
        assert (err.line, err.column) == (2, 1)
    assert str(err) == (f"migration 1_a failed at {p}:{err.line}:{err.column}: "
                        f"{err.server_message}")
    assert "a" not in tables(target)  # one transaction: the first statement rolled back too
    assert not mig.is_applied("1_a")


def test_position_inside_a_statement_of_several_lines(
    mig: Migrator, mdir: Path, target: Target
) -> None:
    write(mdir, "1_a.sql", "-- a comment line\nCREATE TABLE a (x integer);\n"
                           "SELECT x,\n\tnope\n  FROM a;\n")
    err = failure(mig)
    if target.backend == "postgresql":
        assert (err.line, err.column) == (4, 2)
        assert err.display_lines()[:2] == ["4 | \tnope".replace("\t", " "), "  |  ^"]
    else:
        assert (err.line, err.column) == (3, 1)
        assert err.source_line == "SELECT x,"


def test_a_failing_down_part_names_its_line_in_the_file(
    mig: Migrator, mdir: Path, target: Target
) -> None:
    write(mdir, "1_a.sql", "CREATE TABLE a (x integer);\n-- statekeeper:down\n"
                           "DROP TABLE a;\nDROP TABLE never_there;\n")
    mig.up()
    with pytest.raises(MigrationError) as e:
        mig.revert("1_a")
    err = e.value
    assert err.line == 4 and err.source_line == "DROP TABLE never_there;"
    assert "a" in tables(target)  # rolled back with the failure


def test_no_transaction_file_runs_each_statement_in_autocommit(
    mig: Migrator, mdir: Path, target: Target
) -> None:
    write(mdir, "1_t.sql", "CREATE TABLE t (x integer);\n")
    concurrently = "CONCURRENTLY " if target.backend == "postgresql" else ""
    write(mdir, "2_idx.sql", "-- statekeeper:no-transaction\n"
                             "VACUUM;\n"
                             f"CREATE INDEX {concurrently}t_x ON t (x);\n"
                             "INSERT INTO t VALUES (1);\n")
    assert [r.id for r in mig.up()] == ["1_t", "2_idx"]


def test_no_transaction_failure_keeps_the_statements_before_it(
    mig: Migrator, mdir: Path, target: Target
) -> None:
    write(mdir, "1_t.sql", "-- statekeeper:no-transaction\nCREATE TABLE t (x integer);\n"
                           "VACUUM;\nCREATE TABLE t (x integer);\n")
    err = failure(mig)
    assert err.line == 4
    assert "t" in tables(target) and not mig.is_applied("1_t")


@pytest.mark.parametrize("backend", ["postgresql"])  # SQLite reports a message only
def test_server_detail_hint_and_context_are_kept(
    backend: str, mig: Migrator, mdir: Path
) -> None:
    write(mdir, "1_a.sql", "CREATE TABLE a (x integer);\n"
                           "DO $$ BEGIN RAISE EXCEPTION 'boom' USING DETAIL = 'the detail',\n"
                           "  HINT = 'the hint'; END $$;\n")
    err = failure(mig)
    assert (err.server_message, err.detail, err.hint) == ("boom", "the detail", "the hint")
    assert err.context and "PL/pgSQL" in err.context
    shown = err.display_lines()
    assert shown[0] == "2 | DO $$ BEGIN RAISE EXCEPTION 'boom' USING DETAIL = 'the detail',"
    assert "DETAIL:  the detail" in shown and "HINT:  the hint" in shown
    assert any(x.startswith("CONTEXT:  PL/pgSQL") for x in shown)


@pytest.mark.parametrize("backend", ["postgresql"])  # SQLite raises no notices
def test_notices_before_the_failure_are_shown(
    backend: str, mig: Migrator, mdir: Path
) -> None:
    write(mdir, "1_a.sql", "CREATE TABLE a (x integer);\n")
    mig.up()
    # "already exists, skipping": the real cause of the failure two lines below
    write(mdir, "2_a.sql", "CREATE TABLE IF NOT EXISTS a (x integer, y text);\n"
                           "SET client_min_messages = warning;\n"
                           "DO $$ BEGIN RAISE NOTICE 'filtered out'; RAISE WARNING 'kept'; "
                           "END $$;\n"
                           "INSERT INTO a (x, y) VALUES (1, 'one');\n")
    err = failure(mig)
    assert err.notices == ('NOTICE:  relation "a" already exists, skipping (line 1)',
                           "WARNING:  kept (line 3)")
    assert err.line == 4
    assert err.display_lines()[-2:] == list(err.notices)


def test_locate_counts_lines_of_the_up_and_the_down_part(tmp_path: Path) -> None:
    text = "SELECT 1;\n  SELECT 2;\n-- statekeeper:down\nSELECT 3;\n\tSELECT 4;"
    m = parse_migration(tmp_path / "1_x.sql", text, "postgresql")
    for needle, line in (("SELECT 1", 1), ("SELECT 2", 2), ("SELECT 3", 4), ("SELECT 4", 5)):
        pos = text.index(needle) + 1
        assert m.locate(pos)[0] == line
        assert m.locate(pos)[2].strip() == needle + ";"
        assert m.locate(pos)[1] == pos - text.rfind("\n", 0, pos - 1) - 1
    assert m.locate(len(text) + 10)[0] == 5  # clamped


# -- what plan and migrate validate report about the directory --------------------------------
def test_two_files_with_the_same_version_are_refused_unless_both_are_applied(
    mig: Migrator, mdir: Path
) -> None:
    write(mdir, "0001_users.sql", "CREATE TABLE users (id integer);\n")
    mig.up()
    a = write(mdir, "0002_orders.sql", "CREATE TABLE orders (id integer);\n")
    b = write(mdir, "2_invoices.sql", "CREATE TABLE invoices (id integer);\n")
    msg = (f"migrations 2_invoices and 0002_orders have the same version 2 ({b}, {a}); "
           "give 0002_orders a version of its own")  # in file order; both pending
    for call in (mig.validate, mig.plan_up, mig.up):
        with pytest.raises(ValidationError) as e:
            call()
        assert str(e.value) == msg
    b.unlink()
    mig.up()
    write(mdir, "V1.10__x.sql", "SELECT 1;\n")
    write(mdir, "V1.9__x.sql", "SELECT 1;\n")
    write(mdir, "v1.10__y.sql", "SELECT 1;\n")
    with pytest.raises(ValidationError, match=r"have the same version 1\.10"):
        mig.validate()


@pytest.mark.parametrize("name", ["0004_x.SQL", "0004_x.sql.orig", "0004_x.psql", "0004_x",
                                  "notes.sql.txt", "sub"])
def test_a_file_that_looks_like_a_migration_but_is_not_is_refused(
    mig: Migrator, mdir: Path, name: str
) -> None:
    write(mdir, "0001_users.sql", "CREATE TABLE users (id integer);\n")
    write(mdir, "README.md", "how we write migrations\n")  # not a look-alike: left alone
    write(mdir, ".hidden.sql", "SELECT 1;\n")  # hidden: ignored, as before
    assert [m.id for m in mig.migrations()] == ["0001_users"]
    if name == "sub":
        (mdir / "sub").mkdir()
        write(mdir / "sub", "0002_y.sql", "SELECT 1;\n")
    else:
        write(mdir, name, "SELECT 1;\n")
    for call in (mig.validate, mig.status, mig.plan_up):
        with pytest.raises(ConfigError, match=rf"^{mdir / name} is not a migration but looks "
                           r"like one: only \*\.sql files directly in"):
            call()
