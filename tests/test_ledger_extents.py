"""A seal vouches only for what its own append wrote (issue 7).

The attack: a role that may only INSERT into the ledger tables (triggers intact, no key) adds
a correctly hashed event at the head. Before seals named their extent, the next genuine
append linked to it and its seal then covered the forgery: verify, --trusted-key, --against
and verify-export all passed. Now the appender refuses to build on such a head, and the
verifier rejects any event outside a sealed extent even if some appender did build on it.
Every case runs on a real SQLite file and a real PostgreSQL ledger.
"""

from __future__ import annotations

import base64
import io
from pathlib import Path

import pytest

import ledger
from ledger.chain import seal_message
from ledger.checkpoint import sign_checkpoint
from ledger.exports import _event_line
from tests.pgcluster import PgCluster
from tests.test_cli_ledger import error, run
from tests.test_ledger_support import RawDB, forge, make_sqlite_layout_1

E = ledger.NewEvent


def _ledger_with_runs(lg: ledger.Ledger) -> None:
    lg.append("upgrade/a", [E("run.created", {"n": 1}), E("state.changed", {"n": 2})])
    lg.append("upgrade/b", E("run.created", {"n": 3}))


def _insert_forged_head(db_url: str, *, closes: bool, stream: str = "upgrade/fake") -> int:
    """What an INSERT-only insider can do: a correctly hashed event at the head."""
    with RawDB(db_url) as db:
        seq, prev = db.execute("SELECT seq, hash FROM ledger_events ORDER BY seq DESC LIMIT 1")[0]
        sprev = db.scalar(
            "SELECT hash FROM ledger_events WHERE stream = ? ORDER BY stream_seq DESC LIMIT 1",
            [stream],
        )
        spos = db.scalar("SELECT count(*) FROM ledger_events WHERE stream = ?", [stream])
        db.insert_event(forge(seq + 1, stream, spos + 1, prev, sprev or "0" * 64, closes=closes,
                              type_="state.changed",
                              payload='{"from":"verifying","to":"completed"}'))
        return int(seq + 1)


def _count(db_url: str) -> tuple[int, int]:
    with RawDB(db_url) as db:
        return (db.scalar("SELECT count(*) FROM ledger_events"),
                db.scalar("SELECT count(*) FROM ledger_seals"))


@pytest.mark.parametrize("fresh_process", [False, True])
def test_appender_refuses_a_head_that_is_not_closed(
    ledger_db: ledger.Ledger, db_url: str, signer: ledger.Signer, fresh_process: bool
) -> None:
    _ledger_with_runs(ledger_db)
    forged = _insert_forged_head(db_url, closes=False)
    before = _count(db_url)
    lg = ledger.Ledger(db_url, signer=signer) if fresh_process else ledger_db
    try:
        with pytest.raises(ledger.IntegrityViolation) as e:
            lg.append("upgrade/a", E("step.started", {}), expected_position=2)
    finally:
        if fresh_process:
            lg.close()
    assert (e.value.seq, e.value.reason) == (forged, "unsealed events")
    assert "refusing to build on it" in str(e.value)
    assert _count(db_url) == before  # nothing written
    with pytest.raises(ledger.IntegrityViolation) as v:
        ledger_db.verify()
    assert (v.value.seq, v.value.reason) == (forged, "unsealed events")


