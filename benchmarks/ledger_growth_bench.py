#!/usr/bin/env python3
"""How the commands' cost grows with the ledger (issue 15, "A long-lived ledger").

    python benchmarks/ledger_growth_bench.py [--sizes 10000,100000] [--pg] [--before REF]

One real upgrade run (``statekeeper start --to v2.6`` of a SQLite project, three migrations,
no backup) is made first; its events, append by append (one seal per append, as the runner
sealed them), are the template of every other run. A ledger of N events is then filled with
copies of that run through ``Ledger.append`` (a new run id each, on 8 targets, the project's
own among them) after the project's real run. So the ledger is real-shaped: ~25
events per run, the runner's event types, payloads and seal pattern.

At each size, each command runs in its own process (its wall time and peak RSS from
/usr/bin/time), against that ledger, with the local checkpoint and run index a previous
command left (``start`` is run once first, as the last command an operator ran would have):

* ``start --to v2.6``: verify-before-act and the busy check, then refused (already tagged);
* ``resume``: verify-before-act and the decision (no unfinished run: refused);
* ``status`` (the latest run), ``history --limit 20``, ``plan --to v2.7``, ``ledger verify``.

``--before REF`` runs the same commands with the code of git ref REF (``git archive`` into a
temporary directory; default ``main``; ``--before ''`` skips it) against the same ledger.
``--pg`` also measures on a throwaway PostgreSQL 15 cluster (tests/pgcluster.py): the SQLite
ledger's rows (made through the library, as above) are copied into a fresh database there,
which is the same ledger (same events, seals and keys) at a fraction of the build's cost.
``--dir`` (default /dev/shm when present): the build appends one commit per event and an
fsync per commit on a real disk takes milliseconds; the commands measured read, and their
figures do not depend on it. ``--keep DIR``: build under DIR and leave it there; a size
already built in DIR (a 1M ledger takes most of an hour) is reused as it is. ``--commands``:
only the commands whose label starts with one of these (comma-separated).
Exit status 0: a measurement, not a test.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from io import BytesIO
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

TARGETS = 8
TIME = Path("/usr/bin/time")

COMMANDS: list[tuple[str, list[str]]] = [
    ("start (busy check + verify)", ["start", "--to", "v2.6"]),
    ("resume (decision)", ["resume"]),
    ("status (latest run)", ["status"]),
    ("history --limit 20", ["history", "--limit", "20"]),
    ("plan", ["plan", "--to", "v2.7"]),
    ("ledger verify", ["ledger", "verify"]),
]


def make_project(work: Path, ledger_url: str) -> tuple[Any, str]:
    """A SQLite project with one real completed run on ``ledger_url``; (project, run id)."""
    from tests.upgrade_support import GOOD, make_project, seed

    (work / "target.db").touch()
    target = f"sqlite:///{work / 'target.db'}"
    seed("sqlite", target)
    p = make_project(work / "project", "sqlite", target, dict(GOOD), backup=False,
                     ledger_url=ledger_url, key=str(work / "key.pem"))
    p.cli("start", "--to", "v2.6", check=True)
    return p, p.cli_json("history")[-1]["run_id"]


def template_appends(url: str, run_id: str) -> tuple[list[list[tuple[str, str]]], str]:
    """The run's appends: each a list of (type, canonical payload); and its target."""
    import ledger
    from ledger.canonical import loads

    with ledger.Ledger(url, create=False) as lg:
        stream = f"upgrade/{run_id}"
        seals = {}
        for ev, seal in lg.recorder.iter_events(stream=stream, with_seals=True):
            seals[ev.seq] = (ev, seal)
        appends: list[list[tuple[str, str]]] = []
        cur: list[tuple[str, str]] = []
        target = ""
        for seq in sorted(seals):
            ev, seal = seals[seq]
            cur.append((ev.type, ev.payload))
            if ev.type == "run.created":
                target = loads(ev.payload)["target"]
            if ev.closes:
                appends.append(cur)
                cur = []
    return appends, target


