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
