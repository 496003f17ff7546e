"""What a rehearsal costs against the upgrade it rehearses, on a database of real size.

Not a test. Builds a throwaway PostgreSQL 15 cluster, fills one database to ``--mb`` (default
250 MB), writes a project with three migrations (a column with a default, an index, an update
of a tenth of the rows; each with its down part) and measures, in one run:

- the upgrade itself (``start``: preflight, pg_dump backup, migrations, health, tag), on a copy
  made beforehand so that every measurement starts from the same data;
- ``rehearse`` with nothing else connected: the clone is ``CREATE DATABASE ... TEMPLATE``;
- ``rehearse`` while a session is connected to the database: the clone is a new pg_dump
  restored into a fresh database;

each with how long the clone took and the three passes (upgrade, rollback, upgrade again).

    python benchmarks/rehearse_bench.py [--mb 250]

Run as root (the cluster runs as the postgres OS user). The cluster runs with fsync=off, like
the test clusters: absolute times are optimistic, the ratios are what matters.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.backup_bench import fill, mib
from statekeeper import command
from tests.pgcluster import PgCluster
from tests.test_backup_support import scalar

MIGRATIONS = {
    "001_note_flag.sql": "ALTER TABLE positions ADD COLUMN flagged boolean NOT NULL DEFAULT false;"
                         "\n-- statekeeper:down\nALTER TABLE positions DROP COLUMN flagged;\n",
    "002_symbol_index.sql": "CREATE INDEX positions_symbol ON positions (symbol);\n"
                            "-- statekeeper:down\nDROP INDEX positions_symbol;\n",
    "003_flag_some.sql": "UPDATE positions SET flagged = true WHERE id % 10 = 0;\n"
                         "-- statekeeper:down\nUPDATE positions SET flagged = false "
                         "WHERE id % 10 = 0;\n",
}


def project(base: Path, url: str) -> Any:
    base.mkdir(parents=True)
    (base / "migrations").mkdir()
    for name, text in MIGRATIONS.items():
        (base / "migrations" / name).write_text(text)
    (base / "statekeeper.toml").write_text(
        f'[target]\nurl = "{url}"\n\n[migrations]\ndir = "migrations"\n\n'
        '[health]\nchecks = [{ name = "users", sql = "SELECT count(*) FROM users", '
        'expect = "10000" }]\n')
    command.init(str(base / "statekeeper.toml"), None, None, None, "migrations")
    s = command.Settings.load(str(base / "statekeeper.toml"))
    command.migrate_tag(s, "v2.5")
    return s


def timed(f: Any) -> tuple[float, Any]:
    t0 = time.monotonic()
    out = f()
    return time.monotonic() - t0, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mb", type=int, default=250, help="database size to fill (MB)")
    args = ap.parse_args()
    import tempfile

    root = Path(tempfile.mkdtemp(prefix="sk-rehearse-bench-"))
    cluster = PgCluster().start()
    try:
        db = cluster.createdb("trading")
        url = cluster.url(db)
        print(f"filling {db} to {args.mb} MB ...", file=sys.stderr)
        fill(url, args.mb)
        size = scalar(url, "SELECT pg_database_size(current_database())")
        rows = scalar(url, "SELECT count(*) FROM positions")
        # the upgrade runs on its own copy, so the rehearsals see the database as it was
        cluster.psql(f'CREATE DATABASE "{db}_up" TEMPLATE "{db}"')
        up = project(root / "up", cluster.url(f"{db}_up"))
        s = project(root / "proj", url)

        print("upgrade ...", file=sys.stderr)
        t_up, run = timed(lambda: command.start(up, "v2.6"))
        assert run.state == "completed", run.failure
        print("rehearse (TEMPLATE) ...", file=sys.stderr)
        t_tpl, tpl = timed(lambda: command.rehearse(s, "v2.6"))
        print("rehearse (pg_dump restore, a session connected) ...", file=sys.stderr)
        held = held_session(url)
        try:
            t_rst, rst = timed(lambda: command.rehearse(s, "v2.6"))
        finally:
            held.close()
    finally:
        cluster.destroy()

    print()
    print(f"database: {mib(size)}, {rows:,} rows in positions; three migrations")
    print()
    print(f"{'what':<44} {'seconds':>8} {'x upgrade':>10}")
    print(f"{'upgrade (start, with its pg_dump backup)':<44} {t_up:>8.1f} {1.0:>10.2f}")
    for label, t, r in (("rehearse, clone by TEMPLATE", t_tpl, tpl),
                        ("rehearse, clone by pg_dump + restore", t_rst, rst)):
        assert r["passed"], r["problems"]
        assert r["clone"]["method"] in ("template", "restore"), r["clone"]
        passes = sum((p["ms"] or 0) for p in r["passes"].values()) / 1000
        print(f"{label + ' (' + r['clone']['method'] + ')':<44} {t:>8.1f} {t / t_up:>10.2f}")
        print(f"{'  of which the three passes':<44} {passes:>8.1f}")
        print(f"{'  clone, compare, drop and the rest':<44} {t - passes:>8.1f}")
    print()
    print("A rehearsal runs the upgrade twice and its rollback once on the clone: about 3x the "
          "upgrade plus the clone; TEMPLATE makes the clone a file copy instead of a dump and "
          "restore.")


def held_session(url: str) -> Any:
    """A session on the database: CREATE DATABASE ... TEMPLATE refuses while it is there."""
    from statekeeper.targets import Target

    return Target.from_url(url).connect(autocommit=True)


if __name__ == "__main__":
    main()