def test_appender_refuses_a_closing_head_without_a_valid_seal(
    ledger_db: ledger.Ledger, db_url: str, signer: ledger.Signer, tmp_path: Path
) -> None:
    _ledger_with_runs(ledger_db)
    forged = _insert_forged_head(db_url, closes=True)
    with ledger.Ledger(db_url, signer=signer) as lg:
        with pytest.raises(ledger.IntegrityViolation) as e:
            lg.append("upgrade/a", E("x", {}))
        assert (e.value.seq, e.value.reason) == (forged, "unsealed events")
        # Now with a seal: a genuine one copied from another event, then the attacker's own
        # key, listed beside the ledger's.
        mallory = ledger.generate_key_file(tmp_path / "mallory.pem")
        with RawDB(db_url) as db:
            key_id, sig = db.seal(forged - 1) or ("", "")
            if db.seals_in_rows:  # SQLite layout 2: a seal is in its event's row, so adding
                db.disable_triggers()  # one to the forged head takes UPDATE rights
            db.execute("INSERT INTO ledger_seals (seq, first_seq, key_id, signature) "
                       "VALUES (?, ?, ?, ?)", [forged, forged, key_id, sig])
        with pytest.raises(ledger.IntegrityViolation) as e:
            lg.append("upgrade/a", E("x", {}))
        assert (e.value.seq, e.value.reason) == (forged, "bad seal")
        with RawDB(db_url) as db:
            db.disable_triggers()
            h = db.event(forged).hash
            msig = base64.b64encode(mallory.sign(seal_message(forged, forged, h))).decode()
            db.execute("UPDATE ledger_seals SET key_id = ?, signature = ? WHERE seq = ?",
                       [mallory.key_id, msig, forged])
            db.execute("INSERT INTO ledger_keys (key_id, public_key, added_seq) VALUES (?, ?, 1)",
                       [mallory.key_id, mallory.public.b64])
        with pytest.raises(ledger.IntegrityViolation) as e:
            lg.append("upgrade/a", E("x", {}))
        assert (e.value.seq, e.value.reason) == (forged, "bad seal")


def _adopt(lg: ledger.Ledger, forged: int, db_url: str) -> None:
    """What an appender without the head check did: build on the forged head and seal."""
    with RawDB(db_url) as db:
        lg._trusted = (forged, db.event(forged).hash)
    lg.append("upgrade/a", E("step.started", {"step": "migrate"}))


def test_verifier_rejects_an_adopted_forgery_everywhere(
    ledger_db: ledger.Ledger, db_url: str, tmp_path: Path
) -> None:
    _ledger_with_runs(ledger_db)
    saved = ledger.parse_checkpoint(ledger_db.checkpoint())
    forged = _insert_forged_head(db_url, closes=False, stream="upgrade/a")
    _adopt(ledger_db, forged, db_url)
    pinned = [ledger_db.signer.public] if ledger_db.signer else []
    for kwargs in ({}, {"trusted": pinned}, {"against": saved}):
        with pytest.raises(ledger.IntegrityViolation) as e:
            ledger_db.verify(**kwargs)  # type: ignore[arg-type]
        assert (e.value.seq, e.value.reason) == (forged, "unsealed events"), kwargs
    assert "outside every sealed extent" in str(e.value)
    with pytest.raises(ledger.IntegrityViolation) as e:  # the run's own stream, on its own
        ledger_db.verify_stream("upgrade/a")
    assert (e.value.seq, e.value.reason) == (forged, "unsealed events")
    with pytest.raises(ledger.IntegrityViolation) as e:  # export verifies while it writes
        ledger.export(ledger_db, io.StringIO())
    assert (e.value.seq, e.value.reason) == (forged, "unsealed events")

    # An export file written by a tool that did not check, signed with the real key.
    assert ledger_db.signer is not None
    listed = ledger_db.keys()
    lines = [ledger.canonical.dumps({
        "format": "statekeeper-ledger-export", "version": 2,
        "ledger_id": ledger_db.ledger_id(), "stream": None,
        "keys": [{"key_id": r.key_id, "public_key": r.public_key} for r in listed],
    })]
    lines += [_event_line(ev, seal) for ev, seal in ledger_db.recorder.iter_events(
        with_seals=True)]
    head = ledger_db.head()
    cp = sign_checkpoint(ledger_db.signer, f"statekeeper/{ledger_db.ledger_id()}",
                                head.seq, head.hash)
    lines.append(ledger.canonical.dumps({"checkpoint": cp}))
    path = tmp_path / "adopted.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ledger.IntegrityViolation) as e:
        ledger.verify_export(path)
    assert (e.value.seq, e.value.reason) == (forged, "unsealed events")


