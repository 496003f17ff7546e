"""Several real processes appending to one ledger at once never fork the chain, never skip or
duplicate a seq (SQLite with its busy timeout, PostgreSQL with the head lock)."""

from __future__ import annotations

import itertools
import multiprocessing as mp
import time
import traceback
from collections import defaultdict
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import Any

import pytest

import ledger

PROCS = 4
APPENDS = 250


def _appender(url: str, key: str, n: int, count: int, go: Barrier, out: Any) -> None:
    """One process: ``count`` single-event appends to its own stream, each checked with
    ``expected_position`` (no other writer uses the stream, so none may conflict)."""
    try:
        signer = ledger.load_signer(Path(key))
        go.wait(120)  # every process loaded and ready: now all at once
        start = time.time()
        with ledger.Ledger(url, signer=signer, tool=f"proc-{n}") as lg:
            for i in range(count):
                lg.append(f"proc/{n}", ledger.NewEvent("tick", {"proc": n, "i": i}),
                          expected_position=i)
        out.put((n, "ok", (start, time.time())))
    except BaseException:
        out.put((n, "error", traceback.format_exc()))


def _shared_appender(url: str, key: str, n: int, count: int, go: Barrier, out: Any) -> None:
    """One process: ``count`` appends to a stream every process writes, each after reading the
    position (optimistic concurrency): a conflict is retried, never written twice."""
    try:
        signer = ledger.load_signer(Path(key))
        go.wait(120)  # every process loaded and ready: now all at once
        conflicts = 0
        with ledger.Ledger(url, signer=signer) as lg:
            done = 0
            while done < count:
                pos = lg.stream_position("shared")
                try:
                    lg.append("shared", ledger.NewEvent("tick", {"proc": n, "i": done}),
                              expected_position=pos)
                    done += 1
                except ledger.StreamConflict as e:
                    assert e.expected == pos and e.actual > pos
                    conflicts += 1
        out.put((n, "ok", conflicts))
    except BaseException:
        out.put((n, "error", traceback.format_exc()))


def _run(target: Any, url: str, key: Path, count: int) -> list[Any]:
    ctx = mp.get_context("spawn")
    go = ctx.Barrier(PROCS)
    out = ctx.Queue()
    procs = [ctx.Process(target=target, args=(url, str(key), n, count, go, out))
             for n in range(PROCS)]
    for p in procs:
        p.start()
    results = [out.get(timeout=240) for _ in procs]
    for p in procs:
        p.join(60)
        assert p.exitcode == 0, f"process {p.pid} exit code {p.exitcode}"
    errors = [r[2] for r in results if r[1] != "ok"]
    assert not errors, "\n".join(errors)
    return sorted(results)


@pytest.mark.slow
def test_four_processes_append_to_one_ledger(
    db_url: str, signer: ledger.Signer, tmp_path: Path
) -> None:
    """The ledger starts empty: the processes also race for the schema and the genesis."""
    started = time.monotonic()
    results = _run(_appender, db_url, tmp_path / "signing.pem", APPENDS)
    elapsed = time.monotonic() - started
    # They really ran at the same time: every process was appending before any had finished.
    spans = [r[2] for r in results]
    assert max(s for s, _ in spans) < min(e for _, e in spans), spans

    with ledger.Ledger(db_url, create=False) as lg:
        events = list(lg.read())
        assert [e.seq for e in events] == list(range(1, PROCS * APPENDS + 2))  # + genesis
        assert lg.head().seq == PROCS * APPENDS + 1
        per_stream: dict[str, list[int]] = defaultdict(list)
        for e in events[1:]:
            per_stream[e.stream].append(e.stream_seq)
            assert ledger.canonical.loads(e.payload)["i"] == e.stream_seq - 1
        assert per_stream == {f"proc/{n}": list(range(1, APPENDS + 1)) for n in range(PROCS)}
        # The chain is one line: every event links to the one before it.
        assert all(b.prev_hash == a.hash for a, b in itertools.pairwise(events))
        r = lg.verify()
        assert (r.events, r.head) == (PROCS * APPENDS + 1, ledger.Head(events[-1].seq,
                                                                        events[-1].hash))
        assert len({e.hash for e in events}) == len(events)
        # SQLite's busy handler is not fair: often one process takes the lock for all its
        # appends before the next gets it. PostgreSQL interleaves them.
        switches = sum(1 for a, b in itertools.pairwise(events[1:])
                       if a.stream != b.stream)
    print(f"\n{PROCS}x{APPENDS} appends on {db_url.split(':')[0]}: {elapsed:.1f}s, "
          f"{switches} stream switches")


@pytest.mark.slow
def test_optimistic_concurrency_on_one_stream(
    db_url: str, signer: ledger.Signer, tmp_path: Path
) -> None:
    with ledger.Ledger(db_url, signer=signer) as lg:
        lg.initialize()
    count = 40
    results = _run(_shared_appender, db_url, tmp_path / "signing.pem", count)
    with ledger.Ledger(db_url, create=False) as lg:
        shared = list(lg.read_stream("shared"))
        assert [e.stream_seq for e in shared] == list(range(1, PROCS * count + 1))
        by_proc: dict[int, list[int]] = defaultdict(list)
        for e in shared:
            p = ledger.canonical.loads(e.payload)
            by_proc[p["proc"]].append(p["i"])
        assert by_proc == {n: list(range(count)) for n in range(PROCS)}  # none lost or doubled
        assert lg.verify().events == PROCS * count + 1
    print(f"\nconflicts retried per process: {[r[2] for r in results]}")
