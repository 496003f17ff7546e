"""The run index: which runs are on which target and whether they settled, without replaying
every run of a long ledger.

A derived table in the ledger database (``statekeeper_run_index``: run id, seq of its
``run.created``, stream position folded, target, state, MAC) and a high-water mark (the seq
the index is caught up to). It is bookkeeping, never history, and never trusted over the
ledger:

- Which runs exist comes from the ledger itself (the partial index of stream starts,
  :meth:`ledger.Ledger.stream_starts`), not from the table: a row deleted, or one added for
  a run that does not exist, changes nothing.
- Each row carries an HMAC under a key only the signing key's holder can derive (the
  Ed25519 signature, deterministic, of a fixed message naming the ledger), so a row edited
  by hand (another target, a settled state) fails its MAC and is derived again from the
  run's stream. The mark is MACed the same way (a raised mark would skip events).
- A row of the target acted on must also be fresh: its position is the stream's position in
  the verified chain (a MACed row of an earlier moment put back is stale, and derived again).
- Events after the mark are folded in: each run they touch is replayed (its stream alone).

So what a command decides on is the runs' own replayed streams; the index only says which
streams can be skipped. Writes are best effort: where the table cannot be created or written
(a role with only SELECT and INSERT on the ledger's tables), the same derivation runs in
memory and nothing is stored.

Reading one row per run still costs O(runs) (seconds at a million events), so the busy check
reads a completeness proof first: the *summary* (``statekeeper_run_summary``), one MACed row
saying "as of seq ``upto``, whose event has hash ``hash``, these runs and no others are not
settled". It is a pure function of the verified chain up to ``upto``, so even a genuine old
summary put back is correct once caught up: the runs touched by the events after ``upto``
are replayed and replace their entries. A summary that fails its MAC, is missing, names a
seq beyond the verified head, or whose ``upto`` event no longer has its hash (a ledger
restored from a backup and extended since) is derived again from the per-run rows above.
So the busy check reads O(unsettled runs + new events), never O(runs), and the runs it
names are still verified and replayed by the caller before anything is decided on them.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .runner import STREAM_PREFIX, stream_of

if TYPE_CHECKING:
    from ledger import Ledger

#: (ledger, run id, upto) -> the run replayed: a Run, an Unreadable (``.target``), or None
Replay = Callable[["Ledger", str, int], Any]

INDEX_TABLE = "statekeeper_run_index"
SUMMARY_TABLE = "statekeeper_run_summary"
_DDL = {
    INDEX_TABLE: f"CREATE TABLE {INDEX_TABLE} (run_id VARCHAR(200) NOT NULL PRIMARY KEY, "
    "created_seq BIGINT NOT NULL, position BIGINT NOT NULL, target VARCHAR(1000), "
    "state VARCHAR(40) NOT NULL, mac VARCHAR(64) NOT NULL)",
    SUMMARY_TABLE: f"CREATE TABLE {SUMMARY_TABLE} (name VARCHAR(40) NOT NULL PRIMARY KEY, "
    "upto BIGINT NOT NULL, hash VARCHAR(64) NOT NULL, body TEXT NOT NULL, "
    "mac VARCHAR(64) NOT NULL)",
}
MARK = ""  # the run_id of the row holding the high-water mark (created_seq = the mark)
SUMMARY = "unsettled"  # the name of the one summary row
#: States a run leaves no trace of in the summary (upgrade.SETTLED, and a stream with no run).
_SETTLED = frozenset(("completed", "rolled_back", "empty"))

#: Bumped when a row's meaning or MAC changes: every row of an older version fails its MAC.
VERSION = 1


@dataclass(frozen=True)
class Row:
    run_id: str
    created_seq: int
    position: int
    target: str | None
    state: str


def mac_key(lg: Ledger) -> bytes | None:
    """The index's MAC key: derived from a signature only the signing key can make (Ed25519
    is deterministic), bound to this ledger. None without a signing key."""
    if lg.signer is None:
        return None
    msg = f"statekeeper-run-index-v{VERSION}\n{lg.ledger_id()}\n".encode()
    return hashlib.sha256(lg.signer.sign(msg)).digest()


def _mac(key: bytes, r: Row) -> str:
    text = f"{r.run_id}\n{r.created_seq}\n{r.position}\n{r.target}\n{r.state}"
    return hmac.new(key, text.encode(), hashlib.sha256).hexdigest()


def _summary_mac(key: bytes, upto: int, hash_: str, body: str) -> str:
    text = f"statekeeper-run-summary-v{VERSION}\n{upto}\n{hash_}\n{body}"
    return hmac.new(key, text.encode(), hashlib.sha256).hexdigest()


def _body(rows: Iterable[Row]) -> str:
    return json.dumps(
        [[r.run_id, r.created_seq, r.position, r.target, r.state]
         for r in sorted(rows, key=lambda r: r.created_seq)],
        separators=(",", ":"),
    )


def _row_of(run_id: str, created_seq: int, run: Any) -> Row:
    from .replay import Run

    if isinstance(run, Run):
        return Row(run_id, created_seq, run.position, run.plan.target, run.state)
    if run is None:
        return Row(run_id, created_seq, 0, None, "empty")
    return Row(run_id, created_seq, 0, run.target, "unreadable")


class RunIndex:
    """The index of one ledger, read and caught up to a verified head by a key holder."""

    def __init__(self, lg: Ledger, key: bytes) -> None:
        self.lg = lg
        self.key = key
        self.recorder = lg.recorder
        self.writable = True
        try:
            self.recorder.ensure_side_tables(_DDL)
        except Exception:  # no DDL rights: derive in memory, store nothing
            self.writable = False
        #: rows derived again (not trusted as stored) in the last catch-up: for tests/bench
        self.derived: list[str] = []

    def _load(self) -> tuple[int, dict[str, Row]]:
        if not self.writable:
            return 0, {}
        mark = 0
        rows: dict[str, Row] = {}
        try:
            with self.recorder.side_transaction() as tx:
                got = tx.execute(f"SELECT run_id, created_seq, position, target, state, mac "
                                 f"FROM {INDEX_TABLE}")
            for rid, cseq, pos, target, state, mac in got:
                r = Row(rid, int(cseq), int(pos), target, state)
                if not hmac.compare_digest(_mac(self.key, r), str(mac)):
                    continue  # edited, or under another key: derived again below
                if rid == MARK:
                    mark = r.created_seq
                else:
                    rows[rid] = r
        except Exception:
            return 0, {}
        return mark, rows

    def _store(self, changed: Iterable[Row], mark: int) -> None:
        if not self.writable:
            return
        mark_row = Row(MARK, mark, 0, None, "mark")
        changed = [*changed, mark_row]
        # Derived rows replace whatever is stored under their run id (an edited row, a
        # concurrent catch-up's: both are derived from the same verified ledger).
        with contextlib.suppress(Exception), self.recorder.side_transaction() as tx:
            ids = [r.run_id for r in changed]
            for i in range(0, len(ids), 500):
                part = ids[i:i + 500]
                tx.execute(f"DELETE FROM {INDEX_TABLE} WHERE run_id IN "
                           f"({', '.join(['{p}'] * len(part))})", part)
            tx.executemany(
                f"INSERT INTO {INDEX_TABLE} (run_id, created_seq, position, target, state, mac) "
                "VALUES ({p}, {p}, {p}, {p}, {p}, {p})",
                [(r.run_id, r.created_seq, r.position, r.target, r.state, _mac(self.key, r))
                 for r in changed])

    def rows(self, upto: int, target: str | None, replay: Replay) -> list[Row]:
        """Every run created at or before seq ``upto`` (a head the chain verified), as of that
        head, with the rows of ``target`` (None: of every target) checked fresh against the
        ledger; ``replay`` derives a row the index cannot vouch for from the run's stream."""
        lg = self.lg
        starts = lg.stream_starts(STREAM_PREFIX, upto=upto)
        mark, stored = self._load()
        if mark > upto:
            mark, stored = 0, {}  # a mark beyond the verified head: trust nothing of it
        touched: set[str] = set()
        if mark < upto:
            for ev in lg.recorder.iter_events(start=mark + 1, stop=upto,
                                              stream_prefix=STREAM_PREFIX):
                touched.add(ev[0].stream[len(STREAM_PREFIX):])
        out: list[Row] = []
        need: list[tuple[str, int]] = []
        for stream, cseq in starts:
            rid = stream[len(STREAM_PREFIX):]
            r = stored.get(rid)
            if r is None or r.created_seq != cseq or rid in touched:
                need.append((rid, cseq))
            else:
                out.append(r)
        # A row of the target acted on must be the stream as the verified chain has it.
        mine = [r for r in out if target is None or r.target == target]
        if mine:
            positions = lg.stream_positions([stream_of(r.run_id) for r in mine], upto)
            stale = {r.run_id for r in mine if positions.get(stream_of(r.run_id)) != r.position}
            if stale:
                need += [(r.run_id, r.created_seq) for r in out if r.run_id in stale]
                out = [r for r in out if r.run_id not in stale]
        self.derived = [rid for rid, _ in need]
        fresh = [_row_of(rid, cseq, replay(lg, rid, upto)) for rid, cseq in need]
        if fresh or mark != upto:
            self._store(fresh, upto)
        out += fresh
        out.sort(key=lambda r: r.created_seq)
        return out

    # -- the summary: the unsettled runs, O(unsettled) -----------------------------------------
    def _load_summary(self) -> tuple[int, str, list[Row]] | None:
        if not self.writable:
            return None
        try:
            with self.recorder.side_transaction() as tx:
                got = tx.execute(f"SELECT upto, hash, body, mac FROM {SUMMARY_TABLE} "
                                 "WHERE name = {p}", (SUMMARY,))
            if not got:
                return None
            row = got[0]
            upto, hash_, body, mac = int(row[0]), str(row[1]), str(row[2]), str(row[3])
            if not hmac.compare_digest(_summary_mac(self.key, upto, hash_, body), mac):
                return None  # edited, or under another key
            rows = [Row(str(a), int(b), int(c), None if d is None else str(d), str(e))
                    for a, b, c, d, e in json.loads(body)]
        except Exception:
            return None
        return upto, hash_, rows

    def _store_summary(self, upto: int, hash_: str, rows: Iterable[Row]) -> None:
        if not self.writable:
            return
        body = _body(rows)
        with contextlib.suppress(Exception), self.recorder.side_transaction() as tx:
            tx.execute(f"DELETE FROM {SUMMARY_TABLE} WHERE name = {{p}}", (SUMMARY,))
            tx.execute(f"INSERT INTO {SUMMARY_TABLE} (name, upto, hash, body, mac) "
                       "VALUES ({p}, {p}, {p}, {p}, {p})",
                       (SUMMARY, upto, hash_, body, _summary_mac(self.key, upto, hash_, body)))

    def _hash_at(self, seq: int) -> str | None:
        ev = next(iter(self.lg.read(seq, seq)), None)
        return None if ev is None else ev.hash

    def _mark(self) -> int | None:
        """The per-run rows' high-water mark, if its row is genuine."""
        if not self.writable:
            return None
        with contextlib.suppress(Exception), self.recorder.side_transaction() as tx:
            got = tx.execute(f"SELECT created_seq, position, target, state, mac "
                             f"FROM {INDEX_TABLE} WHERE run_id = {{p}}", (MARK,))
            if got:
                row = got[0]
                r = Row(MARK, int(row[0]), int(row[1]), row[2], str(row[3]))
                if hmac.compare_digest(_mac(self.key, r), str(row[4])):
                    return r.created_seq
        return None

    def unsettled(self, upto: int, replay: Replay) -> list[Row]:
        """Every run created at or before seq ``upto`` (a head the chain verified) that is not
        settled as of that head (in flight, failed, unreadable), in the order created, of
        every target. Read from the summary and the events after it; derived again from the
        per-run rows when the summary cannot vouch for itself."""
        hash_ = self._hash_at(upto)
        if hash_ is None:
            return []
        got = self._load_summary()
        if got is not None:
            s_upto, s_hash, rows = got
            if s_upto <= upto and self._hash_at(s_upto) == s_hash:
                return self._catch_up(s_upto, rows, upto, hash_, replay)
        rows = [r for r in self.rows(upto, None, replay) if r.state not in _SETTLED]
        self._store_summary(upto, hash_, rows)
        return sorted(rows, key=lambda r: r.created_seq)

    def _catch_up(
        self, s_upto: int, rows: list[Row], upto: int, hash_: str, replay: Replay
    ) -> list[Row]:
        lg = self.lg
        self.derived = []
        if s_upto == upto:
            return sorted(rows, key=lambda r: r.created_seq)
        by_id = {r.run_id: r for r in rows}
        touched: dict[str, int | None] = {}  # run id -> its created seq, when seen
        for ev, _ in lg.recorder.iter_events(start=s_upto + 1, stop=upto,
                                             stream_prefix=STREAM_PREFIX):
            rid = ev.stream[len(STREAM_PREFIX):]
            if ev.stream_seq == 1:
                touched[rid] = ev.seq
            else:
                touched.setdefault(rid, None)
        fresh: list[Row] = []
        for rid, cseq in touched.items():
            if cseq is None:
                old = by_id.get(rid)
                if old is not None:
                    cseq = old.created_seq
                else:
                    first = next(iter(lg.read_stream(stream_of(rid), upto)), None)
                    cseq = first.seq if first is not None else 0
            row = _row_of(rid, cseq, replay(lg, rid, upto))
            fresh.append(row)
            by_id.pop(rid, None)
            if row.state not in _SETTLED:
                by_id[rid] = row
        self.derived = list(touched)
        out = sorted(by_id.values(), key=lambda r: r.created_seq)
        self._store_summary(upto, hash_, out)
        # The per-run rows follow when they were caught up to where the summary was (so the
        # fallback stays cheap); otherwise their own catch-up will fold these events in.
        if self._mark() == s_upto:
            self._store(fresh, upto)
        return out
