#!/usr/bin/env python3
"""Ledger benchmark: statekeeper's signed ledger beside plain SQLAlchemy Core and eventsourcing.

    python benchmarks/ledger_bench.py [--events N] [--quick] [--no-pg]

One run measures, on a SQLite file (WAL, synchronous=FULL) and on a throwaway PostgreSQL 15
cluster started here (fsync=on, synchronous_commit=on), with ~300-byte payloads:

* append throughput at 1 event per commit and at 100 per commit, by the ledger (hashed and
  sealed: one Ed25519 signature per commit), by plain SQLAlchemy Core INSERTs of the same rows
  (no hashing, no signing) and by the ``eventsourcing`` library (an Application saving an
  aggregate with 1 or 100 pending events);
* read throughput of N events (default 100k) by each of the three;
* ledger verify throughput over those N events (100 events per seal);
* pgbench's one-INSERT-per-transaction rate on the same cluster: the server's own limit;
* peak RSS of ``statekeeper ledger verify`` and ``ledger export`` over 1M events, each in a
  child process (SQLite only: memory is a property of the streaming code, not the backend).

Throughputs are the median of 3 runs (runs of the three systems are interleaved so that a
slow moment of the disk does not land on one of them only); the 1-per-commit appends, where a
single fsync stall weighs most, take the median of 9 shorter runs instead. The RSS figures
are single runs.
It prints one table and the targets of issue 2 marked met or missed; exit status 0 either way
(this is a measurement, not a test).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from sqlalchemy import Engine, create_engine, event, select  # noqa: E402

import ledger  # noqa: E402
from ledger.recorders import events as events_table  # noqa: E402
from ledger.recorders import metadata  # noqa: E402

EVENT_TYPE = "bench.event"
ZERO = "0" * 64


# -- the workload -------------------------------------------------------------------------------
def make_payload(i: int) -> dict[str, Any]:
    """A ~300-byte JSON object (canonical form), different for every event."""
    return {
        "account": f"acct-{i % 977:06d}",
        "amount_cents": 100_000 + (i * 7919) % 900_000,
        "currency": "EUR",
        "host": "app-03.prod.example.net",
        "migration": f"V{i % 400:04d}__add_column_to_orders.sql",
        "note": "upgrade step completed; checksum verified, row counts recorded",
        "order_id": f"ord-{i:012d}",
        "release": "2.6.0",
        "run_id": f"{(i * 2654435761) % 2**32:08x}-5e1e-4c3a-9b1d-{i:012x}",
        "step": "migrating",
    }


PAYLOADS: list[dict[str, Any]] = []


def payloads(n: int) -> list[dict[str, Any]]:
    while len(PAYLOADS) < n:
        PAYLOADS.append(make_payload(len(PAYLOADS)))
    return PAYLOADS


def canonical_size() -> int:
    return len(ledger.canonical.dumps(make_payload(123_456)).encode())


def now_text() -> str:
    return ledger.format_time(datetime.now(UTC))


# -- the three systems --------------------------------------------------------------------------
class System:
    """One store on one backend: append 1 per commit, append a batch, read everything."""

    name = ""
    db_file: Path | None = None  # the SQLite file, if it is one

    def append_one(self, n: int) -> None:
        raise NotImplementedError

    def append_batches(self, n: int, size: int) -> None:
        raise NotImplementedError

    def read_all(self) -> int:
        raise NotImplementedError

    def close(self) -> None:
        pass


class LedgerSystem(System):
    name = "statekeeper"

    def __init__(self, url: str, signer: ledger.Signer) -> None:
        self.lg = ledger.Ledger(url, signer=signer, tool="ledger-bench")
        self.db_file = ledger.database_file(url)
        self.lg.initialize()
        self.one_pos = 0
        self.batch = 0
        self.i = 0

    def append_one(self, n: int) -> None:
        ps = payloads(self.i + n)
        lg, NewEvent = self.lg, ledger.NewEvent
        pos, i = self.one_pos, self.i
        for k in range(n):
            lg.append("bench/one", NewEvent(EVENT_TYPE, ps[i + k]), expected_position=pos)
            pos += 1
        self.one_pos, self.i = pos, i + n

    def append_batches(self, n: int, size: int) -> None:
        ps = payloads(self.i + n)
        lg, NewEvent = self.lg, ledger.NewEvent
        i = self.i
        for start in range(0, n, size):
            self.batch += 1
            items = [NewEvent(EVENT_TYPE, ps[i + start + k]) for k in range(size)]
            lg.append(f"bench/run-{self.batch}", items, expected_position=0)
        self.i = i + n

    def read_all(self) -> int:
        count = 0
        for _ev in self.lg.read():
            count += 1
        return count

    def verify(self) -> int:
        return self.lg.verify().events

    def close(self) -> None:
        self.lg.close()


class PlainSystem(System):
    """The same rows through SQLAlchemy Core, without hashing or signing."""

    name = "plain SQLAlchemy"

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        db = engine.url.database
        self.db_file = Path(db) if engine.url.get_backend_name() == "sqlite" and db else None
        metadata.create_all(engine)
        self.seq = 0
        self.one_pos = 0
        self.batch = 0
        self.actor = ledger.canonical.dumps(
            {"host": platform.node(), "pid": os.getpid(), "tool": "plain", "user": "bench"}
        )
        self.ins = events_table.insert()

    def _row(
        self, stream: str, sseq: int, p: dict[str, Any], at: str, closes: bool
    ) -> dict[str, Any]:
        self.seq += 1
        return {
            "seq": self.seq, "stream": stream, "stream_seq": sseq, "type": EVENT_TYPE,
            "recorded_at": at, "actor": self.actor,
            "payload": json.dumps(p, sort_keys=True, separators=(",", ":"), ensure_ascii=False),
            "closes": closes, "prev_hash": ZERO, "stream_prev_hash": ZERO, "hash": ZERO,
        }

    def append_one(self, n: int) -> None:
        ps = payloads(self.seq + n)
        engine, ins = self.engine, self.ins
        for _ in range(n):
            self.one_pos += 1
            row = self._row("bench/one", self.one_pos, ps[self.seq], now_text(), True)
            with engine.begin() as conn:
                conn.execute(ins, row)

    def append_batches(self, n: int, size: int) -> None:
        ps = payloads(self.seq + n)
        engine, ins = self.engine, self.ins
        for _ in range(0, n, size):
            self.batch += 1
            stream, at = f"bench/run-{self.batch}", now_text()
            rows = [self._row(stream, k + 1, ps[self.seq], at, k == size - 1) for k in range(size)]
            with engine.begin() as conn:
                conn.execute(ins, rows)

    def read_all(self) -> int:
        count = 0
        stmt = select(events_table).order_by(events_table.c.seq)
        with self.engine.connect() as conn:
            result = conn.execution_options(stream_results=True, yield_per=2000).execute(stmt)
            for _row in result:
                count += 1
        return count

    def close(self) -> None:
        self.engine.dispose()


_ES: tuple[Any, Any] | None = None


def _es_classes() -> tuple[Any, Any]:
    """The aggregate and application classes, defined once (eventsourcing registers topics)."""
    global _ES
    if _ES is None:
        from eventsourcing.application import Application
        from eventsourcing.domain import Aggregate, event

        class Run(Aggregate):  # one aggregate = one stream
            @event("Started")
            def __init__(self, payload: dict[str, Any]) -> None:
                self.last = payload

            @event("Noted")
            def note(self, payload: dict[str, Any]) -> None:
                self.last = payload

        class BenchApp(Application[Any]):
            pass

        _ES = (Run, BenchApp)
    return _ES


class EventsourcingSystem(System):
    """eventsourcing 9.x: an Application saving one aggregate (a stream) per batch."""

    name = "eventsourcing"

    def __init__(self, env: dict[str, str]) -> None:
        db = env.get("SQLITE_DBNAME")
        self.db_file = Path(db) if db else None
        run_class, app_class = _es_classes()
        self.Run = run_class
        self.app = app_class(env=env)
        self.i = 0
        self.one: Any = None

    def append_one(self, n: int) -> None:
        ps = payloads(self.i + n)
        app, i = self.app, self.i
        first = 0
        if self.one is None:
            self.one = self.Run(ps[i])
            app.save(self.one)
            first = 1
        one = self.one
        for k in range(first, n):
            one.note(ps[i + k])
            app.save(one)
        self.i = i + n

    def append_batches(self, n: int, size: int) -> None:
        ps = payloads(self.i + n)
        app, Run, i = self.app, self.Run, self.i
        for start in range(0, n, size):
            agg = Run(ps[i + start])
            for k in range(1, size):
                agg.note(ps[i + start + k])
            app.save(agg)
        self.i = i + n

    def read_all(self) -> int:
        recorder = self.app.recorder
        count, start = 0, 1
        while True:
            page = recorder.select_notifications(start, limit=1000)  # type: ignore[attr-defined]
            if not page:
                return count
            count += len(page)
            start = page[-1].id + 1

    def close(self) -> None:
        self.app.close()


# -- the backends -------------------------------------------------------------------------------
class Backend:
    name = ""

    def ledger_url(self, tag: str) -> str:
        raise NotImplementedError

    def plain_engine(self, tag: str) -> Engine:
        raise NotImplementedError

    def es_env(self, tag: str) -> dict[str, str]:
        raise NotImplementedError


class SQLiteBackend(Backend):
    name = "SQLite"

    def __init__(self, root: Path) -> None:
        self.root = root

    def ledger_url(self, tag: str) -> str:
        return f"sqlite:///{self.root / f'ledger-{tag}.db'}"

    def plain_engine(self, tag: str) -> Engine:
        engine = create_engine(f"sqlite:///{self.root / f'plain-{tag}.db'}")

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _rec: Any) -> None:  # the ledger's durability settings
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=FULL")
            cur.close()

        return engine

    def es_env(self, tag: str) -> dict[str, str]:
        # eventsourcing's SQLite recorder switches to WAL itself; synchronous stays at the
        # library default, FULL (checked in main()).
        return {"PERSISTENCE_MODULE": "eventsourcing.sqlite",
                "SQLITE_DBNAME": str(self.root / f"es-{tag}.db")}


class PostgresBackend(Backend):
    name = "PostgreSQL"

    def __init__(self, cluster: Any) -> None:
        self.cluster = cluster

    def ledger_url(self, tag: str) -> str:
        return str(self.cluster.url(self.cluster.createdb(f"ledger_{tag}")))

    def plain_engine(self, tag: str) -> Engine:
        return create_engine(self.cluster.sqlalchemy_url(self.cluster.createdb(f"plain_{tag}")))

    def es_env(self, tag: str) -> dict[str, str]:
        return {"PERSISTENCE_MODULE": "eventsourcing.postgres",
                "POSTGRES_DBNAME": self.cluster.createdb(f"es_{tag}"),
                "POSTGRES_HOST": "127.0.0.1", "POSTGRES_PORT": str(self.cluster.port),
                "POSTGRES_USER": "postgres", "POSTGRES_PASSWORD": ""}


# -- measuring ----------------------------------------------------------------------------------
@dataclass
class Config:
    events: int  # read / verify size
    one: dict[str, int]  # events appended per 1-per-commit run, by backend
    batch_run: int  # events per 100-per-commit run
    reps: int
    one_reps: int  # 1-per-commit runs: more and shorter (single fsync stalls dominate them)
    pgbench_seconds: int
    rss_events: int


@dataclass
class Results:
    # (work, system, backend) -> events/s (or MB for the memory rows)
    rates: dict[tuple[str, str, str], float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def get(self, work: str, system: str, backend: str) -> float | None:
        return self.rates.get((work, system, backend))


def timed(fn: Callable[[], Any]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def progress(msg: str) -> None:
    print(f"  .. {msg}", file=sys.stderr, flush=True)


def interleaved(
    reps: int, systems: list[System], run: Callable[[System], float]
) -> dict[str, float]:
    """Median rate per system over ``reps`` runs, interleaving the systems run by run."""
    samples: dict[str, list[float]] = {s.name: [] for s in systems}
    for _ in range(reps):
        for s in systems:
            samples[s.name].append(run(s))
    return {k: statistics.median(v) for k, v in samples.items()}


def bench_backend(be: Backend, cfg: Config, signer: ledger.Signer, res: Results) -> None:
    n1 = cfg.one[be.name]
    # 1 event per commit: a store of its own for each system.
    progress(f"{be.name}: append, 1 event per commit ({cfg.one_reps} x {n1} events each)")
    one: list[System] = [
        LedgerSystem(be.ledger_url("one"), signer),
        PlainSystem(be.plain_engine("one")),
        EventsourcingSystem(be.es_env("one")),
    ]
    for s in one:  # warm up: connections, statement caches, the first stream position
        s.append_one(20)

    def run_one(s: System) -> float:
        return n1 / timed(lambda: s.append_one(n1))

    for name, rate in interleaved(cfg.one_reps, one, run_one).items():
        res.rates[("append1", name, be.name)] = rate
    for s in one:
        if s.db_file is not None:
            res.rates[("frames1", s.name, be.name)] = wal_frames_per_commit(s)
        s.close()

    # 100 events per commit, into the store that is then read and verified.
    size, nb = 100, cfg.batch_run
    progress(f"{be.name}: append, 100 events per commit ({cfg.reps} x {nb} events each)")
    main: list[System] = [
        LedgerSystem(be.ledger_url("main"), signer),
        PlainSystem(be.plain_engine("main")),
        EventsourcingSystem(be.es_env("main")),
    ]

    def run_batch(s: System) -> float:
        return nb / timed(lambda: s.append_batches(nb, size))

    for name, rate in interleaved(cfg.reps, main, run_batch).items():
        res.rates[("append100", name, be.name)] = rate
    rest = cfg.events - cfg.reps * nb
    if rest > 0:
        progress(f"{be.name}: filling up to {cfg.events} events (100 per commit)")
        for s in main:
            s.append_batches(rest, size)

    progress(f"{be.name}: read {cfg.events} events")

    def run_read(s: System) -> float:
        count = 0

        def go() -> None:
            nonlocal count
            count = s.read_all()

        dt = timed(go)
        return count / dt

    for name, rate in interleaved(cfg.reps, main, run_read).items():
        res.rates[("read", name, be.name)] = rate

    progress(f"{be.name}: verify {cfg.events} events (100 per seal)")
    lg = main[0]
    assert isinstance(lg, LedgerSystem)
    samples = []
    for _ in range(cfg.reps):
        count = 0

        def go() -> None:
            nonlocal count
            count = lg.verify()

        samples.append(timed(go))
    res.rates[("verify", "statekeeper", be.name)] = count / statistics.median(samples)
    for s in main:
        s.close()


def wal_frames_per_commit(s: System, commits: int = 100) -> float:
    """WAL frames (one per B-tree page written) per 1-event commit of ``s``: the WAL is
    checkpointed and emptied first, then grows by exactly what the commits write (100
    commits stay below the 1000-frame autocheckpoint)."""
    assert s.db_file is not None
    wal = Path(f"{s.db_file}-wal")
    with sqlite3.connect(s.db_file) as c:
        c.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        page = c.execute("PRAGMA page_size").fetchone()[0]
    c.close()
    if wal.exists() and wal.stat().st_size:  # a reader held the checkpoint back
        return float("nan")
    s.append_one(commits)
    grown = wal.stat().st_size - 32  # the WAL header
    return grown / (page + 24) / commits  # each frame: a 24-byte header and the page


def run_pgbench(cluster: Any, seconds: int) -> float:
    from tests.pgcluster import PG_BIN

    db = cluster.createdb("pgbench")
    cluster.psql("CREATE TABLE pgb (id bigserial PRIMARY KEY, payload text NOT NULL)", db)
    with tempfile.NamedTemporaryFile("w", suffix=".sql", delete=False) as f:
        f.write("INSERT INTO pgb (payload) VALUES (repeat('x', 300));\n")
        script = f.name
    try:
        out = subprocess.run(
            [str(PG_BIN / "pgbench"), "-n", "-c", "1", "-j", "1", "-T", str(seconds), "-f", script,
             "-h", "127.0.0.1", "-p", str(cluster.port), "-U", "postgres", db],
            check=True, capture_output=True, text=True,
        ).stdout
    finally:
        os.unlink(script)
    m = re.search(r"tps = ([\d.]+) \(without initial connection time\)", out)
    if m is None:
        raise RuntimeError(f"cannot read pgbench output:\n{out}")
    return float(m.group(1))


# Runs ARGS as a grandchild and prints its peak RSS (KB) and wall time. The launcher is small,
# so the grandchild starts small: a child forked straight from this (large) process would
# count our own pages in its ru_maxrss, which survives exec.
_LAUNCHER = """
import os, subprocess, sys, time
t = time.perf_counter()
p = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
err = p.stderr.read()
_, status, usage = os.wait4(p.pid, 0)
dt = time.perf_counter() - t
code = os.waitstatus_to_exitcode(status)
if code:
    sys.stderr.write(err.decode(errors="replace"))
    sys.exit(code)
