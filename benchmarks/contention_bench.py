"""Eight processes upgrading eight targets against one PostgreSQL ledger at once, and four
racing for the same target.

Not a test. One throwaway PostgreSQL 15 cluster (``--fsync on`` by default, on disk, so a commit
costs what it costs on a real server) holds the shared ledger database and every target. Each
upgrade is a real ``statekeeper start --to v2.6`` process (the CLI of this tree) applying the
ten small migrations of benchmarks/upgrade_bench.py, without a backup (the ledger is what is
measured). Every process imports everything first, then waits for one common instant, so they
really start together. Inside each child (this file only; nothing is added to the library)
``ledger.Ledger.append`` is wrapped with a timer: one call is one append (one transaction, one
seal).

* **eight targets**: eight projects, eight databases, one ledger and one signing key. Checked:
  every process exits 0, every run is ``completed``, ``statekeeper ledger verify`` passes, and
  the events table is one chain (seq 1..N without a gap or a duplicate, each ``prev_hash`` the
  hash of the event before: no fork). Printed: appends, the window from the first append's
  start to the last one's end, appends per second over that window, and p50/p99/max latency.
* **eight appenders** (the ledger's own capacity under that contention): eight processes
  appending ``--appends`` runner-shaped events each (one event per append, a ~300-byte
  payload, each into its own stream) through the library as fast as they can. Checked: the
  chain is one and ``ledger verify`` passes.
* **four racing for one target**: four projects naming the same database (one more migration,
  ``pg_sleep(1.5)``, keeps the winner busy while the others arrive). Checked: exactly one
  exits 0 and the three others exit 5 (the target is locked), the ledger holds one run of
  that target (completed), ``ledger verify`` passes and the chain is still one.

    python benchmarks/contention_bench.py [--fsync on|off] [--reps 2]

Run as root (the cluster runs as the postgres OS user). Exit status 1 if a check fails.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.upgrade_bench import MIGRATIONS  # noqa: E402
from statekeeper import command  # noqa: E402
from tests.pgcluster import PgCluster  # noqa: E402
from tests.upgrade_support import Project, make_project, seed  # noqa: E402

CHILD = r"""
import atexit, json, os, sys, time
import ledger
from cli.main import cli
calls = []
append = ledger.Ledger.append
def timed(*a, **k):
    t_wall, t = time.time(), time.perf_counter()
    try:
        return append(*a, **k)
    finally:
        calls.append((t_wall, time.perf_counter() - t))
ledger.Ledger.append = timed
atexit.register(lambda: open(os.environ["CONTENTION_OUT"], "w").write(json.dumps(calls)))
start = float(os.environ["CONTENTION_START"])
while time.time() < start:
    time.sleep(0.001)
cli.main(args=sys.argv[1:], prog_name="statekeeper")
"""

APPENDER = r"""
import json, os, sys, time
import ledger
from statekeeper.settings import Settings
settings = Settings.load(sys.argv[1])
book = settings.open_ledger(signing=True)
payload = {"step": "migrate", "migration": "005_fills", "checksum": "ab" * 32,
           "file_sha256": "cd" * 32, "statements": 3, "duration_ms": 12, "host": "vm",
           "pid": os.getpid(), "at": "2026-12-07T15:00:00.000000Z"}
stream, calls = f"bench/{os.getpid()}", []
start = float(os.environ["CONTENTION_START"])
while time.time() < start:
    time.sleep(0.001)
for i in range(int(sys.argv[2])):
    t_wall, t = time.time(), time.perf_counter()
    book.append(stream, ledger.NewEvent("step.succeeded", {**payload, "n": i}),
                expected_position=i)
    calls.append((t_wall, time.perf_counter() - t))
