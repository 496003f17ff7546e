"""Verify before acting (issue 7): the chain since the last head this tool verified (a signed
local checkpoint) and the run's own stream, on real SQLite and PostgreSQL ledgers."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

import ledger
from ledger.chain import seal_message
from ledger.checkpoint import sign_checkpoint
from statekeeper.trust import local_checkpoint_path, verify_before_act
from tests.test_ledger_support import RawDB, forge

E = ledger.NewEvent


def _fill(lg: ledger.Ledger) -> None:
    lg.append("upgrade/a", [E("run.created", {"n": 1}), E("state.changed", {"n": 2})])
    lg.append("upgrade/b", E("run.created", {}))
    lg.append("upgrade/a", E("state.changed", {"n": 3}))


def test_first_check_is_whole_then_only_what_is_new(
    ledger_db: ledger.Ledger, tmp_path: Path
) -> None:
    _fill(ledger_db)
    first = verify_before_act(ledger_db, tmp_path, "upgrade/a")
    assert first.events == 5 and first.head.seq == 5
    lid = ledger_db.ledger_id()
    assert lid is not None
    path = local_checkpoint_path(tmp_path, lid)
    assert ledger.parse_checkpoint(path.read_text()).seq == 5
    assert path.stat().st_mode & 0o777 == 0o600
    assert path.parent.stat().st_mode & 0o777 == 0o700
    ledger_db.append("upgrade/b", [E("x"), E("y")])
    second = verify_before_act(ledger_db, tmp_path, "upgrade/b")
    assert (second.events, second.head.seq) == (2, 7)  # only the new events were read
    assert ledger.parse_checkpoint(path.read_text()).seq == 7


def test_a_forgery_after_the_checkpoint_is_caught(
    ledger_db: ledger.Ledger, db_url: str, tmp_path: Path
) -> None:
    _fill(ledger_db)
    verify_before_act(ledger_db, tmp_path)
    with RawDB(db_url) as db:
        head = db.event(5)
        db.insert_event(forge(6, "upgrade/fake", 1, head.hash, "0" * 64, closes=True))
    with pytest.raises(ledger.IntegrityViolation) as e:
        verify_before_act(ledger_db, tmp_path)
    assert (e.value.seq, e.value.reason) == (6, "missing seal")
    lid = ledger_db.ledger_id()
    assert lid is not None
    # No checkpoint over the bad head.
    assert ledger.parse_checkpoint(local_checkpoint_path(tmp_path, lid).read_text()).seq == 5


def test_a_ledger_cut_short_below_the_checkpoint_is_caught(
    ledger_db: ledger.Ledger, db_url: str, tmp_path: Path
) -> None:
    _fill(ledger_db)
    verify_before_act(ledger_db, tmp_path)
    with RawDB(db_url) as db:
        db.disable_triggers()
        db.execute("DELETE FROM ledger_events WHERE seq >= 4")
        db.execute("DELETE FROM ledger_seals WHERE seq >= 4")
    with pytest.raises(ledger.IntegrityViolation) as e:
        verify_before_act(ledger_db, tmp_path)
    assert (e.value.seq, e.value.reason) == (5, "truncated")


def test_the_run_stream_is_verified_whole(
    ledger_db: ledger.Ledger, db_url: str, tmp_path: Path
) -> None:
    _fill(ledger_db)
    verify_before_act(ledger_db, tmp_path)
    with RawDB(db_url) as db:  # an insider with UPDATE rights edits an old event of the run
        db.disable_triggers()
        db.execute("UPDATE ledger_events SET payload = '{\"n\":9}' WHERE seq = 2")
    verify_before_act(ledger_db, tmp_path, "upgrade/b")  # other runs: only the new part
    with pytest.raises(ledger.IntegrityViolation) as e:
        verify_before_act(ledger_db, tmp_path, "upgrade/a")
    assert (e.value.seq, e.value.reason) == (2, "hash mismatch")


def test_a_forged_local_checkpoint_is_no_shortcut(
    ledger_db: ledger.Ledger, db_url: str, tmp_path: Path
) -> None:
    """A local user who can write .statekeeper/ and INSERT into the ledger tables signs a
    checkpoint with a key of her own, listed beside the ledger's, over a forged head."""
    _fill(ledger_db)
    mallory = ledger.generate_key_file(tmp_path / "m.pem")
    with RawDB(db_url) as db:
        head = db.event(5)
        ev = forge(6, "upgrade/fake", 1, head.hash, "0" * 64, closes=True)
        sig = base64.b64encode(mallory.sign(seal_message(6, 6, ev.hash))).decode()
        db.insert_event(ev, seal=(6, mallory.key_id, sig))
        db.execute("INSERT INTO ledger_keys (key_id, public_key, added_seq) VALUES (?, ?, 0)",
                   [mallory.key_id, mallory.public.b64])
    lid = ledger_db.ledger_id()
    assert lid is not None
    path = local_checkpoint_path(tmp_path, lid)
    path.parent.mkdir(parents=True)
    path.write_text(sign_checkpoint(mallory, f"statekeeper/{lid}", 6, ev.hash))
    with pytest.raises(ledger.IntegrityViolation) as e:  # ignored: the whole chain is read
        verify_before_act(ledger_db, tmp_path)
    assert (e.value.seq, e.value.reason) == (6, "unknown key")
    # Signed by the ledger's own key over the forged head is no better: the head's seal is.
    assert ledger_db.signer is not None
    path.write_text(sign_checkpoint(ledger_db.signer, f"statekeeper/{lid}", 6, ev.hash))
    with pytest.raises(ledger.IntegrityViolation) as e:
        verify_before_act(ledger_db, tmp_path)
    assert (e.value.seq, e.value.reason) == (6, "bad seal")


