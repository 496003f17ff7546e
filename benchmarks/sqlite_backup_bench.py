"""The SQLite target's backup and restore path, against the online backup API and a file copy.

Not a test. Builds one SQLite file of at least ``--mb`` MB and ``--rows`` rows (the users and
positions tables of backup_bench.py, in WAL mode, as an application would run it), then times,
interleaved, ``--repeat`` times each (medians are printed):

* backup alone: ``sqlite3.Connection.backup`` of the file into a new one (the floor);
* backup + fingerprint: ``SqliteMethod.create`` (the same API, then the fingerprint of the
  copy), and ``BackupManager.create`` (plus the sha256 and the manifest) for information;
* restore alone: the backup copied over the target file (copy, fsync, rename: the floor);
* the restore path of a failed upgrade: the artifact hashed against the ledger's record,
  ``BackupManager.restore(check=False)`` (verify, copy, checkpoint of the old file, atomic
  replace) and the compare fingerprint.

Prints one table with each ratio and its target (issue 15: backup + fingerprint <= 1.1x the
backup alone; the issue sets no number for the restore path: 1.1x is shown as the bar).

    python benchmarks/sqlite_backup_bench.py [--mb 200] [--rows 1000000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.backup_bench import mib
from statekeeper.backups import BackupManager, sha256_file
from statekeeper.backups.sqlite import SqliteMethod
from statekeeper.fingerprint import fingerprint
from statekeeper.targets import Target


def fill(path: Path, mb: int, rows: int) -> int:
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.executescript("""
        CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT NOT NULL, email TEXT UNIQUE);
        CREATE TABLE positions (id INTEGER PRIMARY KEY, user_id INTEGER NOT NULL
            REFERENCES users, symbol TEXT NOT NULL, qty NUMERIC NOT NULL, price REAL,
            opened_at TEXT NOT NULL, note TEXT);
        CREATE INDEX positions_user ON positions (user_id);
    """)
    with conn:
        conn.executemany("INSERT INTO users VALUES (?, ?, ?)",
                         ((g, f"user {g}", f"u{g}@example.com") for g in range(1, 10001)))
    start, batch = 1, 250_000
    while start <= rows or path.stat().st_size < mb * 1024 * 1024:
        with conn:
            conn.execute(f"""
                WITH RECURSIVE g(n) AS (SELECT {start} UNION ALL SELECT n + 1 FROM g
                                        WHERE n < {start + batch - 1})
                INSERT INTO positions SELECT n, 1 + n % 10000,
                    (CASE n % 5 WHEN 0 THEN 'AAPL' WHEN 1 THEN 'MSFT' WHEN 2 THEN 'EURUSD'
                     WHEN 3 THEN 'BTC' ELSE 'ES' END), (n % 997) * 1.25, abs(random()) % 100000
                     / 100.0, datetime(1704067200 + n, 'unixepoch'), hex(randomblob(32))
                FROM g""")
        start += batch
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    return path.stat().st_size


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=int, default=200, help="database size to build (MB)")
    ap.add_argument("--rows", type=int, default=1_000_000, help="at least this many rows")
    ap.add_argument("--repeat", type=int, default=3, help="runs of each measurement")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="sk-sqlitebench-", dir="/var/tmp"))
    try:
        db = work / "app.db"
        print(f"building a {args.mb} MB SQLite file ...", file=sys.stderr)
        t0 = time.perf_counter()
        size = fill(db, args.mb, args.rows)
        t_fill = time.perf_counter() - t0
        target = Target.from_url(f"sqlite:///{db}")
        n_rows = sum(int(sqlite3.connect(db).execute(f"SELECT count(*) FROM {t}").fetchone()[0])
                     for t in ("users", "positions"))
        want = fingerprint(target)
        n = 0

        def backup_alone() -> None:
            out = work / "alone.sqlite"
            out.unlink(missing_ok=True)
            src, dst = sqlite3.connect(db), sqlite3.connect(out)
            try:
                src.backup(dst)
            finally:
                src.close()
                dst.close()

        def method_create() -> None:
            nonlocal n
            n += 1
            d = work / f"m{n}"
            d.mkdir()
            assert SqliteMethod(target).create(d, f"m{n}").fingerprint == want
            shutil.rmtree(d)

        def manager_create() -> None:
            nonlocal n
            n += 1
            BackupManager(target, "sqlite", work / "mgr").create(f"b{n}")
            shutil.rmtree(work / "mgr" / f"b{n}")

        kept = BackupManager(target, "sqlite", work / "kept")
        m = kept.create("r1")

        def restore_alone() -> None:
            tmp = work / ".app.db.copy"
            with m.artifact_path.open("rb") as inp, tmp.open("wb") as out:
                shutil.copyfileobj(inp, out, 1 << 20)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, db)

        def restore_path() -> None:
            got = kept.get("r1")
            assert sha256_file(got.artifact_path) == (got.size, got.sha256)  # the ledger's
            kept.restore("r1", check=False, report_damage=False)
            assert fingerprint(target) == want  # the compare step

        cases: dict[str, Callable[[], object]] = {
            "backup": backup_alone, "method": method_create, "manager": manager_create,
            "fingerprint": lambda: fingerprint(target),
            "restore": restore_alone, "restore_path": restore_path,
        }
        times: dict[str, list[float]] = {k: [] for k in cases}
        for i in range(args.repeat):
            print(f"run {i + 1}/{args.repeat} ...", file=sys.stderr)
            for name, f in cases.items():
                t0 = time.perf_counter()
                f()
                times[name].append(time.perf_counter() - t0)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    med = {k: statistics.median(v) for k, v in times.items()}

    def ratio(a: str, b: str, target: float | None) -> tuple[str, str, str]:
        r = med[a] / med[b]
        if target is None:
            return f"{r:.2f}x", "", ""
        return f"{r:.2f}x", f"<= {target}x", "met" if r <= target else "missed"

    rows = [
        ("online backup API alone (floor)", "backup", ("1.00x", "", "")),
        ("backup + fingerprint (SqliteMethod.create)", "method", ratio("method", "backup", 1.1)),
        ("BackupManager.create (+ sha256, manifest)", "manager", ratio("manager", "backup", None)),
        ("fingerprint alone", "fingerprint", ratio("fingerprint", "backup", None)),
        ("copy over the file alone (floor)", "restore", ("1.00x", "", "")),
        ("restore path: hash + restore + compare fingerprint", "restore_path",
         ratio("restore_path", "restore", 1.1)),
    ]
    head = ("measurement", "median (s)", "runs (s)", "ratio", "target", "")
    cells = [(label, f"{med[k]:.2f}", " ".join(f"{x:.2f}" for x in times[k]), *rest)
             for label, k, rest in rows]
    widths = [max(len(x[i]) for x in [head, *cells]) for i in range(len(head))]

    def line(c: tuple[str, ...]) -> str:
        return "| " + " | ".join(x.ljust(w) for x, w in zip(c, widths, strict=True)) + " |"

    load = "/".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"SQLite file: {mib(size)}, {n_rows:,} rows (built in {t_fill:.0f} s); "
          f"{args.repeat} interleaved runs, medians; load average {load}")
    print(line(head))
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for c in cells:
        print(line(c))


if __name__ == "__main__":
    main()
