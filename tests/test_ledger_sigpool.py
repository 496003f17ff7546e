"""Seal signatures verified by worker processes (issue 15): the same faults, at the same seq,
as when they are verified inline; a bad signature before a fold's fault is the one reported."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

import ledger
import ledger.sigpool
from ledger.chain import seal_message
from tests.test_ledger_support import RawDB
from tests.test_ledger_tamper import CASES, Case, World, build


@pytest.fixture
def pooled(monkeypatch: pytest.MonkeyPatch) -> None:
    """Workers for every verify, however short, with batches of two seals (so that faults fall
    in different batches of a small ledger)."""
    monkeypatch.setattr(ledger.sigpool, "MIN_EVENTS", 0)
    monkeypatch.setattr(ledger.sigpool, "BATCH", 2)
    monkeypatch.setattr(ledger.sigpool, "workers_wanted", lambda: 2)


@pytest.mark.parametrize("case", [c for c in CASES if c.db is not None and not c.against],
                         ids=lambda c: c.name.replace(" ", "-"))
def test_the_tamper_matrix_with_signatures_in_workers(
    case: Case, pooled: None, signer: ledger.Signer, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    world = World(ledger.generate_key_file(tmp_path / "mallory.pem"), [])
    with build(url, signer) as lg:
        with RawDB(url) as db:
            db.disable_triggers()
            assert case.db is not None
            case.db(db, world)
        with pytest.raises(ledger.IntegrityViolation) as ei:
            lg.verify()
    assert (ei.value.seq, ei.value.reason) == (case.seq, case.reason), str(ei.value)


def _ledger(url: str, signer: ledger.Signer, n: int) -> ledger.Ledger:
    lg = ledger.Ledger(url, signer=signer)
    for i in range(n):
        lg.append(f"s/{i % 3}", ledger.NewEvent("e", {"i": i}))
    return lg


def _garble_seal(db: RawDB, seq: int) -> None:
    db.execute("UPDATE ledger_seals SET signature = ? WHERE seq = ?",
               [base64.b64encode(b"\x01" * 64).decode(), seq])


def test_the_first_fault_wins_whichever_side_found_it(
    pooled: None, signer: ledger.Signer, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    with _ledger(url, signer, 30) as lg:
        assert lg.verify().head.seq == 31
        with RawDB(url) as db:
            db.disable_triggers()
            _garble_seal(db, 9)
            db.execute("UPDATE ledger_events SET payload = '{\"i\":99}' WHERE seq = 25")
        with pytest.raises(ledger.IntegrityViolation) as ei:  # the signature, found by a worker
            lg.verify()
        assert (ei.value.seq, ei.value.reason) == (9, "bad seal")
        with RawDB(url) as db:
            _garble_seal(db, 27)
            db.execute("UPDATE ledger_seals SET signature = (SELECT signature FROM ledger_seals "
                       "WHERE seq = 10) WHERE seq = 9")  # another genuine seal's signature
        with pytest.raises(ledger.IntegrityViolation) as ei:  # still seq 9
            lg.verify()
        assert (ei.value.seq, ei.value.reason) == (9, "bad seal")
        sig9 = base64.b64encode(signer.sign(seal_message(9, 9, next(lg.read(9, 9)).hash))).decode()

        with RawDB(url) as db:
            db.execute("UPDATE ledger_seals SET signature = ? WHERE seq = 9", [sig9])
        with pytest.raises(ledger.IntegrityViolation) as ei:  # the fold's fault, before 27
            lg.verify()
        assert (ei.value.seq, ei.value.reason) == (25, "hash mismatch")
