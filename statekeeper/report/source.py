"""The report's imperative shell: verify the ledger, then replay it stream by stream.

Nothing but the ledger is read (no lease table, no target, no backup directory). The whole
chain is verified first (never the local checkpoint's shortcut: the report is for someone who
trusts no shortcut), against the officer's checkpoint when given; if verification fails at
seq N, only events before N are read. Runs and operations are then read one stream at a
time, in the order they were created, and handed to the renderers one entry at a time, so a
ledger of a million events costs the memory of its largest run, not of the ledger.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError, HistoryError
from ..opreplay import STREAM_PREFIX as OPS_PREFIX
from .model import (
    REHEARSE_OP,
    SCHEMA_VERSION,
    Summary,
    TimeZone,
    integrity_entry,
    reverify_steps,
)

if TYPE_CHECKING:
    from ledger import Checkpoint, Ledger, StoredEvent

    from ..opreplay import Operation
    from ..replay import RunEvent

RUNS_PREFIX = "upgrade/"


@dataclass(frozen=True)
class Scope:
    """What the report covers: one run or operation, or those created in [since, until)."""

    run_id: str | None = None
    since: datetime | None = None
    until: datetime | None = None

    def to_dict(self, tz: TimeZone) -> dict[str, Any]:
        def iso(t: datetime | None) -> str | None:
            return None if t is None else t.astimezone(tz.zone).isoformat(timespec="seconds")

        return {"run": self.run_id, "since": iso(self.since), "until": iso(self.until)}


@dataclass
class Report:
    """A report being read: ``header`` (known before any entry), :meth:`entries` (read once,
    in creation order), then ``summary`` and ``footer`` (complete after the entries)."""

    header: dict[str, Any]
    footer: dict[str, Any]
    _lg: Ledger
    _tz: TimeZone
    _scope: Scope
    _trusted: int
    _streams: list[str] = field(default_factory=list)
    summary: Summary = field(default_factory=Summary)
    #: the ledger's trusted rehearse operations by (target, plan digest), read once when the
    #: first run needs them, whatever the scope (a run's rehearsal may predate --since)
    _rehearsals: dict[tuple[str | None, str | None], list[Operation]] | None = None

    @property
    def ok(self) -> bool:
        return bool(self.header["integrity"]["ok"])

    def entries(self) -> Iterator[dict[str, Any]]:
        for stream in self._streams:
            entry = self._entry(stream)
            if entry is None:
                continue
            self.summary.add(entry)
            yield entry

    def _events(self, stream: str) -> list[StoredEvent]:
        out = []
        for ev in self._lg.read_stream(stream):
            if ev.seq > self._trusted:
                break
            out.append(ev)
        return out

    def _entry(self, stream: str) -> dict[str, Any] | None:
        import ledger.canonical as canonical

        stored = self._events(stream)
        if not stored:
            return None  # wholly after the first bad seq: nothing of it is trusted
        ident = stream.split("/", 1)[1]
        tz = self._tz
        try:
            decoded = [(ev, canonical.loads(ev.payload), canonical.loads(ev.actor))
                        for ev in stored]
        except ValueError as e:
            from .model import unreadable_entry

            kind = "run" if stream.startswith(RUNS_PREFIX) else "operation"
            return unreadable_entry(tz, kind, ident, f"payload unreadable: {e}", stored[0].seq,
                                    stored[0].recorded_at, None)
        truncated = self._trusted < self.footer["head"]["seq"] and len(stored) < (
            self._lg.stream_position(stream))
        if stream.startswith(OPS_PREFIX):
            return _op_entry(tz, ident, decoded, truncated)
        return _run_entry(tz, ident, decoded, self._trusted if truncated else None,
                          self._rehearsals_of)

    def _rehearsals_of(self, target: str, digest: str, before_seq: int) -> list[Operation]:
        if self._rehearsals is None:
            self._rehearsals = self._read_rehearsals()
        return [op for op in self._rehearsals.get((target, digest), [])
                if op.first_seq < before_seq]

    def _read_rehearsals(self) -> dict[tuple[str | None, str | None], list[Operation]]:
        """Every trusted ``rehearse`` operation, in creation order. Only each operation's
        first event is read to tell a rehearsal from the others; a rehearsal that cannot be
        replayed is left out here (its own entry says why, when in scope)."""
        import ledger.canonical as canonical

        from ..opreplay import replay

        out: dict[tuple[str | None, str | None], list[Operation]] = {}
        for name, *_ in self._lg.streams(OPS_PREFIX):
            first = None
            for first in self._lg.read_stream(name, upto=self._trusted):  # noqa: B007
                break  # the generator (its cursor) is closed as the loop drops it
            try:
                if first is None or canonical.loads(first.payload).get("op") != REHEARSE_OP:
                    continue
                decoded = [(ev, canonical.loads(ev.payload), canonical.loads(ev.actor))
                           for ev in self._events(name)]
                op = replay(_run_events(decoded), name[len(OPS_PREFIX):])
            except (ValueError, AttributeError, HistoryError):
                continue
            out.setdefault((op.target, _text(op.args.get("plan_digest"))), []).append(op)
        return out


def _run_events(decoded: list[tuple[StoredEvent, Any, Any]]) -> list[RunEvent]:
    from ..replay import RunEvent

    return [RunEvent(ev.stream_seq, ev.type, p, ev.recorded_at, ev.seq,
                     a if isinstance(a, dict) else {}) for ev, p, a in decoded]


def _unreadable(tz: TimeZone, kind: str, ident: str, e: HistoryError,
                events: list[RunEvent]) -> dict[str, Any]:
    from .model import unreadable_entry

    seq = e.seq or 0
    return unreadable_entry(tz, kind, ident, f"event #{e.position} (seq {seq}): {e.reason}",
                            seq, events[0].at, events[0].actor)


def _op_entry(tz: TimeZone, op_id: str, decoded: list[tuple[StoredEvent, Any, Any]],
              truncated: bool) -> dict[str, Any]:
    from ..opreplay import replay
    from .model import op_entry

    events = _run_events(decoded)
    try:
        op = replay(events, op_id)
    except HistoryError as e:
        return _unreadable(tz, "operation", op_id, e, events)
    return {**op_entry(tz, op), "truncated": truncated}


def _text(v: Any) -> str | None:
    return v if isinstance(v, str) else None


def _run_entry(tz: TimeZone, run_id: str, decoded: list[tuple[StoredEvent, Any, Any]],
               trusted: int | None,
               rehearsals: Callable[[str, str, int], list[Operation]]) -> dict[str, Any]:
    from ..replay import apply
    from .model import run_entry

    events = _run_events(decoded)
    run = None
    try:
        for rev in events:
            run = apply(run, rev)
            if rev.position == 1 and run.run_id != run_id:
                raise HistoryError(1, f"run.created names run {run.run_id!r}", rev.seq)
    except HistoryError as e:
        return _unreadable(tz, "run", run_id, e, events)
    assert run is not None
    return run_entry(tz, run, events, trusted,
                     rehearsals(run.plan.target, run.plan.digest(), events[0].seq))


def open_report(lg: Ledger, *, tz: TimeZone, scope: Scope, generated_at: str,
                against: Checkpoint | None = None, against_file: str | None = None,
                tool: str = "") -> Report:
    """Verify ``lg`` (against ``against`` when given) and get the report ready to read.
    A failed verification does not raise: the report says so, and reads only what came
    before the first bad seq. An unknown ``scope.run_id`` raises ConfigError."""
    import ledger

    head = lg.head()
    try:
        v = lg.verify(against=against)
        integrity = integrity_entry(ok=True, events=v.events, head_seq=v.head.seq)
        ledger_id = v.ledger_id
        sealing = list(v.keys)
    except ledger.IntegrityViolation as e:
        bad = e.seq if e.seq is not None else 1
        integrity = integrity_entry(ok=False, events=max(bad - 1, 0), head_seq=head.seq,
                                    bad_seq=e.seq, reason=e.reason, detail=e.detail)
        ledger_id = None
        sealing = []
        with contextlib.suppress(ledger.LedgerError, ValueError, KeyError):
            ledger_id = lg.ledger_id()
    trusted = int(integrity["trusted_through_seq"])
    if scope.run_id is not None:
        names = [f"{RUNS_PREFIX}{scope.run_id}", f"{OPS_PREFIX}{scope.run_id}"]
        streams = [n for n in names if lg.stream_position(n) > 0]
        if not streams:
            raise ConfigError(f"--run {scope.run_id}: no run or operation with that id in the "
                              "ledger")
    else:
        streams = []
        for name, _count, first_at, _last in lg.streams(""):
            if not name.startswith((RUNS_PREFIX, OPS_PREFIX)):
                continue
            from .model import parse_utc

            at = parse_utc(first_at)
            if scope.since is not None and at < scope.since:
                continue
            if scope.until is not None and at >= scope.until:
                continue
            streams.append(name)
    listed = lg.keys()
    keys = sorted(k.key_id for k in listed)
    cp = None
    if against is not None:
        cp = {"file": against_file, "seq": against.seq, "hash": against.head_hash,
              "origin": against.origin}
    header = {
        "schema_version": SCHEMA_VERSION,
        "generated_at": generated_at,
        "tool": tool,
        "timezone": tz.name,
        "scope": scope.to_dict(tz),
        "integrity": integrity,
    }
    footer = {
        "ledger_id": ledger_id,
        "ledger": lg.display_url,
        "head": {"seq": head.seq, "hash": head.hash},
        "verified_against": cp,
        "keys": keys,
        "keys_sealing": sealing,
        "reverify": reverify_steps(ledger_id, against_file),
    }
    return Report(header, footer, lg, tz, scope, trusted, streams)


def checkpoint_label(path: Path | None) -> str | None:
    return None if path is None else str(path)
