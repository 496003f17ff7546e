"""Property-based tests of verification (issue 7): random ledgers, then random insertions,
deletions, reorders, duplications, edits and forged unsealed events anywhere.

``verify`` must accept exactly the chains the key sealed (the ledger as written, or a prefix
of it that ends where an append ended), and otherwise name the first bad seq: never a genuine
event before the damage. The chains are built with the appender's own functions
(:func:`ledger.chain.chain_run`, the store's seal) and fed to the one verifier that SQLite,
PostgreSQL and export files share; a smaller run tampers with real SQLite files too.
"""

from __future__ import annotations

import base64
import dataclasses
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ledger
from ledger import canonical
from ledger.chain import (
    GENESIS_TYPE,
    LEDGER_STREAM,
    ZERO_HASH,
    ChainVerifier,
    KeyRecord,
    Seal,
    StoredEvent,
    chain_run,
    event_hash,
    seal_message,
)
from ledger.store import _make, _seal
from tests.test_ledger_support import RawDB, forge

SIGNER = ledger.Signer(Ed25519PrivateKey.generate())
MALLORY = ledger.Signer(Ed25519PrivateKey.generate())
ACTOR = canonical.dumps({"user": "op"})
AT = "2026-12-02T10:00:00.000000Z"
Chain = list[tuple[StoredEvent, Seal | None]]

appends = st.lists(
    st.tuples(st.sampled_from(["upgrade/a", "upgrade/b", "ops/c"]), st.integers(1, 3)),
    min_size=1, max_size=6,
)


def build(spec: list[tuple[str, int]]) -> Chain:
    key = SIGNER.key_id
    gp = canonical.dumps({"format": 2, "key_id": key, "ledger_id": "f" * 32,
                          "public_key": SIGNER.public.b64})
    g = _make(1, LEDGER_STREAM, 1, GENESIS_TYPE, AT, ACTOR, gp, True, ZERO_HASH, ZERO_HASH)
    out: Chain = [(g, _seal(SIGNER, key, 1, g))]
    streams: dict[str, tuple[int, str]] = {}
    n = 0
    for stream, count in spec:
        spos, shash = streams.get(stream, (0, ZERO_HASH))
        items = []
        for _ in range(count):
            n += 1
            items.append(("t", canonical.dumps({"n": n})))
        last = out[-1][0]
        rows = chain_run(last.seq, stream, spos, AT, ACTOR, items, last.hash, shash)
        seal = _seal(SIGNER, key, rows[0].seq, rows[-1])
        out += [(r, seal if r is rows[-1] else None) for r in rows]
        streams[stream] = (rows[-1].stream_seq, rows[-1].hash)
    return out


def verify(chain: Chain) -> ledger.IntegrityViolation | None:
    v = ChainVerifier([KeyRecord(SIGNER.key_id, SIGNER.public.b64),
                       KeyRecord(MALLORY.key_id, MALLORY.public.b64)])
    v.keys_seen.append(MALLORY.key_id)  # listed beside the ledger's: the attacker's best case
    try:
        for ev, seal in chain:
            v.feed(ev, seal)
        v.finish()
    except ledger.IntegrityViolation as e:
        return e
    return None


def _forged(chain: Chain, i: int, closes: bool, stream: str) -> StoredEvent:
    """An event hashed and linked as the appender would, at position ``i``, without a seal."""
    prev = chain[i - 1][0]
    sprev = next((ev for ev, _ in reversed(chain[:i]) if ev.stream == stream), None)
    return forge(prev.seq + 1, stream, (sprev.stream_seq if sprev else 0) + 1, prev.hash,
                 sprev.hash if sprev else ZERO_HASH, closes=closes, actor=ACTOR)


def _shift(chain: Chain, by: int) -> Chain:
    return [(dataclasses.replace(ev, seq=ev.seq + by),
             None if s is None else dataclasses.replace(s, seq=s.seq + by)) for ev, s in chain]


MUTATIONS = ["delete", "swap", "duplicate", "edit", "edit-rehash", "drop-seal", "mallory-seal",
             "move-extent", "forge", "forge-closing", "forge-renumber", "truncate"]


def mutate(chain: Chain, kind: str, data: st.DataObject) -> Chain:
    n = len(chain)
    i = data.draw(st.integers(1, n - 1) if n > 1 else st.just(1), label="i")
    c = list(chain)
    if kind == "delete" and n > 1:
        del c[i]
    elif kind == "swap" and n > 2:
        j = data.draw(st.integers(1, n - 1), label="j")
        c[i], c[j] = c[j], c[i]
    elif kind == "duplicate" and n > 1:
        c.insert(i + 1, c[i])
    elif kind in ("edit", "edit-rehash") and n > 1:
        ev, s = c[i]
        ev = dataclasses.replace(ev, payload=canonical.dumps({"n": -1}))
        if kind == "edit-rehash":
            ev = dataclasses.replace(ev, hash=event_hash(
                ev.seq, ev.stream, ev.stream_seq, ev.type, ev.recorded_at, ev.actor,
                ev.payload, ev.closes, ev.prev_hash, ev.stream_prev_hash))
        c[i] = (ev, s)
    elif kind == "drop-seal":
        closed = [k for k, (_, s) in enumerate(c) if s is not None]
        k = data.draw(st.sampled_from(closed), label="k")
        c[k] = (c[k][0], None)
    elif kind in ("mallory-seal", "move-extent"):
        closed = [k for k, (_, s) in enumerate(c) if s is not None]
        k = data.draw(st.sampled_from(closed), label="k")
        ev, s = c[k]
        assert s is not None
        first = s.first
        if kind == "move-extent":
            first = data.draw(st.integers(1, ev.seq).filter(lambda f: f != s.first), label="f")
        signer = MALLORY if kind == "mallory-seal" else SIGNER  # the key holder's own slip
        c[k] = (ev, Seal(ev.seq, signer.key_id,
                         signer.sign(seal_message(first, ev.seq, ev.hash)), first))
    elif kind.startswith("forge"):
        at = data.draw(st.integers(1, n), label="at")
        stream = data.draw(st.sampled_from(["upgrade/a", "upgrade/x"]), label="stream")
        f = _forged(c, at, kind == "forge-closing", stream)
        if kind == "forge-renumber":  # the attacker moves the later rows up to make room
            c = [*c[:at], (f, None), *_shift(c[at:], 1)]
        else:
            c.insert(at, (f, None))
    elif kind == "truncate":
        c = c[:i]
    return c


