import ledger


def test_ledger_roundtrip_each_backend(ledger_db: ledger.Ledger) -> None:
    ledger_db.append("s", [ledger.NewEvent("a", {"n": 1}), ledger.NewEvent("b", {})])
    r = ledger_db.verify()
    assert r.events == 3 and r.head.seq == 3