book.close()
open(os.environ["CONTENTION_OUT"], "w").write(json.dumps(calls))
"""

SLOW = ("011_wait", "SELECT pg_sleep(1.5);", "SELECT 1;")


def files(extra: tuple[tuple[str, str, str], ...] = ()) -> dict[str, str]:
    return {f"{name}.sql": f"{up}\n-- statekeeper:down\n{down}\n"
            for name, up, down in (*MIGRATIONS, *extra)}


def race(projects: list[Project], work: Path, tag: str,
         appends: int = 0) -> list[tuple[int, str, list[Any]]]:
    """Start ``statekeeper start --to v2.6`` (``appends``: that many appends through the
    library) in every project at one instant; for each, its exit code, stderr and timed
    appends."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("STATEKEEPER_FAILPOINT", None)
    start = time.time() + 2.0 + 0.15 * len(projects)  # after every child has imported
    procs = []
    for i, p in enumerate(projects):
        out = work / f"{tag}-{i}.json"
        argv = ([sys.executable, "-c", APPENDER, str(p.config), str(appends)] if appends else
                [sys.executable, "-c", CHILD, "--config", str(p.config), "start", "--to", "v2.6"])
        procs.append((subprocess.Popen(
            argv,
            cwd=p.dir, env={**env, "CONTENTION_OUT": str(out), "CONTENTION_START": str(start)},
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True), out))
    results = []
    for proc, out in procs:
        _, err = proc.communicate(timeout=600)
        calls = json.loads(out.read_text()) if out.exists() else []
        results.append((proc.returncode, err, calls))
    return results


def one_chain(cluster: PgCluster, db: str) -> tuple[bool, int]:
    """Is the events table one unforked chain (seq 1..N, each prev_hash the previous hash)?"""
    out = cluster.psql("SELECT seq, prev_hash, hash FROM ledger_events ORDER BY seq", db=db)
    rows = [ln.split("|") for ln in out.splitlines() if ln.strip()]
    ok = all(int(s) == i for i, (s, _, _) in enumerate(rows, 1))
    ok = ok and all(rows[i][1] == rows[i - 1][2] for i in range(1, len(rows)))
    return ok, len(rows)


