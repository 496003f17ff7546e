#!/usr/bin/env python3
"""What verify-before-act costs: the check `start`, `resume` and `rollback` make (issue 7).

    python benchmarks/verify_bench.py [--sizes 10000,100000,1000000] [--no-pg]

For each size N, a ledger of N events (appends of 100 events, ~300-byte payloads, one upgrade
run of 20 events among them) is built on a SQLite file and, unless --no-pg, on a throwaway
PostgreSQL 15 cluster. Measured, each the median of 5 runs, in one process:

* ``full``: ``Ledger.verify()`` over the whole chain (what a first run, or a lost local
  checkpoint, costs);
* ``before act``: ``statekeeper.trust.verify_before_act`` after one more append (one new
  event since the local checkpoint), including the run's 20-event stream and writing the new
  local checkpoint: what every `start`/`resume`/`rollback` pays;
* ``stream``: ``Ledger.verify_stream`` of the run alone.

The ratio column is full / before act. Exit status 0 (a measurement, not a test).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import ledger  # noqa: E402
from statekeeper.trust import verify_before_act  # noqa: E402

RUN = "upgrade/20261202-000000-abcdef"


def build(url: str, signer: ledger.Signer, n: int) -> None:
    pad = "x" * 240
    with ledger.Ledger(url, signer=signer) as lg:
        written, i = 1, 0
        while written < n - 20:
            size = min(100, n - 20 - written)
            lg.append(f"ops/{i % 50}", [ledger.NewEvent("bench.event", {"i": i + j, "pad": pad})
                                        for j in range(size)])
            written += size
            i += size
            if written * 2 // n != (written - size) * 2 // n:  # the run, midway
                for k in range(20):
                    lg.append(RUN, ledger.NewEvent("step.succeeded", {"k": k}))
                written += 20


def median_s(fn: Callable[[], object], runs: int = 5) -> float:
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def measure(url: str, signer: ledger.Signer, base: Path) -> tuple[float, float, float, int]:
    with ledger.Ledger(url, signer=signer) as lg:
        events = lg.head().seq
        full = median_s(lg.verify, 3 if events > 200_000 else 5)
        verify_before_act(lg, base, RUN)  # the local checkpoint, as the last command left it

        def one_more() -> None:
            lg.append("ops/next", ledger.NewEvent("bench.event", {}))
            lg._trusted = None  # a new process trusts no head it did not write or verify
            t0 = time.perf_counter()
            verify_before_act(lg, base, RUN)
            timings.append(time.perf_counter() - t0)

        timings: list[float] = []
        for _ in range(5):
            one_more()
        act = statistics.median(timings)
        stream = median_s(lambda: lg.verify_stream(RUN))
    return full, act, stream, events


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="10000,100000,1000000")
    ap.add_argument("--no-pg", action="store_true")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    root = Path(tempfile.mkdtemp(prefix="sk-verify-bench-"))
    signer = ledger.generate_key_file(root / "k.pem")
    cluster = None
    backends: list[tuple[str, Callable[[int], str]]] = [
        ("sqlite", lambda n: f"sqlite:///{root / f'l{n}.db'}"),
    ]
    if not args.no_pg:
        from tests.pgcluster import PgCluster

        cluster = PgCluster(conf={"fsync": "on", "synchronous_commit": "on"}).start()
        backends.append(("postgresql", lambda n: cluster.url(cluster.createdb(f"v{n}"))))
    rows = []
    try:
        for name, url_for in backends:
            for n in sizes:
                url = url_for(n)
                build(url, signer, n)
                full, act, stream, events = measure(url, signer, root / f"{name}-{n}")
                rows.append((name, events, full, act, stream))
                print(f"  {name} {events}: full {full:.3f}s, before act {act * 1000:.1f} ms",
                      file=sys.stderr, flush=True)
    finally:
        if cluster is not None:
            cluster.destroy()
        shutil.rmtree(root, ignore_errors=True)
    print(f"{'backend':<11} {'events':>9} {'full verify':>12} {'before act':>11} "
          f"{'run stream':>11} {'full/act':>9}")
    for name, events, full, act, stream in rows:
        print(f"{name:<11} {events:>9} {full:>11.3f}s {act * 1000:>9.1f}ms "
              f"{stream * 1000:>9.1f}ms {full / act:>8.0f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
