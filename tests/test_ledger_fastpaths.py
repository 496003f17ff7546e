"""The ledger's hot paths (tuned for benchmarks/ledger_bench.py) give exactly what the plain
definitions give: same objects, same hashes, same verdicts, same connection state after."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

import ledger
from ledger import canonical
from ledger.chain import (
    MALFORMED,
    ZERO_HASH,
    ChainVerifier,
    KeyRecord,
    Seal,
    StoredEvent,
    chain_run,
    envelope,
    event_hash,
    seal_message,
    stored_event,
)
from ledger.store import NewEvent

AWKWARD = [
    "plain",
    'quote " and backslash \\',
    "control \x01 \n \t \x1f",
    "non-ascii é ü 日本",
    "astral \U0001f600",
    "/ slash % percent _ underscore",
]


def test_stored_event_maker_builds_the_same_frozen_object() -> None:
    args = (7, "s", 2, "t", "2024-01-01T00:00:00.000000Z", "{}", '{"a":1}', True, "a" * 64,
            "b" * 64, "c" * 64)
    fast, slow = stored_event(*args), StoredEvent(*args)
    assert fast == slow and hash(fast) == hash(slow) and repr(fast) == repr(slow)
    with pytest.raises(dataclasses.FrozenInstanceError):
        fast.seq = 8  # type: ignore[misc]
    assert dataclasses.replace(fast, seq=8).seq == 8


@pytest.mark.parametrize("stream", AWKWARD)
def test_chain_run_builds_what_event_hash_defines(stream: str) -> None:
    items = [(t, canonical.dumps({"t": t, "n": i})) for i, t in enumerate(AWKWARD * 2)]
    at, actor = "2024-02-29T23:59:59.123456Z", canonical.dumps({"user": "é \U0001f600"})
    run = chain_run(41, stream, 6, at, actor, items, "ab" * 32, "cd" * 32)
    prev, sprev = "ab" * 32, "cd" * 32
    for i, (ev, (type_, payload)) in enumerate(zip(run, items, strict=True)):
        closes = i == len(items) - 1
        h = event_hash(42 + i, stream, 7 + i, type_, at, actor, payload, closes, prev, sprev)
        assert ev == StoredEvent(42 + i, stream, 7 + i, type_, at, actor, payload, closes,
                                 prev, sprev, h)
        prev = sprev = h


def _chain(
    events: list[tuple[str, str, str]], signer: ledger.Signer
) -> list[tuple[StoredEvent, Seal]]:
    """A ledger-mode chain built with the reference envelope(); every event sealed."""
    out = []
    genesis = canonical.dumps({"format": 2, "key_id": signer.key_id, "ledger_id": "x" * 32,
                               "public_key": signer.public.b64})
    specs = [("ledger", "ledger.genesis", genesis), *events]
    prev, streams = ZERO_HASH, {}
    for seq, (stream, type_, payload) in enumerate(specs, 1):
        sseq, sprev = streams.get(stream, (0, ZERO_HASH))
        at = "2024-02-29T23:59:59.123456Z"
        h = event_hash(seq, stream, sseq + 1, type_, at, '{"u":"me"}', payload, True, prev, sprev)
        ev = StoredEvent(seq, stream, sseq + 1, type_, at, '{"u":"me"}', payload, True, prev,
                         sprev, h)
        out.append((ev, Seal(seq, signer.key_id, signer.sign(seal_message(seq, seq, h)), seq)))
        prev, streams[stream] = h, (sseq + 1, h)
    return out


def test_verifier_hashes_what_envelope_hashes(tmp_path: Path) -> None:
    signer = ledger.generate_key_file(tmp_path / "k.pem")
    events = [(s, t, canonical.dumps({"v": s + t})) for s in AWKWARD for t in AWKWARD]
    chain = _chain(events, signer)
    for ev, _ in chain:  # the reference text really is what the stored hash covers
        text = envelope(ev.seq, ev.stream, ev.stream_seq, ev.type, ev.recorded_at, ev.actor,
                        ev.payload, ev.closes, ev.prev_hash, ev.stream_prev_hash)
        assert canonical.loads(text)["stream"] == ev.stream
    v = ChainVerifier([KeyRecord(signer.key_id, signer.public.b64)])
    for ev, seal in chain:
        v.feed(ev, seal)
    assert v.finish().seq == len(chain)


@pytest.mark.parametrize("field", ["recorded_at", "prev_hash", "stream_prev_hash"])
@pytest.mark.parametrize("value", ["", "2024-01-01 00:00:00.000000Z", "A" * 64, "0" * 63])
def test_a_malformed_field_is_reported_even_where_the_fast_checks_cache(
    tmp_path: Path, field: str, value: str
) -> None:
    # The verifier skips a format check for a value equal to one that passed; a malformed
    # value must still be reported as malformed, with a hash recomputed over it.
    signer = ledger.generate_key_file(tmp_path / "k.pem")
    chain = _chain([("s", "t", "{}"), ("s", "t", "{}")], signer)
    ev, _ = chain[2]
    bad = dataclasses.replace(ev, **{field: value})
    h = event_hash(bad.seq, bad.stream, bad.stream_seq, bad.type, bad.recorded_at, bad.actor,
                   bad.payload, bad.closes, bad.prev_hash, bad.stream_prev_hash)
    bad = dataclasses.replace(bad, hash=h)
    v = ChainVerifier([KeyRecord(signer.key_id, signer.public.b64)])
    for e, s in chain[:2]:
        v.feed(e, s)
    with pytest.raises(ledger.IntegrityViolation) as err:
        sig = signer.sign(seal_message(bad.seq, bad.seq, h))
        v.feed(bad, Seal(bad.seq, signer.key_id, sig, bad.seq))
    assert err.value.reason == MALFORMED and err.value.seq == 3


def test_awkward_names_round_trip_through_each_backend(ledger_db: ledger.Ledger) -> None:
    for name in AWKWARD:
        ledger_db.append(f"s/{name}", [NewEvent(name, {"k": name}), NewEvent("t", {})],
                         expected_position=0)
    stored = list(ledger_db.read())
    assert [e.type for e in stored[1::2]] == AWKWARD
    assert ledger_db.verify().events == 1 + 2 * len(AWKWARD)
    for name in AWKWARD:
        assert [e.stream_seq for e in ledger_db.read_stream(f"s/{name}")] == [1, 2]


def test_connections_are_clean_after_a_conflict_and_a_partial_read(
    ledger_db: ledger.Ledger,
) -> None:
    ledger_db.append("s", NewEvent("a"), expected_position=0)
    with pytest.raises(ledger.StreamConflict):
        ledger_db.append("s", NewEvent("b"), expected_position=0)
    it = ledger_db.read()
    next(it)
    it.close()  # abandoned half-way: the connection goes back to the pool, nothing held
    assert ledger_db.ledger_id()
    for i in range(2, 12):  # more appends than the pool keeps connections
        ledger_db.append("s", NewEvent("c", {"i": i}), expected_position=i - 1)
    assert ledger_db.verify().events == 12
    rec = ledger_db.recorder
    assert rec.engine.pool.checkedout() == 1  # the appenders' own connection, nothing else
    with rec.engine.connect():  # another thread would get a pooled one
        assert rec.engine.pool.checkedout() == 2
    writer = rec._writer_conn.driver_connection
    if rec.dialect_name == "postgresql":  # kept in autocommit mode, outside any transaction
        assert writer.autocommit is True and writer.info.transaction_status == 0  # IDLE
        with rec.engine.connect() as conn:  # what the pool hands out is as SQLAlchemy left it
            assert conn.connection.driver_connection.autocommit is False
    else:
        assert not writer.in_transaction
    ledger_db.close()
    assert rec.engine.pool.checkedout() == 0


def test_a_failed_append_writes_nothing(ledger_db: ledger.Ledger, tmp_path: Path) -> None:
    ledger_db.append("s", NewEvent("a"))
    head = ledger_db.head()
    other = ledger.generate_key_file(tmp_path / "other.pem")
    ledger_db.signer = other  # not the ledger's active key: refused inside the transaction
    with pytest.raises(ledger.ConfigurationError, match="is not a key of this ledger"):
        ledger_db.append("s", [NewEvent("b"), NewEvent("c")])
    assert ledger_db.head() == head
    assert ledger_db.verify().events == head.seq


def test_a_batch_is_one_seal(ledger_db: ledger.Ledger) -> None:
    rows = ledger_db.append("s", [NewEvent("e", {"i": i}) for i in range(250)])
    assert [r.closes for r in rows].count(True) == 1 and rows[-1].closes
    sealed = [seal for _, seal in ledger_db.recorder.iter_events(with_seals=True) if seal]
    assert [s.seq for s in sealed] == [1, rows[-1].seq]


def test_writers_that_overtake_each_other_keep_one_chain(db_url: str, signer) -> None:  # type: ignore[no-untyped-def]
    # Each ledger object predicts the head from its own last append (PostgreSQL); the other
    # one's appends make that prediction wrong, which must cost a retry, never a fork.
    a = ledger.Ledger(db_url, signer=signer)
    b = ledger.Ledger(db_url, signer=signer)
    try:
        for i in range(6):
            a.append("shared", NewEvent("a", {"i": i}), expected_position=2 * i)
            b.append("shared", NewEvent("b", {"i": i}), expected_position=2 * i + 1)
            a.append(f"a/{i}", [NewEvent("x"), NewEvent("y")], expected_position=0)
        b.append("a/0", NewEvent("late"), expected_position=2)
        with pytest.raises(ledger.StreamConflict):  # b's guess that a/1 is new is checked
            b.append("a/1", NewEvent("z"), expected_position=0)
        with pytest.raises(ledger.StreamConflict):  # and a's guess that a/0 ends at 2
            a.append("a/0", NewEvent("z"), expected_position=2)
        a.append("a/0", NewEvent("ok"), expected_position=3)
        r = a.verify()
        assert r.events == 1 + 12 + 12 + 2
        assert [e.stream_seq for e in a.read_stream("shared")] == list(range(1, 13))
    finally:
        a.close()
        b.close()


def test_rotation_then_appends_with_the_new_key(ledger_db: ledger.Ledger, tmp_path: Path) -> None:
    ledger_db.append("s", NewEvent("a"))
    new = ledger.generate_key_file(tmp_path / "new.pem")
    ledger_db.rotate_key(new)
    for i in range(3):
        ledger_db.append("s", NewEvent("b", {"i": i}))
    r = ledger_db.verify()
    assert r.events == 6 and r.keys == [r.keys[0], new.key_id]


def test_a_nul_in_a_name_is_refused_and_nothing_is_written(ledger_db: ledger.Ledger) -> None:
    ledger_db.append("s", NewEvent("a"))
    head = ledger_db.head()
    if ledger_db.recorder.dialect_name == "postgresql":
        with pytest.raises(ledger.OperationalError, match="NUL"):
            ledger_db.append("s\x00t", NewEvent("a"))
        assert ledger_db.head() == head
    ledger_db.append("s", NewEvent("b"))
    assert ledger_db.verify().events == head.seq + 1


def test_appends_from_threads_at_once(ledger_db: ledger.Ledger) -> None:
    # One thread uses the appenders' kept connection, the others pooled ones; all serialise
    # on the database's lock.
    import threading

    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            for i in range(15):
                ledger_db.append(f"t/{n}", NewEvent("e", {"i": i}), expected_position=i)
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert ledger_db.verify().events == 1 + 4 * 15


def test_prepared_statements_that_vanish_are_prepared_again(pg_url: str, signer) -> None:  # type: ignore[no-untyped-def]
    lg = ledger.Ledger(pg_url, signer=signer)
    try:
        lg.append("s", NewEvent("a"))
        rec = lg.recorder
        conn = rec._writer_conn.driver_connection
        assert rec._prepared_on is conn
        conn.execute("DEALLOCATE ALL")  # as a pooler or DISCARD ALL would
        lg.append("s", NewEvent("b"), expected_position=1)  # the predicted-head statement
        assert rec._prepared_on is conn
        conn.execute("DEALLOCATE ALL")
        rec._predicted = None
        lg.append("s", NewEvent("c"), expected_position=2)  # the head-reading one
        for i in range(3, 8):  # they keep vanishing: after a few tries, do without
            conn.execute("DEALLOCATE ALL")
            lg.append("s", NewEvent("d"), expected_position=i)
        assert rec._prepared_on is None
        lg.append("s", [NewEvent("e"), NewEvent("f")], expected_position=8)
        assert lg.verify().events == 1 + 10
    finally:
        lg.close()
