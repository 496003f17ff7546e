"""Round trips through :class:`ledger.Ledger` on SQLite and PostgreSQL, and the database's own
append-only enforcement (triggers), checked with the plain driver."""

from __future__ import annotations

import base64
import hashlib
import json
import os
from datetime import datetime, timedelta, timezone
from pathlib import Path

import psycopg
import pytest

import ledger
from ledger import canonical
from ledger.chain import GENESIS_TYPE, LEDGER_STREAM, ZERO_HASH, seal_message
from tests.test_ledger_support import (
    MUTATIONS,
    TABLES,
    RawDB,
    make_sqlite_layout_1,
    refused,
    snapshot,
)

E = ledger.NewEvent


def test_first_append_writes_genesis_then_the_event(ledger_db: ledger.Ledger) -> None:
    assert ledger_db.head() == ledger.Head(0, ZERO_HASH)
    (ev,) = ledger_db.append("run/1", E("planned", {"app": "shop"}))
    assert (ev.seq, ev.stream, ev.stream_seq, ev.type) == (2, "run/1", 1, "planned")
    assert ev.closes
    assert ev.payload == '{"app":"shop"}'
    genesis = next(ledger_db.read(1, 1))
    assert (genesis.type, genesis.stream) == (GENESIS_TYPE, LEDGER_STREAM)
    assert genesis.prev_hash == ZERO_HASH
    assert ev.prev_hash == genesis.hash
    assert ledger_db.head() == ledger.Head(2, ev.hash)
    assert ledger_db.verify().events == 2


def _url(lg: ledger.Ledger) -> str:
    """The ledger's URL with the password kept (the test cluster has none)."""
    u = lg.url
    if u.get_backend_name() == "sqlite":
        return f"sqlite:///{u.database}"
    return u.set(drivername="postgresql").render_as_string(hide_password=False)


@pytest.mark.parametrize(
    "payload",
    [{"ratio": 0.5}, {"n": 2**53}, {"n": -(2**53)}, {"nested": [{"f": 1.0}]}, {1: "non-str key"}],
    ids=["float", "int-too-big", "int-too-small", "nested-float", "int-key"],
)
def test_payload_without_canonical_form_is_refused_and_nothing_written(
    ledger_db: ledger.Ledger, payload: dict[object, object]
) -> None:
    ledger_db.append("s", E("ok"))
    head = ledger_db.head()
    with pytest.raises(ledger.ConfigurationError, match=r"payload of 'bad'"):
        ledger_db.append("s", [E("fine", {"a": 1}), E("bad", payload)])  # type: ignore[arg-type]
    assert ledger_db.head() == head


def test_payload_stored_in_canonical_form(ledger_db: ledger.Ledger) -> None:
    payload = {
        "zeta": [3, {"b": True, "a": None}], "alpha": "größe ✓", "n": 2**53 - 1, "m": -(2**53 - 1)
    }
    (ev,) = ledger_db.append("s", E("t", payload))
    want = (
        '{"alpha":"größe ✓","m":-9007199254740991,"n":9007199254740991,'
        '"zeta":[3,{"a":null,"b":true}]}'
    )
    assert ev.payload == want
    with RawDB(_url(ledger_db)) as db:
        assert db.scalar("SELECT payload FROM ledger_events WHERE seq = ?", [ev.seq]) == want
    assert next(ledger_db.read(ev.seq, ev.seq)).payload == want