print(usage.ru_maxrss, dt)
"""


def child_rss(args: list[str], cwd: Path) -> tuple[float, float]:
    """Run a command in a fresh process; return (its peak RSS in MB, wall seconds)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = subprocess.run(
        [sys.executable, "-c", _LAUNCHER, *args], cwd=cwd, env=env, capture_output=True,
        text=True,
    )
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({out.returncode}): {out.stderr[-500:]}")
    kb, dt = out.stdout.split()
    return int(kb) / 1024, float(dt)


def bench_memory(root: Path, cfg: Config, key_path: Path, res: Results) -> None:
    n = cfg.rss_events
    url = f"sqlite:///{root / 'ledger-1m.db'}"
    progress(f"SQLite: building a {n}-event ledger (1000 events per commit)")
    signer = ledger.load_signer(key_path)
    lg = ledger.Ledger(url, signer=signer, tool="ledger-bench")
    lg.initialize()
    size = 1000
    ps = payloads(size * 10)
    NewEvent = ledger.NewEvent
    t = time.perf_counter()
    for b in range(n // size):
        items = [NewEvent(EVENT_TYPE, ps[(b * size + k) % len(ps)]) for k in range(size)]
        lg.append(f"bench/run-{b + 1}", items, expected_position=0)
    res.rates[("append1000", "statekeeper", "SQLite")] = n / (time.perf_counter() - t)
    lg.close()
    cli = [sys.executable, "-c", "from cli.main import main; main()", "--ledger", url,
           "--key", str(key_path), "ledger"]
    progress(f"SQLite: ledger verify over {n} events (child process)")
    rss, dt = child_rss([*cli, "verify"], root)
    res.rates[("rss_verify", "statekeeper", "SQLite")] = rss
    res.rates[("verify_1m", "statekeeper", "SQLite")] = n / dt
    progress(f"SQLite: ledger export of {n} events (child process)")
    out = root / "export-1m.jsonl"
    rss, dt = child_rss([*cli, "export", "--out", str(out)], root)
    res.rates[("rss_export", "statekeeper", "SQLite")] = rss
    res.rates[("export_1m", "statekeeper", "SQLite")] = n / dt
    res.notes.append(f"export file: {out.stat().st_size / 2**20:.0f} MB for {n} events")
    out.unlink()
    progress("python baseline (child process)")
    base, _ = child_rss([sys.executable, "-c", "import ledger"], root)
    res.notes.append(f"baseline: a Python process that only imports ledger peaks at {base:.0f} MB")


# -- the report ---------------------------------------------------------------------------------
def fmt_rate(v: float | None, unit: str = "/s") -> str:
    if v is None:
        return "-"
    return f"{v:,.0f}{unit}"


def fmt_ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or b == 0:
        return "-"
    return f"{a / b:.2f}x"


def report(res: Results, cfg: Config, backends: list[str]) -> list[tuple[str, bool | None, str]]:
    sq, pg = "SQLite", "PostgreSQL"
    g = res.get
    rows: list[tuple[str, str, str, str, str]] = []

    def ratios(work: str, plain_work: str | None, es_work: str | None) -> tuple[str, str]:
        if plain_work is None and es_work is None:
            return "", ""
        out_p, out_e = [], []
        for b in (sq, pg):
            if b not in backends:
                continue
            mine = g(work, "statekeeper", b)
            plain = g(plain_work, "plain SQLAlchemy", b) if plain_work else None
            es = g(es_work, "eventsourcing", b) if es_work else None
            out_p.append(fmt_ratio(mine, plain))
            out_e.append(fmt_ratio(mine, es))
        return " / ".join(out_p), " / ".join(out_e)

    def add(label: str, work: str, system: str, plain_work: str | None = None,
            es_work: str | None = None, unit: str = "/s") -> None:
        cells = [fmt_rate(g(work, system, sq), unit), fmt_rate(g(work, system, pg), unit)]
        rp, re_ = ratios(work, plain_work, es_work) if system == "statekeeper" else ("", "")
        rows.append((label, cells[0], cells[1], rp, re_))

    n = f"{cfg.events // 1000}k"
    add("statekeeper append, 1 event/commit (signed)", "append1", "statekeeper",
        "append1", "append1")
    add("statekeeper append, 100 events/commit (signed)", "append100", "statekeeper",
        "append100", "append100")
    add(f"statekeeper read, {n} events", "read", "statekeeper", "read", "read")
    add(f"statekeeper verify, {n} events, 100/seal", "verify", "statekeeper", "read", "read")
    add("plain SQLAlchemy Core INSERT, 1 row/commit", "append1", "plain SQLAlchemy")
    add("plain SQLAlchemy Core INSERT, 100 rows/commit", "append100", "plain SQLAlchemy")
    add(f"plain SQLAlchemy Core SELECT, {n} rows", "read", "plain SQLAlchemy")
    add("eventsourcing 9.5.6, 1 event/save", "append1", "eventsourcing")
    add("eventsourcing 9.5.6, 100 events/save", "append100", "eventsourcing")
    add(f"eventsourcing select_notifications, {n}", "read", "eventsourcing")
    for system in ("statekeeper", "plain SQLAlchemy", "eventsourcing"):
        v = g("frames1", system, sq)
        if v is not None:
            rows.append((f"{system}: SQLite WAL frames (pages) per 1-event commit",
                         f"{v:.2f}", "", "", ""))
    rows.append(("pgbench, 1 INSERT/transaction (server limit)", "",
                 fmt_rate(g("pgbench", "pgbench", pg), " tps"), "", ""))
    r = cfg.rss_events
    m = f"{r / 1e6:g}M" if r >= 1_000_000 else f"{r // 1000}k" if r >= 1000 else str(r)
    if g("rss_verify", "statekeeper", sq) is not None:
        add(f"statekeeper build {m} events, 1000/commit", "append1000", "statekeeper")
        add(f"peak RSS, `ledger verify` of {m} events", "rss_verify", "statekeeper", unit=" MB")
        add("  (its throughput, whole process)", "verify_1m", "statekeeper")
        add(f"peak RSS, `ledger export` of {m} events", "rss_export", "statekeeper", unit=" MB")
        add("  (its throughput, whole process)", "export_1m", "statekeeper")

    head = ("work", "SQLite", "PostgreSQL", "ratio vs plain (SQLite / PG)",
            "ratio vs eventsourcing (SQLite / PG)")
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(5)]
    line = "| " + " | ".join(h.ljust(widths[i]) for i, h in enumerate(head)) + " |"
    print()
    print(line)
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in rows:
        cells = [r[0].ljust(widths[0])] + [r[i].rjust(widths[i]) for i in range(1, 5)]
        print("| " + " | ".join(cells) + " |")
    print()
    print("ratio columns: statekeeper / the other system, same work and backend; verify is "
          "compared with the other systems' read of the same number of events.")
    if g("rss_verify", "statekeeper", sq) is not None:
        print(f"memory: {m} events on SQLite only (the streaming code is the same for both "
              "backends); peak RSS of the command's process (wait4).")
    for note in res.notes:
        print(f"note: {note}")

    # Targets of issue 2.
    targets: list[tuple[str, bool | None, str]] = []

    def check(label: str, value: float | None, bound: float, *, below: bool = False,
              unit: str = "x") -> None:
        if value is None:
            targets.append((label, None, "not measured"))
            return
        ok = value < bound if below else value >= bound
        shown = f"{value:.2f}x" if unit == "x" else f"{value:,.0f}{unit}"
        targets.append((label, ok, shown))

    def ratio(work: str, other: str, b: str) -> float | None:
        a, o = g(work, "statekeeper", b), g(work, other, b)
        return None if a is None or o is None or o == 0 else a / o

    for b in (sq, pg):
        if b not in backends:
            continue
        for work, label in (("append1", "1/commit"), ("append100", "100/commit")):
            check(f"{b} signed append {label} >= 1.2x eventsourcing",
                  ratio(work, "eventsourcing", b), 1.2)
        check(f"{b} signed append 1/commit >= 0.8x plain",
              ratio("append1", "plain SQLAlchemy", b), 0.8)
        check(f"{b} signed append 100/commit >= 0.6x plain",
              ratio("append100", "plain SQLAlchemy", b), 0.6)
    check("SQLite verify >= 100,000 events/s (100/seal)", g("verify", "statekeeper", sq),
          100_000, unit=" events/s")
    check(f"peak RSS of verify, {m} events < 150 MB", g("rss_verify", "statekeeper", sq), 150,
          below=True, unit=" MB")
    check(f"peak RSS of export, {m} events < 150 MB", g("rss_export", "statekeeper", sq), 150,
          below=True, unit=" MB")
    print()
    print("targets (issue 2):")
    for label, ok, shown in targets:
        mark = "n/a   " if ok is None else ("met   " if ok else "MISSED")
        print(f"  [{mark}] {label}: {shown}")
    return targets


