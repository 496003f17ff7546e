"""The tamper matrix (issue 2): every alteration is detected, with the right seq and reason.

Each case tampers real rows with SQL on SQLite and PostgreSQL, after disabling the triggers as
an attacker with table rights would, and/or edits the lines of a real export file. The ledger
below is the same for every case (one seal per append; the checkpoint is taken before
tampering and handed to ``verify(against=...)`` only where a case says so):

    seq 1  ledger  #1  ledger.genesis   sealed
    seq 2  run/a   #1                            \
    seq 3  run/a   #2                             | one append
    seq 4  run/a   #3                   sealed   /
    seq 5  run/b   #1                   sealed
    seq 6  run/a   #4                            \\ one append
    seq 7  run/a   #5                   sealed   /
    seq 8  run/b   #2                   sealed
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest

import ledger
from ledger.chain import seal_message
from tests.test_ledger_support import RawDB, forge

E = ledger.NewEvent
HEAD = 8


@dataclass
class World:
    """What a tamper step may use: the attacker's own key, and (for files) the lines."""

    mallory: ledger.Signer
    lines: list[str]

    # -- export file lines ------------------------------------------------------------------
    def at(self, seq: int) -> int:
        """Index of the line holding event ``seq``."""
        for i, line in enumerate(self.lines):
            if line.startswith("{") and json.loads(line).get("seq") == seq:
                return i
        raise AssertionError(f"no line for seq {seq}")

    def edit(self, seq: int, old: str, new: str) -> None:
        i = self.at(seq)
        assert self.lines[i].count(old) == 1, (old, self.lines[i])
        self.lines[i] = self.lines[i].replace(old, new)

    def obj(self, seq: int) -> dict[str, object]:
        return dict(json.loads(self.lines[self.at(seq)]))

    def set_seal(self, seq: int, seal: object) -> None:
        o = json.loads(self.lines[self.at(seq)])
        o["seal"] = seal
        self.lines[self.at(seq)] = json.dumps(o, separators=(",", ":"), ensure_ascii=False)

    def mallory_seal(self, seq: int, hash_: str) -> dict[str, object]:
        sig = self.mallory.sign(seal_message(seq, seq, hash_))
        return {"first": seq, "key_id": self.mallory.key_id,
                "signature": base64.b64encode(sig).decode()}


DbTamper = Callable[[RawDB, World], None]
FileTamper = Callable[[World], None]


@dataclass
class Case:
    name: str
    seq: int
    reason: str
    db: DbTamper | None = None
    file: FileTamper | None = None
    file_seq: int | None = None  # where the file case differs from the database case
    file_reason: str | None = None
    against: bool = False  # detected only against the checkpoint saved before tampering


# -- database tampering -----------------------------------------------------------------------
def db_payload_byte(db: RawDB, w: World) -> None:
    payload = db.event(3).payload
    assert '"n":2' in payload
    db.execute("UPDATE ledger_events SET payload = ? WHERE seq = 3",
               [payload.replace('"n":2', '"n":7')])


def db_recorded_at(db: RawDB, w: World) -> None:
    at = db.event(5).recorded_at
    db.execute("UPDATE ledger_events SET recorded_at = ? WHERE seq = 5", [at[:-2] + "9Z"])


def db_delete_middle(db: RawDB, w: World) -> None:
    db.execute("DELETE FROM ledger_events WHERE seq = 5")
    db.execute("DELETE FROM ledger_seals WHERE seq = 5")


def db_swap(db: RawDB, w: World) -> None:
    db.execute("UPDATE ledger_events SET seq = -5 WHERE seq = 5")
    db.execute("UPDATE ledger_events SET seq = 5 WHERE seq = 6")
    db.execute("UPDATE ledger_events SET seq = 6 WHERE seq = -5")


def db_insert(db: RawDB, w: World) -> None:
    """A forged one-event append slipped in at seq 6; later events and seals move up."""
    prev = db.event(5).hash
    db.renumber("ledger_events", 6, 1)
    db.renumber("ledger_seals", 6, 1)
    db.insert_event(forge(6, "run/x", 1, prev, "0" * 64, closes=True))


def db_seal_removed(db: RawDB, w: World) -> None:
    db.execute("DELETE FROM ledger_seals WHERE seq = 4")