def test_hash_is_sha256_of_the_stored_envelope(ledger_db: ledger.Ledger) -> None:
    """Recompute every hash and seal from the raw rows, independently of ledger.chain."""
    ledger_db.append("s", [E("a", {"x": "é"}), E("b", {})])
    ledger_db.append("t", E("c", {"k": [1, 2]}))
    with RawDB(_url(ledger_db)) as db:
        rows = db.execute(
            "SELECT seq, stream, stream_seq, type, recorded_at, actor, payload, closes, "
            "prev_hash, stream_prev_hash, hash FROM ledger_events ORDER BY seq"
        )
        seals = {r[0]: r[1:] for r in db.execute(
            "SELECT seq, first_seq, key_id, signature FROM ledger_seals")}
        keys = dict(db.execute("SELECT key_id, public_key FROM ledger_keys"))
    prev = ZERO_HASH
    closed = 0  # the seals tile the chain: each starts right after the one before
    for seq, stream, sseq, type_, at, actor, payload, closes, ph, sph, h in rows:
        envelope = {
            "seq": seq, "stream": stream, "stream_seq": sseq, "type": type_, "recorded_at": at,
            "actor": json.loads(actor), "payload": json.loads(payload), "closes": bool(closes),
            "prev_hash": ph, "stream_prev_hash": sph,
        }
        text = json.dumps(envelope, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        assert hashlib.sha256(text.encode("utf-8")).hexdigest() == h
        assert ph == prev
        prev = h
        assert (seq in seals) == bool(closes)
        if closes:
            first, key_id, sig = seals[seq]
            assert first == closed + 1
            closed = seq
            pub = ledger.PublicKey.from_b64(keys[key_id])
            assert pub.verify(base64.b64decode(sig), seal_message(first, seq, h))


def test_the_stored_text_is_what_is_hashed(ledger_db: ledger.Ledger) -> None:
    """The same JSON value in other text (a space, reordered keys) no longer verifies: the
    verifier hashes the stored text and never re-serialises it."""
    ledger_db.append("s", E("t", {"a": 1, "b": 2}))
    with RawDB(_url(ledger_db)) as db:
        db.disable_triggers()
        db.execute("UPDATE ledger_events SET payload = ? WHERE seq = 2", ['{"b":2,"a":1}'])
    with pytest.raises(ledger.IntegrityViolation) as ei:
        ledger_db.verify()
    assert (ei.value.seq, ei.value.reason) == (2, "hash mismatch")


def test_timestamps_are_fixed_precision_utc(ledger_db: ledger.Ledger) -> None:
    ledger_db.clock = lambda: datetime(2024, 2, 29, 23, 30, 0, tzinfo=timezone(timedelta(hours=-2)))
    (ev,) = ledger_db.append("s", E("t"))
    assert ev.recorded_at == "2024-03-01T01:30:00.000000Z"


def test_actor_is_recorded(ledger_db: ledger.Ledger) -> None:
    (ev,) = ledger_db.append("s", E("t"))
    actor = json.loads(ev.actor)
    assert set(actor) == {"user", "host", "pid", "tool"}
    assert actor["pid"] == os.getpid() and actor["tool"] == "ledger"
    assert ev.actor == canonical.dumps(actor)


def test_reading_needs_no_key_but_appending_does(ledger_db: ledger.Ledger, db_url: str) -> None:
    ledger_db.append("s", E("a"))
    with ledger.Ledger(db_url, create=False) as ro:
        assert ro.verify().events == 2
        with pytest.raises(ledger.ConfigurationError, match="needs a signing key"):
            ro.append("s", E("b"))


def test_missing_sqlite_ledger_is_not_created_when_only_reading(tmp_path: Path) -> None:
    with pytest.raises(ledger.ConfigurationError, match="does not exist"):
        ledger.Ledger(f"sqlite:///{tmp_path / 'none.db'}", create=False)
    assert not (tmp_path / "none.db").exists()


# -- append-only: the database refuses changes -------------------------------------------------
def test_sqlite_insert_or_replace_cannot_rewrite_a_row(
    tmp_path: Path, signer: ledger.Signer
) -> None:
    """REPLACE deletes the conflicting row without firing DELETE triggers (unless
    recursive_triggers is on), so it needs its own guard."""
    url = f"sqlite:///{tmp_path / 'l.db'}"
    with ledger.Ledger(url, signer=signer) as lg:
        lg.append("s", [E("a", {"n": 1}), E("b")])
        with RawDB(url) as db:
            before = snapshot(db)
            ev = db.event(2)
            cols = "seq, stream, stream_seq, type, recorded_at, actor, payload, closes, " \
                   "prev_hash, stream_prev_hash, hash"
            refused(db, f"INSERT OR REPLACE INTO ledger_events ({cols}) VALUES "
                         f"(2, 's', 1, 'a', '{ev.recorded_at}', '{ev.actor}', '{{\"n\":2}}', 0, "
                         f"'{ev.prev_hash}', '{ev.stream_prev_hash}', '{ev.hash}')")
            # Same (stream, stream_seq) under a new seq: REPLACE would delete seq 2.
            refused(db, f"REPLACE INTO ledger_events ({cols}) VALUES "
                         f"(99, 's', 1, 'a', '{ev.recorded_at}', '{ev.actor}', '{{}}', 0, "
                         f"'{ev.prev_hash}', '{ev.stream_prev_hash}', '{ev.hash}')")
            refused(db, "REPLACE INTO ledger_seals (seq, key_id, signature) VALUES (3, 'k', 's')")
            refused(db, "REPLACE INTO ledger_keys (key_id, public_key, added_seq) "
                         f"VALUES ('{signer.key_id}', 'AAAA', 1)")
            assert snapshot(db) == before
        lg.append("s", E("c"))  # the guard does not get in the way of appending
        assert lg.verify().events == 4


@pytest.mark.postgresql
@pytest.mark.parametrize("replica", [False, True], ids=["origin", "replica-role"])
def test_postgres_triggers_refuse_truncate_update_delete_even_as_replica(
    pg_url: str, signer: ledger.Signer, replica: bool
) -> None:
    with ledger.Ledger(pg_url, signer=signer) as lg:
        lg.append("s", E("a"))
        lg.append("s", E("b"))
        with RawDB(pg_url) as db:
            before = snapshot(db)
            if replica:
                # Ordinary (ENABLE) triggers do not fire in this role; ENABLE ALWAYS ones do.
                db.execute("SET session_replication_role = replica")
                assert db.scalar("SHOW session_replication_role") == "replica"
            for sqls in MUTATIONS.values():
                for sql in sqls:
                    refused(db, sql)
            for t in TABLES:
                refused(db, f"TRUNCATE {t}")
            refused(db, "TRUNCATE ledger_events, ledger_seals, ledger_keys")
            # An upsert goes through the UPDATE trigger too.
            refused(db, "INSERT INTO ledger_keys (key_id, public_key, added_seq) "
                         f"VALUES ('{signer.key_id}', 'AAAA', 1) "
                         "ON CONFLICT (key_id) DO UPDATE SET public_key = EXCLUDED.public_key")
            assert snapshot(db) == before
            modes = db.execute(
                "SELECT tgname, tgenabled FROM pg_trigger WHERE NOT tgisinternal ORDER BY tgname"
            )
        assert len(modes) == 6 and all(m == "A" for _, m in modes), modes
        lg.verify()


@pytest.mark.postgresql
def test_postgres_refusal_is_a_privilege_error(pg_url: str, signer: ledger.Signer) -> None:
    with ledger.Ledger(pg_url, signer=signer) as lg:
        lg.append("s", E("a"))
    with RawDB(pg_url) as db, pytest.raises(psycopg.errors.InsufficientPrivilege):
        db.execute("DELETE FROM ledger_events")


def test_sqlite_storage_layouts(tmp_path: Path, signer: ledger.Signer) -> None:
    """A new SQLite ledger keeps each seal in its closing event's row (layout 2, PRAGMA
    user_version 2: two B-tree pages a commit); one made before (layout 1) stays as it was,
    its appends sealed in its seal table, and both verify the same."""
    new, old = tmp_path / "new.db", tmp_path / "old.db"
    make_sqlite_layout_1(old)
    for path in (new, old):
        with ledger.Ledger(f"sqlite:///{path}", signer=signer) as lg:
            lg.append("s", [E("a"), E("b")])
            lg.append("s", E("c"))
            assert lg.verify().events == 4
    with RawDB(f"sqlite:///{new}") as db:
        assert db.scalar("PRAGMA user_version") == 2 and db.seals_in_rows
        assert db.execute("SELECT seq, seal_first FROM ledger_events WHERE seal_key_id "
                          "IS NOT NULL") == [(1, 1), (3, 2), (4, 4)]
        assert not db.execute("SELECT name FROM sqlite_master WHERE name LIKE '%recorded_at%'")
    with RawDB(f"sqlite:///{old}") as db:
        assert db.scalar("PRAGMA user_version") == 0 and not db.seals_in_rows
        assert db.execute("SELECT seq, first_seq FROM ledger_seals") == [(1, 1), (3, 2), (4, 4)]
