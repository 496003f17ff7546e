"""The recorder contract, written once and run against every backend in the registry.

What any :class:`ledger.recorders.Recorder` must do, whatever database is behind it (the way
eventsourcing's ``AggregateRecorderTestCase`` is run against each of its recorders): append
under the chain-head lock and read back, head and stream positions, streaming reads, one seal
per append over its extent, the key table, the database's own append-only triggers, and its
driver's errors translated into ledger errors (chained, never a driver's exception). A new
backend registered in ``ledger.recorders.RECORDERS`` runs this class with no change here.

Backend quirks (SQLite's INSERT OR REPLACE guard, PostgreSQL's TRUNCATE and replica-role
triggers, prepared statements, REPEATABLE READ servers) stay in the ledger test module of
their subject.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import pytest

import ledger
from ledger.chain import KeyRecord, Seal, StoredEvent
from ledger.recorders import RECORDERS, database_file, normalize_url, recorder_class
from ledger.store import _make
from tests.pgcluster import free_port
from tests.test_ledger_support import (
    MUTATIONS,
    RawDB,
    refused,
    snapshot,
)

E = ledger.NewEvent

AWKWARD = [
    "plain",
    'quote " and backslash \\',
    "control \x01 \n \t \x1f",
    "non-ascii é ü 日本",
    "astral \U0001f600",
    "/ slash % percent _ underscore",
]


@pytest.fixture(params=[*sorted(RECORDERS), "sqlite-layout1"])
def backend(request: pytest.FixtureRequest) -> str:
    """Every registered backend (overrides tests/conftest.py's, which db_url builds on), and
    SQLite ledgers made before issue 15 (storage layout 1: a seal table)."""
    return str(request.param)



def test_a_sqlite_ledger_is_opened_appended_to_and_verified_without_sqlalchemy(
    tmp_path: Path,
) -> None:
    """The SQLite recorder runs on the sqlite3 module alone: importing SQLAlchemy cost a
    SQLite-only command ~150 ms."""
    code = (
        "import sys, pathlib, ledger; "
        f"s = ledger.generate_key_file(pathlib.Path({str(tmp_path / 'k.pem')!r})); "
        f"lg = ledger.Ledger('sqlite:///{tmp_path / 'l.db'}', signer=s); "
        "lg.append('s', ledger.NewEvent('t', {'a': 1})); lg.verify(); "
        "lg.stream_starts('s'); lg.streams(); lg.close(); "
        "assert 'sqlalchemy' not in sys.modules, 'sqlalchemy imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parent.parent)


@pytest.mark.parametrize("url", [
    "sqlite:///rel/p.db", "sqlite:////abs/p.db", "sqlite:///a%20b?mode=ro&x=1&x=2",
    "sqlite:///~/x.db", "postgresql://u:p%40ss@h:5432/db?sslmode=require",
    "postgres://u@[::1]:5/db", "postgresql+psycopg://u:p@h/d?password=x&options=-c%20a%3Db",
    "postgresql://u:p@ss@h/db", "postgresql:///db?host=/tmp", "postgresql://u:pa+ss w@h/db x",
    "postgresql://u:@h/db", "postgresql://u@h:/db", "postgresql://u@h:abc/db", "nonsense",
])
def test_the_ledger_reads_a_url_as_sqlalchemy_does(url: str) -> None:
    """The ledger parses URLs itself (no SQLAlchemy for a SQLite ledger); statekeeper hands
    the same text to SQLAlchemy: one meaning, one rendering, the same refusals."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    from ledger.url import as_database_url
    from ledger.url import make_url as ledger_make_url

    try:
        theirs = make_url(url)
    except (ArgumentError, ValueError):  # not a URL; a port that is not a number
        with pytest.raises(ValueError):
            ledger_make_url(url)
        return
    ours = ledger_make_url(url)
    assert ours == as_database_url(theirs)
    for hide in (True, False):
        assert ours.render_as_string(hide) == theirs.render_as_string(hide)
    assert ours.sqlalchemy() == theirs


def test_import_ledger_errors_loads_neither_sqlalchemy_nor_cryptography() -> None:
    """statekeeper's CLI imports ledger.errors to recognise the ledger's errors: for free."""
    code = (
        "import ledger.errors, sys; "
        "assert 'sqlalchemy' not in sys.modules and 'cryptography' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parent.parent)


class TestRecorderContract:
    """Run once per backend (the ``backend`` fixture above, through ``db_url``/``ledger_db``)."""

    # -- the registry ------------------------------------------------------------------------
    def test_the_registry_opens_this_backend(self, backend: str, tmp_path: Path) -> None:
        backend = backend.removesuffix("-layout1")
        url = normalize_url(
            "sqlite:///l.db" if backend == "sqlite" else "postgres://u@h/db", tmp_path
        )
        cls = recorder_class(url)
        assert cls is RECORDERS[backend] and cls.dialect_name == backend
        assert url.drivername in cls.schemes
        # The file a URL names is the registry's to say, not its callers'.
        expected = tmp_path / "l.db" if backend == "sqlite" else None
        assert database_file(url) == expected
        assert ledger.database_file(url.render_as_string(hide_password=False)) == expected

    # -- append and read ---------------------------------------------------------------------
    def test_read_by_seq_range_and_by_stream(self, ledger_db: ledger.Ledger) -> None:
        for i in range(1, 6):
            ledger_db.append("even" if i % 2 == 0 else "odd", E("n", {"i": i}))
        # seqs: 1 genesis, 2..6 the events i=1..5
        assert [e.seq for e in ledger_db.read()] == [1, 2, 3, 4, 5, 6]
        assert [e.seq for e in ledger_db.read(3, 5)] == [3, 4, 5]
        assert [e.seq for e in ledger_db.read(5)] == [5, 6]
        assert list(ledger_db.read(7)) == []
        assert [ledger.canonical.loads(e.payload)["i"] for e in ledger_db.read_stream("odd")] \
            == [1, 3, 5]
        assert [e.stream_seq for e in ledger_db.read_stream("odd")] == [1, 2, 3]
        assert [e.seq for e in ledger_db.read_stream("even")] == [3, 5]
        assert list(ledger_db.read_stream("nobody")) == []
        assert ledger_db.stream_position("odd") == 3 and ledger_db.stream_position("nobody") == 0
        rec = ledger_db.recorder
        odd = list(ledger_db.read_stream("odd"))
        assert rec.stream_head("odd", 4) == (2, odd[1].hash)  # at or before seq 4
        assert rec.stream_head("odd", 1) is None
        assert [(s, n) for s, n, _, _ in rec.streams()] == [("ledger", 1), ("odd", 3), ("even", 2)]
        assert [s for s, *_ in rec.streams("ev")] == ["even"]
        assert rec.orphan_seal() is None

    def test_reads_stream_batch_by_batch(self, ledger_db: ledger.Ledger) -> None:
        ledger_db.append("s", [E("n", {"i": i}) for i in range(25)])
        it = ledger_db.recorder.iter_events(batch=4)
        first = next(it)[0]
        assert first.seq == 1
        assert [ev.seq for ev, _ in it] == list(range(2, 27))

    def test_awkward_names_round_trip(self, ledger_db: ledger.Ledger) -> None:
        for name in AWKWARD:
            ledger_db.append(f"s/{name}", [E(name, {"k": name}), E("t", {})],
                             expected_position=0)
        stored = list(ledger_db.read())
        assert [e.type for e in stored[1::2]] == AWKWARD
        assert ledger_db.verify().events == 1 + 2 * len(AWKWARD)
        for name in AWKWARD:
            assert [e.stream_seq for e in ledger_db.read_stream(f"s/{name}")] == [1, 2]

    def test_reopening_keeps_the_chain(self, db_url: str, signer: ledger.Signer) -> None:
        with ledger.Ledger(db_url, signer=signer) as lg:
            lg.append("s", E("a"))
            ledger_id = lg.ledger_id()
        with ledger.Ledger(db_url, signer=signer, create=False) as lg:
            (ev,) = lg.append("s", E("b"))
            assert (ev.seq, ev.stream_seq) == (3, 2)
            assert lg.ledger_id() == ledger_id
            assert lg.verify().events == 3

    def test_empty_ledger_verifies_as_empty(self, ledger_db: ledger.Ledger) -> None:
        r = ledger_db.verify()
        assert (r.events, r.head) == (0, ledger.Head(0, "0" * 64))
        assert ledger_db.recorder.head() == (0, "0" * 64)
        with pytest.raises(ledger.LedgerError, match="empty"):
            ledger_db.checkpoint()

    # -- seals -------------------------------------------------------------------------------
    def test_batch_is_one_append_sealed_once(self, ledger_db: ledger.Ledger, db_url: str) -> None:
        ledger_db.append("a", E("x"))
        batch = ledger_db.append("b", [E("t1", {"i": 1}), E("t2", {"i": 2}), E("t3", {"i": 3})])
        assert [e.seq for e in batch] == [3, 4, 5]
        assert [e.stream_seq for e in batch] == [1, 2, 3]
        assert [e.closes for e in batch] == [False, False, True]
        # Each links to the one before, in the global chain and in its stream.
        assert batch[1].prev_hash == batch[0].hash and batch[2].prev_hash == batch[1].hash
        assert batch[0].stream_prev_hash == "0" * 64
        assert batch[2].stream_prev_hash == batch[1].hash
        with RawDB(db_url) as db:
            # One seal per committed append: genesis, the first append, the batch's last event.
            assert [r[0] for r in db.execute("SELECT seq FROM ledger_seals ORDER BY seq")] \
                == [1, 2, 5]
        assert ledger_db.verify().head == ledger.Head(5, batch[-1].hash)
        # A long batch too (was test_a_batch_is_one_seal in test_ledger_fastpaths.py).
        rows = ledger_db.append("s", [E("e", {"i": i}) for i in range(250)])
        assert [r.closes for r in rows].count(True) == 1 and rows[-1].closes
        sealed = [seal for _, seal in ledger_db.recorder.iter_events(with_seals=True) if seal]
        assert [s.seq for s in sealed] == [1, 2, 5, rows[-1].seq]

    def test_seals_record_their_extent(self, ledger_db: ledger.Ledger, db_url: str) -> None:
        ledger_db.append("s", [E("a"), E("b"), E("c")])
        ledger_db.append("t", E("d"))
        with RawDB(db_url) as db:
            assert db.execute("SELECT seq, first_seq FROM ledger_seals ORDER BY seq") == [
                (1, 1), (4, 2), (5, 5)
            ]
            genesis = ledger.canonical.loads(db.event(1).payload)
        assert genesis["format"] == 2

    # -- keys --------------------------------------------------------------------------------
    def test_rotation_then_appends_with_the_new_key(
        self, ledger_db: ledger.Ledger, tmp_path: Path
    ) -> None:
        ledger_db.append("s", E("a"))
        new = ledger.generate_key_file(tmp_path / "new.pem")
        ledger_db.rotate_key(new)
        for i in range(3):
            ledger_db.append("s", E("b", {"i": i}))
        r = ledger_db.verify()
        assert r.events == 6 and r.keys == [r.keys[0], new.key_id]
        assert [k.key_id for k in ledger_db.recorder.list_keys()] == r.keys

    # -- concurrency -------------------------------------------------------------------------
    def test_expected_position_conflict_raises_and_writes_nothing(
        self, ledger_db: ledger.Ledger
    ) -> None:
        ledger_db.append("run/7", E("planned"), expected_position=0)
        ledger_db.append("run/7", [E("a"), E("b")], expected_position=1)
        head = ledger_db.head()
        with pytest.raises(ledger.StreamConflict) as ei:
            ledger_db.append("run/7", [E("c"), E("d")], expected_position=1)
        assert (ei.value.stream, ei.value.expected, ei.value.actual) == ("run/7", 1, 3)
        with pytest.raises(ledger.StreamConflict):
            ledger_db.append("run/8", E("c"), expected_position=2)  # a new stream is at 0
        assert ledger_db.head() == head
        assert ledger_db.stream_position("run/7") == 3 and ledger_db.stream_position("run/8") == 0
        (ev,) = ledger_db.append("run/7", E("c"), expected_position=3)
        assert ev.stream_seq == 4
        ledger_db.verify()

    def test_writers_that_overtake_each_other_keep_one_chain(
        self, db_url: str, signer: ledger.Signer
    ) -> None:
        # Each ledger object predicts the head from its own last append (PostgreSQL); the other
        # one's appends make that prediction wrong, which must cost a retry, never a fork.
        a = ledger.Ledger(db_url, signer=signer)
        b = ledger.Ledger(db_url, signer=signer)
        try:
            for i in range(6):
                a.append("shared", E("a", {"i": i}), expected_position=2 * i)
                b.append("shared", E("b", {"i": i}), expected_position=2 * i + 1)
                a.append(f"a/{i}", [E("x"), E("y")], expected_position=0)
            b.append("a/0", E("late"), expected_position=2)
            with pytest.raises(ledger.StreamConflict):  # b's guess that a/1 is new is checked
                b.append("a/1", E("z"), expected_position=0)
            with pytest.raises(ledger.StreamConflict):  # and a's guess that a/0 ends at 2
                a.append("a/0", E("z"), expected_position=2)
            a.append("a/0", E("ok"), expected_position=3)
            r = a.verify()
            assert r.events == 1 + 12 + 12 + 2
            assert [e.stream_seq for e in a.read_stream("shared")] == list(range(1, 13))
        finally:
            a.close()
            b.close()

    def test_appends_from_threads_at_once(self, ledger_db: ledger.Ledger) -> None:
        # One thread uses the appenders' kept connection, the others pooled ones; all serialise
        # on the database's lock.
        errors: list[BaseException] = []

        def work(n: int) -> None:
            try:
                for i in range(15):
                    ledger_db.append(f"t/{n}", E("e", {"i": i}), expected_position=i)
            except BaseException as e:  # pragma: no cover - reported below
                errors.append(e)

        threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors
        assert ledger_db.verify().events == 1 + 4 * 15

    def test_connections_are_clean_after_a_conflict_and_a_partial_read(
        self, ledger_db: ledger.Ledger,
    ) -> None:
        ledger_db.append("s", E("a"), expected_position=0)
        with pytest.raises(ledger.StreamConflict):
            ledger_db.append("s", E("b"), expected_position=0)
        it = ledger_db.read()
        next(it)
        it.close()  # abandoned half-way: the connection goes back to the pool, nothing held
        assert ledger_db.ledger_id()
        for i in range(2, 12):  # more appends than the pool keeps connections
            ledger_db.append("s", E("c", {"i": i}), expected_position=i - 1)
        assert ledger_db.verify().events == 12
        rec = ledger_db.recorder
        writer = rec._dbapi(rec._writer_conn)
        if rec.dialect_name == "postgresql":
            assert rec.engine.pool.checkedout() == 1  # the appenders' own, nothing else
            with rec.engine.connect():  # another thread would get a pooled one
                assert rec.engine.pool.checkedout() == 2
            # kept in autocommit mode, outside any transaction
            assert writer.autocommit is True and writer.info.transaction_status == 0  # IDLE
            with rec.engine.connect() as conn:  # what the pool hands out is as SQLAlchemy left it
                assert conn.connection.driver_connection.autocommit is False
        else:  # the appenders' own connection and idle read ones, none in a transaction
            assert not writer.in_transaction
            assert rec._idle and not any(c.in_transaction for c in rec._idle)
        ledger_db.close()
        if rec.dialect_name == "postgresql":
            assert rec.engine.pool.checkedout() == 0
        else:
            assert rec._writer_conn is None and not rec._idle

    # -- append-only -------------------------------------------------------------------------
    def test_triggers_refuse_update_and_delete(self, ledger_db: ledger.Ledger, db_url: str) -> None:
        ledger_db.append("s", E("a"))
        ledger_db.append("s", E("b"))
        with RawDB(db_url) as db:
            before = snapshot(db)
            for sqls in MUTATIONS.values():
                for sql in sqls:
                    refused(db, sql)
            assert snapshot(db) == before
        ledger_db.verify()

    def test_rows_inserted_into_the_key_and_seal_tables_do_not_steer_the_appender(
        self, ledger_db: ledger.Ledger, db_url: str, signer: ledger.Signer, tmp_path: Path
    ) -> None:
        ledger_db.append("s", E("a"))
        mallory = ledger.generate_key_file(tmp_path / "m.pem")
        with RawDB(db_url) as db:  # a key row that would be "newest" in the key table
            db.execute("INSERT INTO ledger_keys (key_id, public_key, added_seq) VALUES (?, ?, 99)",
                       [mallory.key_id, mallory.public.b64])
        with ledger.Ledger(db_url, signer=signer) as lg:
            lg.append("s", E("b"))  # the chain, not the table, says which key is active
            head = lg.head().seq
            plant = ("INSERT INTO ledger_seals (seq, first_seq, key_id, signature) "
                     "VALUES (?, ?, ?, 'AAAA')", [head + 1, head + 1, mallory.key_id])
            with RawDB(db_url) as db:  # a seal planted where the next append's seal goes
                if db.seals_in_rows:  # SQLite layout 2: no seal is stored without its event
                    refused(db, plant[0].replace("?", str(head + 1), 2).replace(
                        "?", f"'{mallory.key_id}'"))
                    return
                db.execute(*plant)
            with pytest.raises(ledger.IntegrityViolation) as e:
                lg.append("s", E("c"))
        assert (e.value.seq, e.value.reason) == (head + 1, "bad seal")
        assert "already stored" in str(e.value)
        with pytest.raises(ledger.IntegrityViolation) as v:
            ledger_db.verify()
        assert v.value.reason in ("unknown key", "bad seal")

    # -- driver errors -----------------------------------------------------------------------
    def test_a_failed_append_writes_nothing(
        self, ledger_db: ledger.Ledger, tmp_path: Path
    ) -> None:
        ledger_db.append("s", E("a"))
        head = ledger_db.head()
        other = ledger.generate_key_file(tmp_path / "other.pem")
        ledger_db.signer = other  # not the ledger's active key: refused inside the transaction
        with pytest.raises(ledger.ConfigurationError, match="is not a key of this ledger"):
            ledger_db.append("s", [E("b"), E("c")])
        assert ledger_db.head() == head
        assert ledger_db.verify().events == head.seq

    def test_a_nul_in_a_name_is_refused_and_nothing_is_written(
        self, ledger_db: ledger.Ledger
    ) -> None:
        ledger_db.append("s", E("a"))
        head = ledger_db.head()
        if ledger_db.recorder.dialect_name == "postgresql":
            with pytest.raises(ledger.OperationalError, match="NUL"):
                ledger_db.append("s\x00t", E("a"))
            assert ledger_db.head() == head
        ledger_db.append("s", E("b"))
        assert ledger_db.verify().events == head.seq + 1

    def test_driver_errors_are_translated_and_chained(
        self, ledger_db: ledger.Ledger, db_url: str
    ) -> None:
        """A taken stream position (the database's unique constraint, should a builder race
        past the check) is a StreamConflict; anything else the driver says, an
        OperationalError on one line. Both chained to the driver's error, never one."""
        ledger_db.append("s", E("a"))
        head = ledger_db.head()

        def taken(seq: int, hash_: str, spos: int, shash: str, active: str | None, tip: object,
                  ) -> tuple[list[StoredEvent], list[Seal], list[KeyRecord]]:
            ev = _make(seq + 1, "s", spos, "t", "2030-01-01T00:00:00.000000Z", "{}", "{}",
                       True, hash_, shash)
            return [ev], [], []

        # A fresh recorder: no prediction (PostgreSQL), it reads the head.
        with ledger.Ledger(db_url) as other, pytest.raises(ledger.StreamConflict) as ei:
            other.recorder.append("s", None, taken)
        assert (ei.value.stream, ei.value.expected, ei.value.actual) == ("s", 1, 2)
        assert ei.value.__cause__ is not None
        assert not isinstance(ei.value.__cause__, ledger.LedgerError)
        assert ledger_db.head() == head

        with RawDB(db_url) as db:  # DROP is not an UPDATE or DELETE: no trigger stops it
            db.execute("DROP TABLE ledger_keys")
        with pytest.raises(ledger.OperationalError) as eo:
            ledger_db.keys()
        msg = str(eo.value)
        assert msg.startswith(f"ledger {ledger_db.display_url}: ") and "\n" not in msg
        assert "ledger_keys" in msg
        assert eo.value.__cause__ is not None
        assert not isinstance(eo.value.__cause__, ledger.LedgerError)

    def test_an_unreachable_database_is_one_typed_error(self, backend: str, tmp_path: Path) -> None:
        """Raised where the recorder connects, on one line, the password never shown."""
        if backend.startswith("sqlite"):
            junk = tmp_path / "junk.db"
            junk.write_bytes(b"not a database " * 100)
            url, reason = f"sqlite:///{junk}", "file is not a database"
        else:
            url = f"postgresql://app:pw-s3cr3t@127.0.0.1:{free_port()}/ledger"
            reason = "127.0.0.1"
        with pytest.raises(ledger.LedgerUnreachable) as ei:
            ledger.Ledger(url, create=False)
        assert isinstance(ei.value, ledger.OperationalError)
        assert reason in ei.value.reason
        assert "pw-s3cr3t" not in str(ei.value) and "\n" not in str(ei.value)
        assert ei.value.__cause__ is not None