def fill(url: str, key: Path, appends: list[list[tuple[str, str]]], run_id: str,
         target: str, n: int, project: Path) -> float:
    """Append copies of the template run until the ledger holds about ``n`` events; the
    events per second of the build."""
    import ledger
    from ledger.canonical import loads

    signer = ledger.load_signer(key)
    t0 = time.perf_counter()
    with ledger.Ledger(url, signer=signer, tool="statekeeper/bench") as lg:
        start = lg.head().seq
        i = 0
        while lg.head().seq < n - sum(map(len, appends)):
            rid = f"2020{1 + i // 100000 % 12:02d}01-000000-{i:06x}"
            other = target if i % TARGETS == 0 else target.replace("target.db",
                                                                   f"t{i % TARGETS}.db")
            pos = 0
            for batch in appends:
                items = [ledger.NewEvent(t, loads(
                    p.replace(run_id, rid).replace(f'"{target}"', f'"{other}"')))
                    for t, p in batch]
                lg.append(f"upgrade/{rid}", items, expected_position=pos)
                pos += len(items)
            i += 1
        built = lg.head().seq - start
        rate = built / (time.perf_counter() - t0)
        # The local checkpoint at the head this process wrote (so trusts), as an operator's
        # last command would have left it: the commands measured verify only what follows.
        from statekeeper.trust import remember

        head = lg.head()
        remember(lg, project, ledger.VerifyResult(0, head, lg.ledger_id(), [signer.key_id],
                                                  active_key=signer.key_id))
    return rate


def copy_to_postgres(sqlite_url: str, pg_url: str) -> None:
    """The SQLite ledger's rows, as stored, into a fresh PostgreSQL ledger (its own schema,
    triggers and indexes made by the library)."""
    import sqlite3

    import psycopg

    import ledger

    ledger.Ledger(pg_url).close()  # the schema
    src = sqlite3.connect(sqlite_url.removeprefix("sqlite:///"))
    with psycopg.connect(pg_url) as dst, dst.cursor() as cur:
        for table in ("ledger_keys", "ledger_events", "ledger_seals"):
            cols = [r[1] for r in src.execute(f"PRAGMA table_info({table})")]
            rows = src.execute(f"SELECT {', '.join(cols)} FROM {table} ORDER BY 1")
            with cur.copy(f"COPY {table} ({', '.join(cols)}) FROM STDIN") as cp:
                for row in rows:
                    cp.write_row([bool(v) if c == "closes" else v
                                  for c, v in zip(cols, row, strict=True)])
        cur.execute("ANALYZE")
    src.close()


def measure(code: Path, project: Path, args: list[str],
            config: str = "statekeeper.toml") -> tuple[float, float, int]:
    """(seconds, peak RSS MB, exit code) of one command in its own process, with its bytecode
    cached as an installed package has it (this environment sets PYTHONDONTWRITEBYTECODE,
    which recompiles every module in every process)."""
    env = dict(os.environ, PYTHONPATH=str(code),
               PYTHONPYCACHEPREFIX=str(ROOT / "benchmarks" / ".cache" / "pycache" / code.name))
    env.pop("STATEKEEPER_FAILPOINT", None)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    # The peak RSS from /usr/bin/time (a small process that forks and execs): a child forked
    # from this process would count this process's pages it held before its exec.
    rss_file = project.parent / "rss.txt"
    timer = ["/usr/bin/time", "-f", "%M", "-o", str(rss_file)] if TIME.exists() else []
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [*timer, sys.executable, "-m", "cli", "--config", str(project / config),
         *args],
        cwd=project, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    _, status, usage = os.wait4(proc.pid, 0)
    took = time.perf_counter() - t0
    rss = usage.ru_maxrss / 1024
    if timer:
        rss = int(rss_file.read_text().split()[-1]) / 1024
    return took, rss, os.waitstatus_to_exitcode(status)