def stats(calls: list[tuple[float, float]]) -> dict[str, float]:
    lat = sorted(d for _, d in calls)
    window = max(t + d for t, d in calls) - min(t for t, _ in calls)
    return {"appends": len(lat), "window": window, "rate": len(lat) / window,
            "p50": statistics.median(lat) * 1000,
            "p99": lat[min(len(lat) - 1, int(0.99 * len(lat)))] * 1000, "max": lat[-1] * 1000}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fsync", choices=("on", "off"), default="on")
    ap.add_argument("--reps", type=int, default=2, help="rounds of each scenario")
    ap.add_argument("--appends", type=int, default=200, help="appends per appender process")
    args = ap.parse_args()

    base = Path(tempfile.mkdtemp(prefix="sk-contention-", dir="/var/tmp"))
    os.chmod(base, 0o755)
    cluster = PgCluster(conf={"fsync": args.fsync, "max_connections": "200"}, base=base).start()
    failures: list[str] = []
    table: list[tuple[str, dict[str, float], str]] = []
    try:
        for rep in range(1, args.reps + 1):
            work = base / f"round{rep}"
            work.mkdir()
            ledger_db = cluster.createdb(f"ledger{rep}")
            ledger_url = cluster.sqlalchemy_url(ledger_db)
            key = str(work / "key.pem")
            projects = []
            for i in range(8):
                url = cluster.url(cluster.createdb(f"app{rep}_{i}"))
                seed("postgresql", url)
                projects.append(make_project(work / f"p{i}", "postgresql", url, files(),
                                             backup=False, ledger_url=ledger_url, key=key,
                                             health=""))
            print(f"round {rep}: eight targets ...", file=sys.stderr)
            results = race(projects, work, "eight")
            codes = [rc for rc, _, _ in results]
            if codes != [0] * 8:
                failures.append(f"round {rep}, eight targets: exit codes {codes}: "
                                + " | ".join(e.strip()[-300:] for rc, e, _ in results if rc))
            states = [command.status(p.settings()).state for p in projects]
            if states != ["completed"] * 8:
                failures.append(f"round {rep}, eight targets: states {states}")
            verify = projects[0].cli("ledger", "verify")
            chain, events = one_chain(cluster, ledger_db)
            if verify.returncode != 0 or not chain:
                failures.append(f"round {rep}: ledger verify {verify.returncode}, one chain: "
                                f"{chain}: {verify.stdout}{verify.stderr}")
            calls = [c for _, _, cs in results for c in cs]
            table.append((f"8 targets, round {rep}", stats(calls),
                          f"{events} events; exits {set(codes)}; verify "
                          f"{'ok' if verify.returncode == 0 else 'FAILED'}; one chain: {chain}"))

            print(f"round {rep}: eight appenders ...", file=sys.stderr)
            results = race(projects, work, "append", args.appends)
            codes = [rc for rc, _, _ in results]
            verify = projects[0].cli("ledger", "verify")
            chain, events = one_chain(cluster, ledger_db)
            if codes != [0] * 8 or verify.returncode != 0 or not chain:
                failures.append(f"round {rep}, eight appenders: exits {codes}, verify "
                                f"{verify.returncode}, one chain {chain}: "
                                + " | ".join(e.strip()[-300:] for rc, e, _ in results if rc))
            calls = [c for _, _, cs in results for c in cs]
            table.append((f"8 appenders, round {rep}", stats(calls),
                          f"{events} events; exits {set(codes)}; verify "
                          f"{'ok' if verify.returncode == 0 else 'FAILED'}; one chain: {chain}"))

            print(f"round {rep}: four racing for one target ...", file=sys.stderr)
            url = cluster.url(cluster.createdb(f"shared{rep}"))
            seed("postgresql", url)
            racers = [make_project(work / f"r{i}", "postgresql", url, files((SLOW,)),
                                   backup=False, ledger_url=ledger_url, key=key, health="",
                                   tag="v2.5" if i == 0 else None) for i in range(4)]
            results = race(racers, work, "race")
            codes = sorted(rc for rc, _, _ in results)
            if codes != [0, 5, 5, 5]:
                failures.append(f"round {rep}, four racers: exit codes {codes}: "
                                + " | ".join(e.strip()[-300:] for rc, e, _ in results if rc))
            runs = command.history(racers[0].settings())
            shared = racers[0].target().display
            mine = [r for r in runs if getattr(getattr(r, "plan", None), "target", "") == shared]
            if [r.state for r in mine] != ["completed"]:
                failures.append(f"round {rep}, four racers: runs on the target "
                                f"{[(r.run_id, r.state) for r in mine]}")
            verify = racers[0].cli("ledger", "verify")
            chain, events = one_chain(cluster, ledger_db)
            if verify.returncode != 0 or not chain:
                failures.append(f"round {rep}, four racers: ledger verify {verify.returncode}, "
                                f"one chain: {chain}")
            losers = {e.strip().splitlines()[-1][:90] for rc, e, _ in results if rc == 5}
            calls = [c for _, _, cs in results for c in cs]
            table.append((f"4 racers, round {rep}", stats(calls),
                          f"exits {codes}; one run; loser says: {'; '.join(losers)}"))
    finally:
        cluster.destroy()
        shutil.rmtree(base, ignore_errors=True)

    load = "/".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"one PostgreSQL ledger, fsync={args.fsync}; statekeeper start --to v2.6 (10 "
          f"migrations, no backup) per process, or {args.appends} library appends per "
          f"appender; load average {load}")
    head = ("scenario", "appends", "window (s)", "appends/s", "p50 (ms)", "p99 (ms)",
            "max (ms)", "checks")
    cells = [(name, f"{s['appends']:.0f}", f"{s['window']:.2f}", f"{s['rate']:.0f}",
              f"{s['p50']:.1f}", f"{s['p99']:.1f}", f"{s['max']:.1f}", note)
             for name, s, note in table]
    widths = [max(len(x[i]) for x in [head, *cells]) for i in range(len(head))]

    def line(c: tuple[str, ...]) -> str:
        return "| " + " | ".join(x.ljust(w) for x, w in zip(c, widths, strict=True)) + " |"

    print(line(head))
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for c in cells:
        print(line(c))
    for f in failures:
        print(f"FAILED: {f}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