def test_a_rotation_between_checks(
    ledger_db: ledger.Ledger, tmp_path: Path
) -> None:
    _fill(ledger_db)
    verify_before_act(ledger_db, tmp_path)
    ledger_db.rotate_key(ledger.generate_key_file(tmp_path / "new.pem"))
    assert verify_before_act(ledger_db, tmp_path).events == 1  # the rotation
    ledger_db.append("upgrade/c", E("run.created"))
    r = verify_before_act(ledger_db, tmp_path, "upgrade/c")
    assert (r.events, r.head.seq) == (1, 7)


def test_a_run_rewritten_and_resealed_with_an_inserted_key_is_caught(
    ledger_db: ledger.Ledger, db_url: str, tmp_path: Path
) -> None:
    """An insider with UPDATE rights rewrites an old event of the run about to be acted on,
    rehashes it and seals it with a key of her own, INSERTed into the key table."""
    _fill(ledger_db)
    ledger_db.append("upgrade/b", E("later"))
    verify_before_act(ledger_db, tmp_path)  # the local checkpoint is now past the run's events
    mallory = ledger.generate_key_file(tmp_path / "m.pem")
    with RawDB(db_url) as db:
        db.disable_triggers()
        old = db.event(5)
        new = forge(5, old.stream, old.stream_seq, old.prev_hash, old.stream_prev_hash,
                    closes=True, type_=old.type, payload='{"n":300}', actor=old.actor,
                    recorded_at=old.recorded_at)
        db.replace_event(new)
        sig = base64.b64encode(mallory.sign(seal_message(5, 5, new.hash))).decode()
        db.execute("UPDATE ledger_seals SET key_id = ?, signature = ? WHERE seq = 5",
                   [mallory.key_id, sig])
        db.execute("INSERT INTO ledger_keys (key_id, public_key, added_seq) VALUES (?, ?, 0)",
                   [mallory.key_id, mallory.public.b64])
    with pytest.raises(ledger.IntegrityViolation) as e:  # the inserted key is reported first
        verify_before_act(ledger_db, tmp_path, "upgrade/a")
    assert e.value.reason == "unknown key" and "listed but never introduced" in str(e.value)
    # and the run on its own: its seal is not by the key the chain had active at seq 5
    for upto in (6, None):  # up to the verified head, or the head now
        with pytest.raises(ledger.IntegrityViolation) as e:
            ledger_db.verify_stream("upgrade/a", upto=upto)
        assert (e.value.seq, e.value.reason) == (5, "bad seal")


def test_an_edit_before_the_checkpoint_is_caught_by_the_run_it_touches_and_by_full_verify(
    ledger_db: ledger.Ledger, db_url: str, tmp_path: Path
) -> None:
    """What the incremental check leaves out (docs/compliance.md, threat model): an event
    before the local checkpoint, edited in a run other than the one acted on. Acting on that
    run, or a full ``ledger verify``, catches it."""
    _fill(ledger_db)
    verify_before_act(ledger_db, tmp_path)
    ledger_db.append("upgrade/c", E("run.created", {}))
    with RawDB(db_url) as db:
        db.disable_triggers()
        db.execute("UPDATE ledger_events SET payload = '{\"x\":1}' WHERE seq = 4")  # upgrade/b
    assert verify_before_act(ledger_db, tmp_path, "upgrade/c").events == 1  # only seq 6 read
    with pytest.raises(ledger.IntegrityViolation) as e:
        verify_before_act(ledger_db, tmp_path, "upgrade/b")
    assert (e.value.seq, e.value.reason) == (4, "hash mismatch")
    with pytest.raises(ledger.IntegrityViolation) as e:
        ledger_db.verify()
    assert (e.value.seq, e.value.reason) == (4, "hash mismatch")