def test_a_forgery_during_a_run_stops_the_next_append(
    ledger_db: ledger.Ledger, db_url: str
) -> None:
    # One Ledger object appending step after step, as a running upgrade does; on PostgreSQL
    # its next append predicts the head it wrote itself, which the forgery has moved.
    ledger_db.append("upgrade/a", E("run.created", {}), expected_position=0)
    ledger_db.append("upgrade/a", E("state.changed", {}), expected_position=1)
    forged = _insert_forged_head(db_url, closes=False)
    with pytest.raises(ledger.IntegrityViolation) as e:
        ledger_db.append("upgrade/a", E("step.started", {}), expected_position=2)
    assert e.value.seq == forged
    assert ledger_db.stream_position("upgrade/a") == 2


def test_format_1_ledger_is_refused_with_one_line(tmp_path: Path, signer: ledger.Signer) -> None:
    path = tmp_path / "old.db"
    url = f"sqlite:///{path}"
    make_sqlite_layout_1(path, seals_without_extents=True)
    with pytest.raises(ledger.ConfigurationError) as e:
        ledger.Ledger(url, create=False)
    assert "format 1 (statekeeper 0.1, seals without extents) is not supported" in str(e.value)


def test_checkpoint_and_export_refuse_a_retired_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, db_url: str
) -> None:
    monkeypatch.chdir(tmp_path)
    ledger.generate_key_file(tmp_path / "k.pem")
    ledger.generate_key_file(tmp_path / "k2.pem")
    ledger.generate_key_file(tmp_path / "other.pem")
    base = ("--ledger", db_url, "--key", "k.pem")
    assert run(*base, "ledger", "append", "--stream", "s", "--type", "t").exit_code == 0
    assert run(*base, "keys", "rotate", "--new-key", "k2.pem").exit_code == 0
    old = ledger.load_signer(tmp_path / "k.pem").key_id
    new = ledger.load_signer(tmp_path / "k2.pem").key_id
    for key, what in (("k.pem", "a retired key of"), ("other.pem", "not a key of")):
        k = ("--ledger", db_url, "--key", key)
        key_id = ledger.load_signer(tmp_path / key).key_id
        want = (f"error: key {key_id[:16]}... is {what} this ledger; its active key is "
                f"{new[:16]}... (--key or [ledger] key)")
        assert error(run(*k, "ledger", "checkpoint", "--out", "cp.txt"), 2) == want
        assert error(run(*k, "ledger", "export", "--out", "e.jsonl"), 2) == want
        assert error(run(*k, "ledger", "export", "--stream", "s", "--out", "e.jsonl"), 2) == want
        assert not (tmp_path / "cp.txt").exists() and not (tmp_path / "e.jsonl").exists()
    assert old != new
    k2 = ("--ledger", db_url, "--key", "k2.pem")
    assert run(*k2, "ledger", "checkpoint", "--out", "cp.txt").exit_code == 0
    assert run(*k2, "ledger", "export", "--out", "e.jsonl").exit_code == 0
    assert run("ledger", "verify-export", "e.jsonl", "--against", "cp.txt").exit_code == 0


def test_an_insert_only_role_appends_and_cannot_rewrite(
    pg_cluster: PgCluster, signer: ledger.Signer
) -> None:
    """The grants docs/compliance.md gives: the appending role has SELECT and INSERT only."""
    db = pg_cluster.createdb("grants")
    with ledger.Ledger(pg_cluster.url(db), signer=signer) as owner:  # creates tables, triggers
        owner.append("upgrade/a", E("run.created"))
    role = f"app_{db}"[:60]
    pg_cluster.psql(f'CREATE ROLE "{role}" LOGIN', db)
    pg_cluster.psql(f'GRANT SELECT, INSERT ON ledger_events, ledger_seals, ledger_keys '
                    f'TO "{role}"', db)
    url = f"postgresql://{role}@127.0.0.1:{pg_cluster.port}/{db}"
    with ledger.Ledger(url, signer=signer) as app:
        app.append("upgrade/a", [E("state.changed"), E("step.started")])
        assert app.verify().head.seq == 4
    with RawDB(url) as raw, pytest.raises(Exception, match="permission denied"):
        raw.execute("UPDATE ledger_events SET payload = '{}' WHERE seq = 2")


