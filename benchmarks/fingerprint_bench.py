"""The PostgreSQL fingerprint, the pg_dump backup and the restore path at real size, against
their floors.

Not a test. Builds a throwaway PostgreSQL 15 cluster (tests/pgcluster.py, fsync=off) with one
database of at least ``--mb`` MB and ``--rows`` rows (the positions/users tables of
backup_bench.py), then times, interleaved, ``--repeat`` times each (medians are printed):

* floor: one ``psql`` session running ``COPY <table> TO STDOUT`` of every table, to /dev/null;
* fingerprint, old: the connection reader (rows through psycopg, hashed per row as received);
* fingerprint, new: ``statekeeper.fingerprint.fingerprint`` (psql readers in one exported
  snapshot, hashed in 1 MiB reads);
* pg_dump -Fc alone, to a file;
* backup + fingerprint: ``PgDumpMethod.create`` (the dump and the fingerprint concurrently, in
  the snapshot pg_dump uses), and ``BackupManager.create`` (plus the manifest, the artifact's
  sha256 and the free-space check) for information;
* the same two with ``[backup] jobs = --jobs``: ``pg_dump -Fd -j N`` alone, and
  ``PgDumpMethod(jobs=N).create``;
* the restore path of a failed upgrade, for the custom-format dump and for the directory one:
  ``pg_restore --clean --if-exists`` alone (``--single-transaction``; ``-j N`` for the
  directory), against what a run's restore and compare steps do: the artifact hashed against
  the ledger's record, ``BackupManager.restore(check=False)`` (verify, the drops and the dump
  replayed: one psql transaction, or ``pg_restore -j N``) and the compare fingerprint.

Prints one table with each ratio and its target (issue 15: fingerprint <= 1.3x the floor,
backup + fingerprint <= 1.1x pg_dump alone; the issue sets no number for the restore path:
1.1x, the backup's, is shown as the bar). The exit status is 0 either way.

    python benchmarks/fingerprint_bench.py [--mb 260] [--rows 1000000] [--repeat 3] [--jobs 2]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psycopg

from benchmarks.backup_bench import fill, mib
from statekeeper.backups import BackupManager, sha256_file
from statekeeper.backups.pg_dump import PgDumpMethod
from statekeeper.dialects.pg_fingerprint import pg_fingerprint
from statekeeper.fingerprint import Fingerprint, fingerprint
from statekeeper.targets import Target
from tests.pgcluster import PG_BIN, PgCluster
from tests.test_backup_support import execute, scalar


def old_fingerprint(url: str) -> Fingerprint:
    conn = psycopg.connect(url)
    try:
        with conn.transaction():
            return pg_fingerprint(conn)  # no target: the connection reader
    finally:
        conn.close()


def floor(url: str) -> None:
    tables = [r[0] for r in psycopg.connect(url, autocommit=True).execute(
        "SELECT quote_ident(relname) FROM pg_class WHERE relkind = 'r' "
        "AND relnamespace = 'public'::regnamespace").fetchall()]
    subprocess.run([str(PG_BIN / "psql"), "-X", "-q", *[a for t in tables
                    for a in ("-c", f"COPY {t} TO STDOUT")], url],
                   stdout=subprocess.DEVNULL, check=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=int, default=260, help="database size to build (MB)")
    ap.add_argument("--rows", type=int, default=1_000_000, help="at least this many rows")
    ap.add_argument("--repeat", type=int, default=3, help="runs of each measurement")
    ap.add_argument("--jobs", type=int, default=2, help="[backup] jobs for the -Fd cases")
    ap.add_argument("--skip-restore", action="store_true", help="no restore-path cases")
    args = ap.parse_args()

    cluster = PgCluster(conf={"shared_buffers": "512MB", "max_wal_size": "4GB"}).start()
    work = Path(tempfile.mkdtemp(prefix="sk-fpbench-"))
    try:
        url = cluster.url(cluster.createdb("bench"))
        print(f"building a {args.mb} MB database ...", file=sys.stderr)
        t0 = time.perf_counter()
        size = fill(url, args.mb)
        while scalar(url, "SELECT count(*) FROM positions") < args.rows:
            execute(url, "INSERT INTO positions SELECT id + (SELECT max(id) FROM positions), "
                         "user_id, symbol, qty, price, opened_at, note FROM positions "
                         "WHERE id <= 250000", "VACUUM ANALYZE")
            size = int(scalar(url, "SELECT pg_database_size(current_database())"))
        t_fill = time.perf_counter() - t0
        n_rows = int(scalar(url, "SELECT (SELECT count(*) FROM positions) "
                                 "+ (SELECT count(*) FROM users)"))
        target = Target.from_url(url)
        floor(url)  # warm the cache: every measurement reads from shared buffers / page cache
        want = fingerprint(target)
        if old_fingerprint(url) != want:
            sys.exit("the old and the new reader disagree")
        dump_file = work / "alone.dump"
        n = 0

        def pg_dump_alone() -> None:
            subprocess.run([str(PG_BIN / "pg_dump"), "--format=custom", f"--file={dump_file}",
                            f"--dbname={url}"], check=True)

        def method_create() -> None:
            nonlocal n
            n += 1
            d = work / f"m{n}"
            d.mkdir()
            created = PgDumpMethod(target, pg_bin=PG_BIN).create(d, f"m{n}")
            assert created.fingerprint == want

        def manager_create() -> None:
            nonlocal n
            n += 1
            BackupManager(target, "pg_dump", work / "mgr", pg_bin=PG_BIN).create(f"b{n}")

        dir_file = work / "alone.dumpdir"

        def pg_dump_dir_alone() -> None:
            shutil.rmtree(dir_file, ignore_errors=True)
            subprocess.run([str(PG_BIN / "pg_dump"), "--format=directory", f"--jobs={args.jobs}",
                            f"--file={dir_file}", f"--dbname={url}"], check=True)

        def method_create_dir() -> None:
            nonlocal n
            n += 1
            d = work / f"m{n}"
            d.mkdir()
            created = PgDumpMethod(target, pg_bin=PG_BIN, jobs=args.jobs).create(d, f"m{n}")
            assert created.fingerprint == want

        # the backups the restore cases restore (the manifests are what a run's step recorded)
        one = BackupManager(target, "pg_dump", work / "r1", pg_bin=PG_BIN)
        par = BackupManager(target, "pg_dump", work / "rj", pg_bin=PG_BIN, jobs=args.jobs)
        one_m, par_m = one.create("fc"), par.create("fd")

        def pg_restore_alone(artifact: Path, jobs: int) -> None:
            more = [f"--jobs={jobs}"] if jobs > 1 else ["--single-transaction"]
            subprocess.run([str(PG_BIN / "pg_restore"), "--clean", "--if-exists",
                            "--exit-on-error", *more, f"--dbname={url}", str(artifact)],
                           check=True)

        def restore_path(manager: BackupManager, backup_id: str) -> None:
            m = manager.get(backup_id)
            assert sha256_file(m.artifact_path) == (m.size, m.sha256)  # the ledger's record
            manager.restore(backup_id, check=False, report_damage=False)
            assert fingerprint(target) == want  # the compare step

        cases: dict[str, Callable[[], object]] = {
            "floor": lambda: floor(url),
            "fp_old": lambda: old_fingerprint(url),
            "fp_new": lambda: fingerprint(target),
            "dump": pg_dump_alone,
            "backup": method_create,
            "manager": manager_create,
            "dump_j": pg_dump_dir_alone,
            "backup_j": method_create_dir,
        }
        if not args.skip_restore:
            cases.update({
                "restore": lambda: pg_restore_alone(one_m.artifact_path, 1),
                "restore_fp": lambda: restore_path(one, "fc"),
                "restore_j": lambda: pg_restore_alone(par_m.artifact_path, args.jobs),
                "restore_j_fp": lambda: restore_path(par, "fd"),
            })
        times: dict[str, list[float]] = {k: [] for k in cases}
        for i in range(args.repeat):
            print(f"run {i + 1}/{args.repeat} ...", file=sys.stderr)
            for name, f in cases.items():
                t0 = time.perf_counter()
                f()
                times[name].append(time.perf_counter() - t0)
        sizes = (one_m.size, par_m.size)
    finally:
        cluster.destroy()
        shutil.rmtree(work, ignore_errors=True)

    med = {k: statistics.median(v) for k, v in times.items()}

    def ratio(a: str, b: str, target: float | None) -> tuple[str, str, str]:
        r = med[a] / med[b]
        if target is None:
            return f"{r:.2f}x", "", ""
        return f"{r:.2f}x", f"<= {target}x", "met" if r <= target else "missed"

    j = args.jobs
    rows = [
        ("COPY TO /dev/null (floor)", med["floor"], ("1.00x", "", "")),
        ("fingerprint, old (connection reader)", med["fp_old"], ratio("fp_old", "floor", None)),
        ("fingerprint, new (psql readers)", med["fp_new"], ratio("fp_new", "floor", 1.3)),
        ("pg_dump -Fc alone", med["dump"], ("1.00x", "", "")),
        ("backup + fingerprint (PgDumpMethod.create)", med["backup"],
         ratio("backup", "dump", 1.1)),
        ("BackupManager.create (+ manifest, sha256)", med["manager"],
         ratio("manager", "dump", None)),
        (f"pg_dump -Fd -j {j} alone", med["dump_j"], ("1.00x", "", "")),
        (f"backup + fingerprint, jobs = {j} (-Fd -j {j})", med["backup_j"],
         ratio("backup_j", "dump_j", 1.1)),
    ]
    keys = ["floor", "fp_old", "fp_new", "dump", "backup", "manager", "dump_j", "backup_j"]
    if "restore" in med:
        rows += [
            ("pg_restore --clean --single-transaction alone", med["restore"], ("1.00x", "", "")),
            ("restore path: hash + restore + compare fingerprint", med["restore_fp"],
             ratio("restore_fp", "restore", 1.1)),
            (f"pg_restore --clean -j {j} alone (-Fd)", med["restore_j"], ("1.00x", "", "")),
            (f"restore path, jobs = {j} (pg_restore -j {j})", med["restore_j_fp"],
             ratio("restore_j_fp", "restore_j", 1.1)),
        ]
        keys += ["restore", "restore_fp", "restore_j", "restore_j_fp"]
    head = ("measurement", "median (s)", "runs (s)", "ratio", "target", "")
    cells = [(label, f"{t:.2f}", " ".join(f"{x:.2f}" for x in times[k]), *rest)
             for (label, t, rest), k in zip(rows, keys, strict=True)]
    widths = [max(len(x[i]) for x in [head, *cells]) for i in range(len(head))]

    def line(c: tuple[str, ...]) -> str:
        return "| " + " | ".join(x.ljust(w) for x, w in zip(c, widths, strict=True)) + " |"

    load = "/".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"database: {mib(size)}, {n_rows:,} rows (built in {t_fill:.0f} s); "
          f"{args.repeat} interleaved runs, medians; dump {mib(sizes[0])}, -Fd {mib(sizes[1])}; "
          f"load average {load}")
    print(line(head))
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for c in cells:
        print(line(c))


if __name__ == "__main__":
    main()