def _reseal_5_by_mallory(db: RawDB, w: World) -> None:
    sig = w.mallory.sign(seal_message(5, 5, db.event(5).hash))
    db.execute("DELETE FROM ledger_seals WHERE seq = 5")
    db.execute("INSERT INTO ledger_seals (seq, first_seq, key_id, signature) VALUES (5, 5, ?, ?)",
               [w.mallory.key_id, base64.b64encode(sig).decode()])


def db_foreign_seal(db: RawDB, w: World) -> None:
    _reseal_5_by_mallory(db, w)


def db_foreign_seal_key_listed(db: RawDB, w: World) -> None:
    """The attacker also lists her public key beside the ledger's."""
    _reseal_5_by_mallory(db, w)
    db.execute("INSERT INTO ledger_keys (key_id, public_key, added_seq) VALUES (?, ?, 1)",
               [w.mallory.key_id, w.mallory.public.b64])


def db_key_replaced(db: RawDB, w: World) -> None:
    assert db.execute("SELECT count(*) FROM ledger_keys") == [(1,)]
    db.execute("UPDATE ledger_keys SET public_key = ?", [w.mallory.public.b64])


def db_unsealed_append(db: RawDB, w: World) -> None:
    last = db.event(HEAD)
    db.insert_event(forge(HEAD + 1, "run/b", 3, last.hash, last.hash, closes=False))


def db_truncate_tail(db: RawDB, w: World) -> None:
    """The last two appends (seqs 6-8) cut off at a seal boundary: the rest still verifies."""
    db.execute("DELETE FROM ledger_events WHERE seq >= 6")
    db.execute("DELETE FROM ledger_seals WHERE seq >= 6")


def db_truncate_inside_append(db: RawDB, w: World) -> None:
    db.execute("DELETE FROM ledger_events WHERE seq >= 7")
    db.execute("DELETE FROM ledger_seals WHERE seq >= 7")


def db_last_event_deleted_seal_left(db: RawDB, w: World) -> None:
    if db.seals_in_rows:
        pytest.skip("SQLite layout 2 keeps a seal in its event's row: it cannot be left over")
    db.execute("DELETE FROM ledger_events WHERE seq = ?", [HEAD])


# -- file tampering ---------------------------------------------------------------------------
def f_payload_byte(w: World) -> None:
    w.edit(3, '"n":2', '"n":7')


def f_recorded_at(w: World) -> None:
    at = str(w.obj(5)["recorded_at"])
    w.edit(5, at, at[:-2] + "9Z")


def f_delete(seq: int) -> FileTamper:
    def tamper(w: World) -> None:
        del w.lines[w.at(seq)]

    return tamper


def f_swap(w: World) -> None:
    i, j = w.at(5), w.at(6)
    w.lines[i], w.lines[j] = w.lines[j], w.lines[i]


def f_insert(w: World) -> None:
    prev = str(w.obj(5)["hash"])
    ev = forge(6, "run/x", 1, prev, "0" * 64, closes=True)
    w.lines.insert(w.at(6), _line(ev, None))


def f_seal_removed(w: World) -> None:
    w.set_seal(4, None)


def f_foreign_seal(w: World) -> None:
    w.set_seal(5, w.mallory_seal(5, str(w.obj(5)["hash"])))


def f_foreign_seal_key_listed(w: World) -> None:
    f_foreign_seal(w)
    header = json.loads(w.lines[0])
    header["keys"].append({"key_id": w.mallory.key_id, "public_key": w.mallory.public.b64})
    w.lines[0] = json.dumps(header, separators=(",", ":"))


def f_key_replaced(w: World) -> None:
    header = json.loads(w.lines[0])
    header["keys"][0]["public_key"] = w.mallory.public.b64
    w.lines[0] = json.dumps(header, separators=(",", ":"))


def f_unsealed_append(w: World) -> None:
    last = w.obj(HEAD)
    ev = forge(HEAD + 1, "run/b", 3, str(last["hash"]), str(last["hash"]), closes=False)
    w.lines.insert(len(w.lines) - 1, _line(ev, None))  # before the closing checkpoint


def f_cut_tail(keep_through: int, keep_checkpoint: bool) -> FileTamper:
    def tamper(w: World) -> None:
        closing = w.lines[-1]
        del w.lines[(w.at(keep_through) if keep_through else 0) + 1:]
        if keep_checkpoint:
            w.lines.append(closing)

    return tamper


def f_edit_type(w: World) -> None:
    w.edit(7, '"type":"a5"', '"type":"a5-approved"')