def sealed_prefix(mutated: Chain, original: Chain) -> bool:
    k = len(mutated)
    return mutated == original[:k] and (k == 0 or original[k - 1][1] is not None)


def first_difference(mutated: Chain, original: Chain) -> int:
    """The seq of the first place where the mutated chain stops being the original."""
    for (a, sa), (b, sb) in zip(mutated, original, strict=False):
        if (a, sa) != (b, sb):
            return min(a.seq, b.seq)
    if len(mutated) > len(original):  # something added after the end
        return min(mutated[len(original)][0].seq, original[-1][0].seq + 1)
    return mutated[-1][0].seq + 1 if mutated else 1


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=appends, kind=st.sampled_from(MUTATIONS), data=st.data())
def test_verify_accepts_exactly_the_sealed_chains(
    spec: list[tuple[str, int]], kind: str, data: st.DataObject
) -> None:
    original = build(spec)
    assert verify(original) is None
    mutated = mutate(original, kind, data)
    err = verify(mutated)
    if sealed_prefix(mutated, original):
        assert err is None, (kind, err)
        return
    assert err is not None, kind
    d = first_difference(mutated, original)
    assert err.seq is not None, (kind, err)
    # Nothing genuine before the damage is blamed: the damage itself is named, or the event
    # right after it whose hash covers its moved seq, or (an append that lost its seal) the
    # first event of the append the damage left unsealed.
    low = append_start(original, d) if err.reason in ("unsealed events", "missing seal") else d
    assert low <= err.seq <= d + 1, (kind, d, err.seq, err.reason, str(err))


def append_start(original: Chain, seq: int) -> int:
    for ev, seal in original:
        if seal is not None and ev.seq >= seq:
            return min(seal.first, seq)
    return seq


@pytest.fixture(scope="module")
def base_ledger(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real SQLite ledger written by the real appender: its file bytes, copied per example."""
    path = tmp_path_factory.mktemp("base") / "ledger.db"
    with ledger.Ledger(f"sqlite:///{path}", signer=SIGNER) as lg:
        for stream, count in [("upgrade/a", 2), ("upgrade/b", 1), ("upgrade/a", 3),
                              ("ops/c", 1), ("upgrade/b", 2)]:
            lg.append(stream, [ledger.NewEvent("t", {"k": j}) for j in range(count)])
    return path


SQL_ATTACKS = ["delete", "forge", "forge-closing", "edit", "drop-seal", "move-extent"]


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(kind=st.sampled_from(SQL_ATTACKS), at=st.integers(2, 11))
def test_tampered_sqlite_files_fail_at_the_first_bad_seq(
    base_ledger: Path, tmp_path: Path, kind: str, at: int
) -> None:
    path = tmp_path / f"{kind}-{at}.db"
    path.write_bytes(base_ledger.read_bytes())
    url = f"sqlite:///{path}"
    with RawDB(url) as db:
        head = db.scalar("SELECT max(seq) FROM ledger_events")
        at = min(at, head)
        db.disable_triggers()
        if kind == "delete":  # from the middle (a cut at the end needs a checkpoint: below)
            at = min(at, head - 1)
            db.execute("DELETE FROM ledger_events WHERE seq = ?", [at])
            db.execute("DELETE FROM ledger_seals WHERE seq = ?", [at])
            want = at
        elif kind.startswith("forge"):  # at the head: the only place INSERT alone reaches
            prev = db.event(head)
            ev = forge(head + 1, "upgrade/x", 1, prev.hash, ZERO_HASH,
                       closes=kind == "forge-closing", actor=ACTOR)
            db.insert_event(ev)
            want = head + 1
        elif kind == "edit":
            db.execute("UPDATE ledger_events SET payload = '{\"k\":99}' WHERE seq = ?", [at])
            want = at
        else:
            seals = [r[0] for r in db.execute("SELECT seq FROM ledger_seals ORDER BY seq")]
            k = min(s for s in seals if s >= at)
            if kind == "drop-seal":
                db.execute("DELETE FROM ledger_seals WHERE seq = ?", [k])
            else:  # re-signed by the key holder, over a wrong extent
                first = db.scalar("SELECT first_seq FROM ledger_seals WHERE seq = ?", [k])
                first = first + 1 if first < k else first - 1
                sig = base64.b64encode(SIGNER.sign(
                    seal_message(first, k, db.event(k).hash))).decode()
                db.execute("UPDATE ledger_seals SET first_seq = ?, signature = ? "
                           "WHERE seq = ?", [first, sig, k])
            want = None
        previous_seal = db.scalar("SELECT max(seq) FROM ledger_seals WHERE seq < ?", [at])
    with ledger.Ledger(url, create=False) as lg, pytest.raises(ledger.IntegrityViolation) as e:
        lg.verify()
    if want is not None:
        assert e.value.seq == want, (kind, e.value)
    else:  # a seal's damage shows at its own seq or at the first event it stops covering
        assert e.value.seq is not None and e.value.seq > (previous_seal or 0), (kind, e.value)