def export_ref(ref: str, into: Path) -> Path:
    data = subprocess.run(["git", "-C", str(ROOT), "archive", ref], check=True,
                          capture_output=True).stdout
    with tarfile.open(fileobj=BytesIO(data)) as tf:
        tf.extractall(into, filter="data")
    return into


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="10000,100000")
    ap.add_argument("--before", default="main", help="git ref of the code to compare with")
    ap.add_argument("--pg", action="store_true")
    ap.add_argument("--dir", default="/dev/shm" if Path("/dev/shm").is_dir() else None)
    ap.add_argument("--keep", type=Path, help="build here, keep it, reuse what is built")
    ap.add_argument("--commands", default="", help="only these commands (label prefixes)")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    wanted = [c for c in args.commands.split(",") if c]
    commands = [c for c in COMMANDS if not wanted or any(c[0].startswith(w) for w in wanted)]
    if args.keep is not None:
        args.keep.mkdir(parents=True, exist_ok=True)
        root = args.keep.resolve()
    else:
        root = Path(tempfile.mkdtemp(prefix="sk-growth-", dir=args.dir))
    codes: list[tuple[str, Path]] = []
    if args.before:
        codes.append((f"before ({args.before})", export_ref(args.before, root / "before")))
    codes.append(("after", ROOT))
    cluster = None
    rows: list[tuple[str, int, str, str, float, float, int]] = []
    rates: list[str] = []
    try:
        backends = ["sqlite"]
        if args.pg:
            from tests.pgcluster import PgCluster

            cluster = PgCluster(conf={"fsync": "on", "synchronous_commit": "on"}).start()
            backends.append("postgresql")
        for n in sizes:
            work = root / f"sqlite-{n}"
            url = f"sqlite:///{work / 'ledger.db'}"
            built = work / "built"
            if not built.exists():
                shutil.rmtree(work, ignore_errors=True)
                work.mkdir()
                _, run_id = make_project(work, url)
                appends, target = template_appends(url, run_id)
                rate = fill(url, work / "key.pem", appends, run_id, target, n, work / "project")
                built.write_text(f"built at {rate:,.0f} events/s ({sum(map(len, appends))} "
                                 f"events, {len(appends)} appends per run)\n")
            import ledger

            with ledger.Ledger(url, create=False) as lg:
                events = lg.head().seq
            rates.append(f"{events} events: {built.read_text().strip()}")
            print(rates[-1], file=sys.stderr, flush=True)
            project_dir = work / "project"
            for backend in backends:
                config = "statekeeper.toml"
                if backend == "postgresql":
                    assert cluster is not None
                    pg_url = cluster.url(cluster.createdb(f"growth{n}"))
                    copy_to_postgres(url, pg_url)
                    config = "statekeeper-pg.toml"
                    text = (project_dir / "statekeeper.toml").read_text()
                    (project_dir / config).write_text(text.replace(f'"{url}"', f'"{pg_url}"'))
                for label, code in codes:
                    measure(code, project_dir, ["--help"])  # the bytecode cache, warm
                    # The build left a local checkpoint at its head; the first start derives
                    # the run index (one row per run, and the summary of the unsettled ones)
                    # and every later command finds it caught up, as an operator would.
                    t, rss, rc = measure(code, project_dir, ["start", "--to", "v2.6"], config)
                    rows.append((backend, events, label, "first start (index built)", t, rss,
                                 rc))
                    for name, cmd in commands:
                        t, rss, rc = measure(code, project_dir, cmd, config)
                        rows.append((backend, events, label, name, t, rss, rc))
                        print(f"  {backend} {label:<14} {name:<28} {t:7.2f}s {rss:6.0f} MB  "
                              f"exit {rc}", file=sys.stderr, flush=True)
    finally:
        if cluster is not None:
            cluster.destroy()
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)
        else:
            shutil.rmtree(root / "before", ignore_errors=True)
    for r in rates:
        print(r)
    print(f"{'backend':<11} {'events':>8} {'code':<14} {'command':<28} {'time':>8} "
          f"{'peak RSS':>9} {'exit':>4}")
    for backend, events, label, name, t, rss, rc in rows:
        print(f"{backend:<11} {events:>8} {label:<14} {name:<28} {t:>7.2f}s {rss:>6.0f} MB "
              f"{rc:>4}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