def f_garble(w: World) -> None:
    i = w.at(6)
    w.lines[i] = w.lines[i][: len(w.lines[i]) // 2]  # a line cut in half: not JSON any more


def f_deep(w: World) -> None:
    """A line replaced by JSON nested deeper than any parser's stack (a hostile file)."""
    w.lines[w.at(4)] = '{"seq":' + "[" * 100_000 + "]" * 100_000 + "}"


def f_closing(edit: Callable[[str], str]) -> FileTamper:
    def tamper(w: World) -> None:
        note = json.loads(w.lines[-1])["checkpoint"]
        w.lines[-1] = json.dumps({"checkpoint": edit(note)})

    return tamper


def _flip_signature(note: str) -> str:
    body, sig = note.rsplit(" ", 1)
    return f"{body} {sig[:20]}{'A' if sig[20] != 'A' else 'B'}{sig[21:]}"


def _drop_signature(note: str) -> str:
    return note.split("\n\n")[0] + "\n\n"


def f_duplicate(seq: int) -> FileTamper:
    def tamper(w: World) -> None:
        i = w.at(seq)
        w.lines.insert(i + 1, w.lines[i])

    return tamper


def _line(ev: ledger.StoredEvent, seal: object) -> str:
    o = {f: getattr(ev, f) for f in ledger.StoredEvent.__slots__}
    o["actor"], o["payload"], o["seal"] = json.loads(ev.actor), json.loads(ev.payload), seal
    return json.dumps(o, separators=(",", ":"))


# -- the matrix: the list, in its order -----------------------------------------------
CASES = [
    Case("payload byte changed", 3, "hash mismatch", db_payload_byte, f_payload_byte),
    Case("recorded_at changed", 5, "hash mismatch", db_recorded_at, f_recorded_at),
    Case("event deleted from the middle", 5, "gap", db_delete_middle, f_delete(5)),
    # In the table the rows trade places (seq 5 holds event 6, whose hash covers seq 6); in a
    # file the lines do (seq 6 comes where seq 5 should).
    Case("two events swapped", 5, "hash mismatch", db_swap, f_swap, file_reason="gap"),
    Case("event inserted", 6, "missing seal", db_insert, f_insert),
    # The seal of the append 2..4 is gone: all three events are unvouched, named from the first.
    Case("seal removed", 2, "missing seal", db_seal_removed, f_seal_removed),
    Case("seal by a key not in the ledger", 5, "unknown key", db_foreign_seal, f_foreign_seal),
    Case("seal by a key added to the key list", 5, "unknown key", db_foreign_seal_key_listed,
         f_foreign_seal_key_listed),
    Case("public key replaced", 1, "key mismatch", db_key_replaced, f_key_replaced),
    Case("unsealed event appended after the last seal", HEAD + 1, "unsealed events",
         db_unsealed_append, f_unsealed_append),
    # The database cut at a seal boundary verifies on its own: only the checkpoint saved
    # earlier shows it. A cut file has lost its closing checkpoint, which shows it alone.
    Case("tail truncated", 6, "truncated", db_truncate_tail, f_cut_tail(5, False), against=True),
    Case("tail truncated, closing checkpoint kept", 6, "truncated",
         file=f_cut_tail(5, True)),
    Case("tail truncated inside an append", 6, "unsealed events", db_truncate_inside_append,
         f_cut_tail(6, True)),
    Case("last event deleted, its seal left", HEAD, "bad seal", db_last_event_deleted_seal_left),
    Case("export line edited", 7, "hash mismatch", file=f_edit_type),
    Case("export line deleted", 3, "gap", file=f_delete(3)),
    Case("export line duplicated", 4, "reorder", file=f_duplicate(4)),
    Case("export line garbled", 6, "malformed event", file=f_garble),
    Case("export line nested absurdly deep", 4, "malformed event", file=f_deep),
    Case("closing checkpoint signature edited", HEAD, "bad seal",
         file=f_closing(_flip_signature)),
    Case("closing checkpoint signature removed", HEAD, "bad seal",
         file=f_closing(_drop_signature)),
    Case("every event line deleted", 1, "truncated", file=f_cut_tail(0, True)),
]


def _params() -> list[object]:
    out: list[object] = []
    for c in CASES:
        slug = c.name.replace(" ", "-").replace(",", "")
        if c.db is not None:
            # sqlite-layout1: a SQLite ledger made before issue 15 (seals in a table)
            for backend in ("sqlite", "sqlite-layout1", "postgresql"):
                marks = [pytest.mark.postgresql] if backend == "postgresql" else []
                out.append(pytest.param(c, backend, "db", id=f"{slug}-{backend}", marks=marks))
        if c.file is not None:
            out.append(pytest.param(c, "sqlite", "export", id=f"{slug}-export"))
    return out


def build(db_url: str, signer: ledger.Signer) -> ledger.Ledger:
    clock = iter(datetime(2024, 5, 1, 12, 0, i, 123456, tzinfo=UTC) for i in range(100))
    lg = ledger.Ledger(db_url, signer=signer, clock=lambda: next(clock))
    lg.append("run/a", [E("a1", {"n": 1}), E("a2", {"n": 2, "note": "größe"}), E("a3", {"n": 3})])
    lg.append("run/b", E("b1", {"n": 1}))
    lg.append("run/a", [E("a4", {"n": 4}), E("a5", {"n": 5})])
    lg.append("run/b", E("b2", {"n": 2}))
    assert lg.verify().head.seq == HEAD
    return lg


@pytest.mark.parametrize(("case", "backend", "where"), _params())
def test_tamper_is_detected(
    case: Case, where: str, db_url: str, signer: ledger.Signer, tmp_path: Path
) -> None:
    world = World(ledger.generate_key_file(tmp_path / "mallory.pem"), [])
    with build(db_url, signer) as lg:
        saved = ledger.parse_checkpoint(lg.checkpoint())
        if where == "db":
            assert case.db is not None
            with RawDB(db_url) as db:
                db.disable_triggers()
                case.db(db, world)
            if case.against:
                lg.verify()  # nothing to see without the checkpoint...
            with pytest.raises(ledger.IntegrityViolation) as ei:
                lg.verify(against=saved if case.against else None)
            want = (case.seq, case.reason)
        else:
            assert case.file is not None
            path = tmp_path / "export.jsonl"
            with path.open("w", encoding="utf-8") as f:
                ledger.export(lg, f)
            ledger.verify_export(path, against=saved)  # intact before
            world.lines = path.read_text(encoding="utf-8").splitlines()
            before = list(world.lines)
            case.file(world)
            assert world.lines != before
            path.write_text("\n".join(world.lines) + "\n", encoding="utf-8")
            with pytest.raises(ledger.IntegrityViolation) as ei:
                ledger.verify_export(path)
            want = (case.file_seq or case.seq, case.file_reason or case.reason)
    e = ei.value
    assert (e.seq, e.reason) == want, str(e)
    assert str(e).startswith(f"seq {want[0]}: {want[1]}: ")


# -- what a checkpoint proves -----------------------------------------------------------------
def test_truncated_export_is_caught_against_an_earlier_checkpoint(
    db_url: str, signer: ledger.Signer, tmp_path: Path
) -> None:
    """An insider with the key cuts the ledger and exports it: the new export is signed and
    verifies on its own, but not against the checkpoint the officer kept."""
    with build(db_url, signer) as lg:
        saved = ledger.parse_checkpoint(lg.checkpoint())
        with RawDB(db_url) as db:
            db.disable_triggers()
            db_truncate_tail(db, World(signer, []))
        path = tmp_path / "cut.jsonl"
        with path.open("w") as f:
            ledger.export(lg, f)
    assert ledger.verify_export(path).events == 5
    with pytest.raises(ledger.IntegrityViolation) as ei:
        ledger.verify_export(path, against=saved)
    assert (ei.value.seq, ei.value.reason) == (6, "truncated")


def test_rewritten_history_is_caught_against_an_earlier_checkpoint(
    db_url: str, signer: ledger.Signer, tmp_path: Path
) -> None:
    """An insider with the key rewrites seq 5 and re-hashes and re-seals everything after it:
    the ledger verifies on its own (the docs say so), the checkpoint held outside does not."""
    with build(db_url, signer) as lg:
        saved = ledger.parse_checkpoint(lg.checkpoint())
        with RawDB(db_url) as db:
            db.disable_triggers()
            _rewrite_from(db, 5, signer)
        assert lg.verify().head.seq == HEAD
        with pytest.raises(ledger.IntegrityViolation) as ei:
            lg.verify(against=saved)
    assert (ei.value.seq, ei.value.reason) == (HEAD, "checkpoint mismatch")


def _rewrite_from(db: RawDB, start: int, key: ledger.Signer) -> None:
    prev = db.event(start - 1).hash
    streams: dict[str, str] = {}
    for ev in sorted((db.event(s) for s in range(1, HEAD + 1)), key=lambda e: e.seq):
        if ev.seq < start:
            streams[ev.stream] = ev.hash
            continue
        payload = ev.payload.replace('"n":1', '"n":100')
        new = forge(ev.seq, ev.stream, ev.stream_seq, prev, streams.get(ev.stream, "0" * 64),
                    closes=ev.closes, type_=ev.type, payload=payload,
                    recorded_at=ev.recorded_at, actor=ev.actor)
        db.replace_event(new)
        if ev.closes:
            first = db.scalar("SELECT first_seq FROM ledger_seals WHERE seq = ?", [ev.seq])
            sig = base64.b64encode(key.sign(seal_message(first, new.seq, new.hash))).decode()
            db.execute("UPDATE ledger_seals SET signature = ? WHERE seq = ?", [sig, ev.seq])
        prev = streams[ev.stream] = new.hash


def test_checkpoint_of_another_ledger_is_refused(
    db_url: str, signer: ledger.Signer, tmp_path: Path
) -> None:
    with build(db_url, signer) as lg:
        other_url = f"sqlite:///{tmp_path / 'other.db'}"
        with ledger.Ledger(other_url, signer=signer) as other:
            other.append("s", E("x"))
            foreign = ledger.parse_checkpoint(other.checkpoint())
        with pytest.raises(ledger.IntegrityViolation) as ei:
            lg.verify(against=foreign)
    assert (ei.value.seq, ei.value.reason) == (None, "checkpoint mismatch")


# -- stream exports verify on their own -------------------------------------------------------
STREAM_CASES = [
    # run/a holds seqs 2, 3, 4, 6, 7 (stream positions 1-5).
    ("intact", None, None, None),
    ("payload edited", lambda w: w.edit(6, '"n":4', '"n":40'), 6, "hash mismatch"),
    # The gap shows at the next event of the stream: its position skips one.
    ("line deleted", f_delete(4), 6, "gap"),
    ("line duplicated", f_duplicate(3), 3, "reorder"),
    ("seal removed", lambda w: w.set_seal(7, None), 6, "missing seal"),  # the append 6..7
    ("tail cut at a seal, checkpoint kept", f_cut_tail(4, True), None, "truncated"),
]


@pytest.mark.parametrize(("name", "tamper", "seq", "reason"), STREAM_CASES,
                         ids=[c[0].replace(" ", "-") for c in STREAM_CASES])
def test_stream_export(
    name: str, tamper: FileTamper | None, seq: int | None, reason: str | None,
    tmp_path: Path, signer: ledger.Signer,
) -> None:
    with build(f"sqlite:///{tmp_path / 'l.db'}", signer) as lg:
        path = tmp_path / "run-a.jsonl"
        with path.open("w") as f:
            r = ledger.export(lg, f, stream="run/a")
    assert r.events == 5
    w = World(signer, path.read_text().splitlines())
    assert [json.loads(x)["seq"] for x in w.lines[1:-1]] == [2, 3, 4, 6, 7]
    if tamper is None:
        v = ledger.verify_export(path)
        assert (v.events, v.stream, v.head.seq, v.checkpoint.seq) == (5, "run/a", 7, 5)
        return
    tamper(w)
    path.write_text("\n".join(w.lines) + "\n")
    with pytest.raises(ledger.IntegrityViolation) as ei:
        ledger.verify_export(path)
    assert (ei.value.seq, ei.value.reason) == (seq, reason), str(ei.value)


def test_event_of_another_stream_slipped_into_a_stream_export(
    tmp_path: Path, signer: ledger.Signer
) -> None:
    with build(f"sqlite:///{tmp_path / 'l.db'}", signer) as lg:
        full, part = tmp_path / "full.jsonl", tmp_path / "a.jsonl"
        with full.open("w") as f:
            ledger.export(lg, f)
        with part.open("w") as f:
            ledger.export(lg, f, stream="run/a")
    other = World(signer, full.read_text().splitlines())
    w = World(signer, part.read_text().splitlines())
    w.lines.insert(w.at(6), other.lines[other.at(5)])
    part.write_text("\n".join(w.lines) + "\n")
    with pytest.raises(ledger.IntegrityViolation) as ei:
        ledger.verify_export(part)
    assert (ei.value.seq, ei.value.reason) == (5, "reorder")