def filesystem_of(path: Path) -> str:
    """The type of the filesystem holding ``path`` (from /proc/mounts; "?" elsewhere)."""
    best, kind = "", "?"
    try:
        with open("/proc/mounts", encoding="utf-8") as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 3 and str(path).startswith(parts[1]) and len(parts[1]) > len(best):
                    best, kind = parts[1], parts[2]
    except OSError:
        pass
    return kind


# -- main ---------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=None,
                    help="events read and verified per backend (default 100000; --quick 20000)")
    ap.add_argument("--quick", action="store_true",
                    help="smaller runs, one repetition, 100k events for the memory test")
    ap.add_argument("--no-pg", action="store_true", help="SQLite only")
    ap.add_argument("--rss-events", type=int, default=None,
                    help="events in the memory test (default 1000000; --quick 100000; 0 skips it)")
    ap.add_argument("--dir", type=Path, default=None,
                    help="where the SQLite files and the cluster go (default: the temp dir); "
                    "must be a real disk, not tmpfs, or fsync measures nothing")
    args = ap.parse_args(argv)

    n = args.events or (20_000 if args.quick else 100_000)
    n = max(1000, n // 100 * 100)
    reps = 1 if args.quick else 3
    batch_run = max(100, (n // 5) // 100 * 100)
    if reps * batch_run > n:
        batch_run = max(100, (n // reps) // 100 * 100)
    cfg = Config(
        events=n,
        one={"SQLite": 300 if args.quick else 700, "PostgreSQL": 200 if args.quick else 400},
        batch_run=batch_run,
        reps=reps,
        one_reps=3 * reps,
        pgbench_seconds=3 if args.quick else 10,
        rss_events=(args.rss_events if args.rss_events is not None
                    else (100_000 if args.quick else 1_000_000)),
    )

    from importlib.metadata import version

    import eventsourcing  # noqa: F401  (fail early if it is missing)

    started = time.perf_counter()
    root = Path(tempfile.mkdtemp(prefix="ledger-bench-", dir=args.dir))
    os.chmod(root, 0o755)  # the cluster below runs as the postgres OS user
    cluster = None
    res = Results()
    backends = ["SQLite"]
    try:
        key_path = root / "signing.pem"
        signer = ledger.generate_key_file(key_path)
        sync = sqlite3.connect(":memory:").execute("PRAGMA synchronous").fetchone()[0]
        fs = filesystem_of(root)
        res.notes.append(f"files in {root.parent} ({fs})")
        if fs in ("tmpfs", "ramfs"):
            print(f"WARNING: {root} is on {fs}: fsync is free there, the figures mean little "
                  "(use --dir on a disk)", flush=True)
        print(f"ledger benchmark: Python {platform.python_version()}, SQLite "
              f"{sqlite3.sqlite_version} (default synchronous={sync}), eventsourcing "
              f"{version('eventsourcing')}, SQLAlchemy {version('sqlalchemy')}, "
              f"{os.cpu_count()} CPUs; payload {canonical_size()} bytes canonical JSON; "
              f"median of {reps} runs (1-per-commit appends: of {3 * reps} shorter ones)",
              flush=True)
        bench_backend(SQLiteBackend(root), cfg, signer, res)
        if not args.no_pg:
            from tests.pgcluster import PgCluster

            progress("starting a throwaway PostgreSQL cluster (fsync=on)")
            # base=root: on the same disk as the SQLite files (the test default is /dev/shm,
            # RAM, where fsync costs nothing).
            cluster = PgCluster(
                conf={"fsync": "on", "synchronous_commit": "on"}, base=root
            ).start()
            backends.append("PostgreSQL")
            res.notes.append(
                "PostgreSQL " + cluster.psql("SHOW server_version")
                + f", fsync={cluster.psql('SHOW fsync')}, "
                + f"synchronous_commit={cluster.psql('SHOW synchronous_commit')}, "
                + f"wal_sync_method={cluster.psql('SHOW wal_sync_method')}"
            )
            bench_backend(PostgresBackend(cluster), cfg, signer, res)
            progress(f"pgbench, 1 client, {cfg.pgbench_seconds} s")
            res.rates[("pgbench", "pgbench", "PostgreSQL")] = run_pgbench(
                cluster, cfg.pgbench_seconds
            )
            cluster.destroy()
            cluster = None
        if cfg.rss_events:
            bench_memory(root, cfg, key_path, res)
    finally:
        if cluster is not None:
            cluster.destroy()
        shutil.rmtree(root, ignore_errors=True)
    res.notes.append(f"whole run: {time.perf_counter() - started:.0f} s")
    report(res, cfg, backends)
    return 0


if __name__ == "__main__":
    sys.exit(main())
