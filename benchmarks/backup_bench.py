"""Backup and restore wall time, pg_dump vs pgBackRest, on a ~200 MB database.

Not a test. Builds a throwaway PostgreSQL 15 cluster with WAL archiving into a fresh pgBackRest
repository (as the tests do), fills one database to about 200 MB, and for each method times
``BackupManager.create`` and ``BackupManager.restore`` after damaging the data (10% of the rows
deleted, a table added). Both include what statekeeper adds around the tool: the fingerprint,
the artifact hash and manifest, and for restore the verification first and the fingerprint
comparison after (``report_damage=False``). Prints one table.

    python benchmarks/backup_bench.py [--mb 200]

Run as root (the cluster and pgBackRest run as the postgres OS user) on a machine with
PostgreSQL 15 server binaries and pgbackrest installed. The cluster runs with fsync=off, like
the test clusters: absolute times are optimistic, the comparison is what matters.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from statekeeper.backups import BackupManager
from statekeeper.fingerprint import fingerprint
from statekeeper.targets import Target
from tests.test_backup_support import execute, pgbackrest_cluster, scalar


def mib(n: float) -> str:
    return f"{n / 1024 / 1024:,.1f} MiB"


def fill(url: str, target_mb: int) -> int:
    execute(url, """
        CREATE TABLE users (id int PRIMARY KEY, name text NOT NULL, email text UNIQUE);
        CREATE TABLE positions (id bigint PRIMARY KEY, user_id int NOT NULL REFERENCES users,
            symbol text NOT NULL, qty numeric(14,4) NOT NULL, price double precision,
            opened_at timestamptz NOT NULL, note text);
        CREATE INDEX positions_user ON positions (user_id);
        INSERT INTO users SELECT g, 'user ' || g, 'u' || g || '@example.com'
          FROM generate_series(1, 10000) g;
    """)
    batch, start = 250_000, 1
    while scalar(url, "SELECT pg_database_size(current_database())") < target_mb * 1024 * 1024:
        execute(url, f"""
            INSERT INTO positions
            SELECT g, 1 + g % 10000, (ARRAY['AAPL','MSFT','EURUSD','BTC','ES'])[1 + g % 5],
                   (g % 997) * 1.25, random() * 1000,
                   timestamptz '2024-01-01' + g * interval '1 second',
                   md5(g::text) || md5((g * 7)::text)
              FROM generate_series({start}, {start + batch - 1}) g""")
        start += batch
    execute(url, "VACUUM ANALYZE", "CHECKPOINT")
    return int(scalar(url, "SELECT pg_database_size(current_database())"))


def hurt(url: str, n: int) -> None:
    execute(url, f"DELETE FROM positions WHERE id % 10 = {n}",
            f"CREATE TABLE audit_tmp_{n} AS SELECT * FROM users LIMIT 100")


def timed(f):  # type: ignore[no-untyped-def]
    t0 = time.perf_counter()
    r = f()
    return r, time.perf_counter() - t0


def repo_size(config: Path, stanza: str, label: str) -> tuple[int, int]:
    out = subprocess.run(
        ["runuser", "-u", "postgres", "--", "pgbackrest", f"--config={config}",
         f"--stanza={stanza}", "info", "--output=json"],
        capture_output=True, text=True, check=True).stdout
    for b in json.loads(out)[0]["backup"]:
        if b["label"] == label:
            repo = b["info"]["repository"]
            return int(repo.get("size", 0)), int(repo.get("delta", 0))
    return 0, 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=int, default=200, help="database size to build (MB)")
    args = ap.parse_args()
    if shutil.which("pgbackrest") is None:
        sys.exit("pgbackrest is not installed")

    cluster, config, kwargs = pgbackrest_cluster(
        "bench", conf={"shared_buffers": "256MB", "max_wal_size": "4GB",
                       "checkpoint_timeout": "30min"})
    work = Path(tempfile.mkdtemp(prefix="sk-bench-"))
    rows: list[tuple[str, str, str, str, str]] = []
    try:
        url = cluster.url(cluster.createdb("bench"))
        print(f"building a {args.mb} MB database ...", file=sys.stderr)
        size, t_fill = timed(lambda: fill(url, args.mb))
        target = Target.from_url(url)
        n_rows = scalar(url, "SELECT count(*) FROM positions")
        fp, t_fp = timed(lambda: fingerprint(target))

        dump = BackupManager(target, "pg_dump", work / "dumps")
        print("pg_dump ...", file=sys.stderr)
        m, t_b = timed(lambda: dump.create("dump-1"))
        hurt(url, 1)
        r, t_r = timed(lambda: dump.restore("dump-1", report_damage=False))
        assert r.fingerprint == fp
        rows.append(("pg_dump -Fc / one-transaction restore", f"{t_b:.1f}", f"{t_r:.1f}",
                     mib(m.size), "custom-format dump, gzip"))

        br = BackupManager(target, "pgbackrest", work / "pgbr", **kwargs)
        print("pgBackRest full ...", file=sys.stderr)
        m, t_b = timed(lambda: br.create("pgbr-full"))
        full_size, _ = repo_size(config, "bench", str(m.pgbackrest_label))
        hurt(url, 2)
        r, t_r = timed(lambda: br.restore("pgbr-full", report_damage=False))
        assert r.fingerprint == fp
        rows.append(("pgBackRest full + PITR (delta restore)", f"{t_b:.1f}", f"{t_r:.1f}",
                     mib(full_size), "whole cluster, lz4, process-max=2"))

        print("pgBackRest incremental ...", file=sys.stderr)
        execute(url, "UPDATE users SET name = name || '!' WHERE id <= 100")
        fp2 = fingerprint(target)
        m, t_b = timed(lambda: br.create("pgbr-incr"))
        _, incr_delta = repo_size(config, "bench", str(m.pgbackrest_label))
        hurt(url, 3)
        r, t_r = timed(lambda: br.restore("pgbr-incr", report_damage=False))
        assert r.fingerprint == fp2
        rows.append(("pgBackRest incr + PITR (delta restore)", f"{t_b:.1f}", f"{t_r:.1f}",
                     mib(incr_delta), f"after a small change; {m.pgbackrest_type}"))
    finally:
        cluster.destroy()
        shutil.rmtree(work, ignore_errors=True)

    head = ("method", "backup (s)", "restore (s)", "backup size", "notes")
    widths = [max(len(x[i]) for x in [head, *rows]) for i in range(len(head))]

    def line(cells: tuple[str, ...]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    print(f"database: {mib(size)} (positions: {n_rows:,} rows; built in {t_fill:.0f} s); "
          f"one fingerprint: {t_fp:.1f} s; times include fingerprint, hashing and "
          "verification")
    print(line(head))
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in rows:
        print(line(row))


if __name__ == "__main__":
    main()
