"""pgBackRest restore time with a repository of 1 and of 10 backups: the check before a restore
by ``pgbackrest verify`` of the whole repository (before issue 14) and of the restored set alone.

Not a test. Builds a throwaway PostgreSQL 15 cluster with WAL archiving into a fresh pgBackRest
repository (as the tests do: lz4, ``tests/test_backup_support.py: pgbackrest_cluster``), fills
one database with ``pgbench -i -s 5`` (~75 MB), and takes backup 1 with ``BackupManager.create``.
With that one backup in the repository, then again after 9 more (each after an UPDATE that
touches every page of ``pgbench_accounts``, so that each incremental holds it again, and the
WAL that goes with it), it times, for backup 1 and each way of checking:

* check: ``PgBackRestMethod.check`` alone (median of ``--reps``);
* restore: ``BackupManager.restore`` (``report_damage=False``; median of ``--restores``): the
  check, the server's stop, ``pgbackrest restore --delta`` to the restore point, the start,
  the fingerprint comparison.

Prints one table and the ratios (10 backups / 1 backup; per set / whole repository).

    python benchmarks/restore_bench.py [--scale 5] [--reps 5] [--restores 3] [--quick]

Run as root (the cluster and pgBackRest run as the postgres OS user) on a machine with
PostgreSQL 15 server binaries and pgbackrest installed. The cluster runs with fsync=off, like
the test clusters: absolute times are optimistic, the comparison is what matters. Exit 0.
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
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from statekeeper.backups import BackupManager, Manifest
from statekeeper.backups.pgbackrest import PgBackRestMethod
from statekeeper.targets import Target
from tests.pgcluster import PG_BIN, run_as_postgres
from tests.test_backup_support import execute, pgbackrest_cluster, scalar

STANZA = "bench"
MODES = (("whole repository", True), ("set alone", False))


def timed(f: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    f()
    return time.perf_counter() - t0


def repository(root: Path) -> tuple[float, int]:
    """MiB in the repository and WAL segments archived."""
    repo = root / "repo"
    size = sum(p.stat().st_size for p in repo.rglob("*") if p.is_file())
    wal = sum(1 for p in (repo / "archive").rglob("*-*") if len(p.name.split("-")[0]) == 24)
    return size / 1024 / 1024, wal


def backups(config: Path) -> int:
    out = run_as_postgres(["pgbackrest", f"--config={config}", f"--stanza={STANZA}", "info",
                           "--output=json"]).stdout
    return len(json.loads(out)[0]["backup"])


def measure(manager: BackupManager, first: Manifest, reps: int,
            restores: int) -> dict[str, tuple[float, float]]:
    """For each way of checking: (check, restore) seconds for backup ``first``; and under
    "info", the ``pgbackrest info`` that both checks start with."""
    info = PgBackRestMethod(manager.target, stanza=STANZA, config=manager.pgbackrest_config)
    out = {"info": (statistics.median(timed(info._info) for _ in range(reps)), 0.0)}
    for name, whole in MODES:
        PgBackRestMethod.whole_repository = whole
        method = PgBackRestMethod(manager.target, stanza=STANZA,
                                  config=manager.pgbackrest_config)
        check = statistics.median(timed(lambda m=method: m.check(first)) for _ in range(reps))
        assert method.last_check is not None
        print(f"  {name}: {method.last_check.how}", file=sys.stderr)
        restore = statistics.median(
            timed(lambda: manager.restore(first.id, report_damage=False))
            for _ in range(restores))
        out[name] = (check, restore)
    PgBackRestMethod.whole_repository = False
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", type=int, default=5, help="pgbench -i scale (~15 MB each)")
    ap.add_argument("--reps", type=int, default=5, help="checks timed per point (median)")
    ap.add_argument("--restores", type=int, default=3, help="restores timed per point")
    ap.add_argument("--more", type=int, default=9, help="backups added after the first")
    ap.add_argument("--quick", action="store_true",
                    help="scale 1, one check and one restore per point")
    args = ap.parse_args()
    if args.quick:
        args.scale, args.reps, args.restores = 1, 1, 1
    if shutil.which("pgbackrest") is None:
        sys.exit("pgbackrest is not installed")

    cluster, config, kwargs = pgbackrest_cluster(
        STANZA, conf={"shared_buffers": "128MB", "max_wal_size": "1GB"})
    work = Path(tempfile.mkdtemp(prefix="sk-restore-bench-"))
    rows: list[tuple[int, float, int, dict[str, tuple[float, float]]]] = []
    try:
        db = cluster.createdb("bench")
        url = cluster.url(db)
        print(f"pgbench -i -s {args.scale} ...", file=sys.stderr)
        run_as_postgres([str(PG_BIN / "pgbench"), "-i", "-q", "-s", str(args.scale),
                         "-h", "127.0.0.1", "-p", str(cluster.port), "-U", "postgres", db])
        size = int(scalar(url, "SELECT pg_database_size(current_database())"))
        manager = BackupManager(Target.from_url(url), "pgbackrest", work / "backups", **kwargs)
        first = manager.create("set-01")
        for n in range(1, args.more + 2):
            if n > 1:
                execute(url, f"UPDATE pgbench_accounts SET abalance = abalance + 1 "
                             f"WHERE aid % 50 = {n}", "CHECKPOINT")
                manager.create(f"set-{n:02d}")
            if n in (1, args.more + 1):
                count = backups(config)
                print(f"{count} backup(s) in the repository:", file=sys.stderr)
                mib, wal = repository(cluster.root)
                rows.append((count, mib, wal, measure(manager, first, args.reps, args.restores)))
    finally:
        cluster.destroy()
        shutil.rmtree(work, ignore_errors=True)

    head = ("backups", "repo", "WAL", "check: whole repo", "check: set", "set/whole",
            "restore: whole repo", "restore: set", "set/whole")
    table = []
    for count, mib, wal, r in rows:
        (cw, rw), (cs, rs) = r["whole repository"], r["set alone"]
        table.append((str(count), f"{mib:.0f} MiB", str(wal), f"{cw:.2f} s", f"{cs:.2f} s",
                      f"{cs / cw:.2f}x", f"{rw:.2f} s", f"{rs:.2f} s", f"{rs / rw:.2f}x"))
    if len(rows) == 2:
        (_, m1, w1, a), (_, m2, w2, b) = rows
        ratio = [b[k][i] / a[k][i] for i in (0, 1) for k in ("whole repository", "set alone")]
        table.append((f"{rows[1][0]} / {rows[0][0]}", f"{m2 / m1:.1f}x", f"{w2 / w1:.1f}x",
                      f"{ratio[0]:.2f}x", f"{ratio[1]:.2f}x", "", f"{ratio[2]:.2f}x",
                      f"{ratio[3]:.2f}x", ""))
    widths = [max(len(x[i]) for x in [head, *table]) for i in range(len(head))]

    def line(cells: tuple[str, ...]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    load = "/".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"database: {size / 1024 / 1024:.0f} MiB (pgbench -s {args.scale}); backup 1 checked "
          f"and restored, medians of {args.reps} checks and {args.restores} restores; "
          f"load average {load}")
    print(line(head))
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in table:
        print(line(row))
    print("both checks start with pgbackrest info (is the backup still listed?): "
          + ", ".join(f"{r['info'][0]:.2f} s with {c}" for c, _, _, r in rows))


if __name__ == "__main__":
    try:
        main()
    except subprocess.CalledProcessError as e:
        sys.exit(f"{e.cmd[0]} failed: {e.stderr}")
