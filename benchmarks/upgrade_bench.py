"""Ten small migrations on PostgreSQL: statekeeper vs Liquibase vs Sqitch vs bare psql.

Not a test. In ONE run, against ONE throwaway PostgreSQL 15 cluster started with fsync=on (so
commits cost what they cost on a real server; the cluster lives on disk, not on /dev/shm where
the test clusters live and where an fsync costs nothing), the same 10 small migrations are
applied to a fresh, seeded database by:

  statekeeper (no backup)   ``statekeeper start`` with ``[backup] enabled = false``
  statekeeper (pg_dump)     ``statekeeper start`` with a pg_dump backup first
  Liquibase 4.28.1          ``node-liquibase update`` with one formatted-SQL changelog
  Sqitch                    ``sqitch deploy`` (Debian package; DBD::Pg for its registry)
  psql (floor)              ``psql -1 -f FILE``, one process per file, no bookkeeping at all

Each repetition takes a fresh database for every tool (created and seeded untimed), runs the
tools round-robin (so drift in the machine's load hits all of them alike), times the apply,
then times a second, no-op run of the same tool (nothing pending; for statekeeper a ``start``
to a new version with no migration left). Medians are printed, after one untimed warm-up
round. Every tool's result is checked against the first one's (same application tables,
columns, constraints, indexes and rows). statekeeper runs as the installed console script
with its bytecode cached (as an installed package has it) and a fresh ledger per project.

Also measured:
  cold start      ``statekeeper --help``, a fresh process each time (median of --cold)
  status          ``statekeeper status`` right after a crash (ledger replay, no target work)
  resume decides  a run killed with STATEKEEPER_FAILPOINT=migrate.done:5 (the 5th migration
                  committed, the ledger not told) is resumed with STATEKEEPER_FAILPOINT=
                  migrate.before: the process dies at the first point after the in-doubt step
                  has been settled by its probe and the verdict committed to the ledger, so
                  its wall time is exactly "process start -> decision recorded". Cross-checked
                  on a second crashed run resumed to the end: the time at which its stdout
                  prints the settled line, and the time the whole resume takes.
  connections     ``log_connections`` is on: the target connections each tool opens per run
                  are counted from the server log (statekeeper's ledger is SQLite: not counted)
  breakdown       one instrumented run each of start, no-op start and resume: the child wraps
                  the library's costly calls with counters (BREAKDOWN_CHILD, in this file
                  only; nothing is added to the library) and imports the heavy packages one
                  by one to time them; fsync/fdatasync calls are counted with strace.

    python benchmarks/upgrade_bench.py [--reps 5] [--cold 10] [--json FILE] [--skip-liquibase]

Run as root (the cluster runs as the postgres OS user, like the tests) on a machine with the
PostgreSQL 15 server binaries, psql/pg_dump, sqitch with libdbd-pg-perl, node/npm and Java 17.
Liquibase is installed with ``npm install liquibase@4.28.1`` into benchmarks/.cache/ (git-
ignored; --liquibase-prefix to put it elsewhere) the first time; the registry must be
reachable then, Liquibase itself runs with no network.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.pgcluster import PgCluster  # noqa: E402
from tests.upgrade_support import SEED_SQL  # noqa: E402

CACHE = ROOT / "benchmarks" / ".cache"  # git-ignored: Liquibase, bytecode
LIQUIBASE_VERSION = "4.28.1"
RUN_TO = "v2.6"

# Ten small migrations on the seeded schema (users, positions, settings), each with a down part.
MIGRATIONS: list[tuple[str, str, str]] = [
    ("001_orders",
     "CREATE TABLE orders (id integer PRIMARY KEY, user_id integer NOT NULL REFERENCES users(id),"
     " symbol text NOT NULL, qty integer NOT NULL);",
     "DROP TABLE orders;"),
    ("002_user_status",
     "ALTER TABLE users ADD COLUMN status text NOT NULL DEFAULT 'active';",
     "ALTER TABLE users DROP COLUMN status;"),
    ("003_positions_symbol_idx",
     "CREATE INDEX positions_symbol_idx ON positions (symbol);",
     "DROP INDEX positions_symbol_idx;"),
    ("004_settings_orders",
     "INSERT INTO settings (key, value) VALUES ('orders', 'on');",
     "DELETE FROM settings WHERE key = 'orders';"),
    ("005_fills",
     "CREATE TABLE fills (id integer PRIMARY KEY, order_id integer NOT NULL REFERENCES"
     " orders(id), price numeric(14,4) NOT NULL, filled_at timestamptz NOT NULL DEFAULT now());",
     "DROP TABLE fills;"),
    ("006_qty_check",
     "ALTER TABLE positions ADD CONSTRAINT positions_qty_nonneg CHECK (qty >= 0);",
     "ALTER TABLE positions DROP CONSTRAINT positions_qty_nonneg;"),
    ("007_user_positions_view",
     "CREATE VIEW user_positions AS SELECT u.email, p.symbol, p.qty FROM users u"
     " JOIN positions p ON p.user_id = u.id;",
     "DROP VIEW user_positions;"),
    ("008_audit_log",
     "CREATE TABLE audit_log (id bigserial PRIMARY KEY, at timestamptz NOT NULL DEFAULT now(),"
     " actor text NOT NULL, action text NOT NULL);",
     "DROP TABLE audit_log;"),
    ("009_positions_opened_at",
     "ALTER TABLE positions ADD COLUMN opened_at timestamptz;\n"
     "UPDATE positions SET opened_at = '2024-01-02T00:00:00Z';",
     "ALTER TABLE positions DROP COLUMN opened_at;"),
    ("010_settings_fee",
     "UPDATE settings SET value = '4' WHERE key = 'fee_bps';",
     "UPDATE settings SET value = '5' WHERE key = 'fee_bps';"),
]

# The bookkeeping tables of each tool, left out when results are compared.
TOOL_TABLES = {"statekeeper_changelog", "statekeeper_tags", "databasechangelog",
               "databasechangeloglock"}


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


# -- the projects each tool runs from ------------------------------------------------------------
def write_statekeeper_project(base: Path, url: str, backup: bool) -> Path:
    from statekeeper import command

    base.mkdir(parents=True)
    mig = base / "migrations"
    mig.mkdir()
    for name, up, down in MIGRATIONS:
        (mig / f"{name}.sql").write_text(f"{up}\n-- statekeeper:down\n{down}\n")
    cfg = base / "statekeeper.toml"
    cfg.write_text(
        '[ledger]\nurl = "sqlite:///.statekeeper/ledger.db"\nkey = ".statekeeper/key.pem"\n\n'
        f'[target]\nurl = "{url}"\n\n[migrations]\ndir = "migrations"\n\n'
        f'[backup]\nmethod = "pg_dump"\ndir = "backups"\nenabled = {str(backup).lower()}\n'
    )
    command.init(str(cfg), None, None, None, "migrations")  # key + ledger; untimed
    return cfg


def write_liquibase_changelog(d: Path) -> Path:
    lines = ["--liquibase formatted sql", ""]
    for name, up, down in MIGRATIONS:
        lines += [f"--changeset bench:{name}", up, f"--rollback {down}", ""]
    path = d / "changelog.sql"
    path.write_text("\n".join(lines))
    return path


def write_sqitch_project(d: Path) -> Path:
    (d / "deploy").mkdir(parents=True)
    (d / "revert").mkdir()
    plan = ["%syntax-version=1.0.0", "%project=bench", ""]
    for name, up, down in MIGRATIONS:
        # sqitch's own script template: the change opens and commits its transaction
        (d / "deploy" / f"{name}.sql").write_text(f"BEGIN;\n{up}\nCOMMIT;\n")
        (d / "revert" / f"{name}.sql").write_text(f"BEGIN;\n{down}\nCOMMIT;\n")
        plan.append(f"{name} 2024-01-01T00:00:00Z Bench <bench@example.com> # {name}")
    (d / "sqitch.plan").write_text("\n".join(plan) + "\n")
    (d / "sqitch.conf").write_text('[core]\n\tengine = pg\n\tplan_file = sqitch.plan\n'
                                   '\ttop_dir = .\n[deploy]\n\tverify = false\n')
    return d


def write_psql_files(d: Path) -> list[Path]:
    d.mkdir(parents=True)
    files = []
    for name, up, _down in MIGRATIONS:
        p = d / f"{name}.sql"
        p.write_text(up + "\n")
        files.append(p)
    return files


# -- tools ---------------------------------------------------------------------------------------
def statekeeper_argv() -> list[str]:
    """The installed console script, as an operator runs it (not a pyenv shim), else -m cli."""
    script = Path(sysconfig.get_path("scripts")) / "statekeeper"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "cli"]


# Where statekeeper's bytecode is cached (None: as the environment says). An installed
# package has its .pyc files; a checkout run with PYTHONDONTWRITEBYTECODE=1 recompiles every
# module of cli/, statekeeper/ and ledger/ in every process (~50 ms here).
PYCACHE: Path | None = None


def child_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT), LC_ALL="C.UTF-8", LANG="C.UTF-8")
    env.pop("STATEKEEPER_FAILPOINT", None)
    if PYCACHE is not None:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = str(PYCACHE)
    env.update(extra)
    return env


def ensure_liquibase(prefix: Path) -> Path:
    exe = prefix / "node_modules" / ".bin" / "node-liquibase"
    pkg = prefix / "node_modules" / "liquibase" / "package.json"
    if exe.exists() and json.loads(pkg.read_text())["version"] == LIQUIBASE_VERSION:
        return exe
    prefix.mkdir(parents=True, exist_ok=True)
    print(f"npm install liquibase@{LIQUIBASE_VERSION} into {prefix} ...", file=sys.stderr)
    subprocess.run(["npm", "install", "--no-save", "--no-audit", "--no-fund", "--prefix",
                    str(prefix), f"liquibase@{LIQUIBASE_VERSION}"], check=True,
                   stdout=subprocess.DEVNULL)
    return exe


def check_tools(skip_liquibase: bool) -> None:
    missing = [t for t in ("psql", "pg_dump", "sqitch") if shutil.which(t) is None]
    if not skip_liquibase:
        missing += [t for t in ("node", "npm", "java") if shutil.which(t) is None]
    if missing:
        sys.exit(f"missing tools: {', '.join(missing)}")
    if subprocess.run(["perl", "-MDBD::Pg", "-e", "1"], capture_output=True).returncode != 0:
        sys.exit("sqitch's pg engine needs DBD::Pg: apt-get install libdbd-pg-perl")


@dataclass
class Result:
    apply: list[float] = field(default_factory=list)
    noop: list[float] = field(default_factory=list)
    conns_apply: list[int] = field(default_factory=list)
    conns_noop: list[int] = field(default_factory=list)


class Bench:
    def __init__(self, cluster: PgCluster, work: Path, liquibase: Path | None) -> None:
        self.cluster = cluster
        self.work = work
        self.liquibase = liquibase
        self.sk = statekeeper_argv()
        self.changelog = write_liquibase_changelog(work)
        self.sqitch_dir = write_sqitch_project(work / "sqitch")
        self.psql_files = write_psql_files(work / "psql")
        self.n = 0
        self.log = cluster.root / "server.log"

    # -- databases --------------------------------------------------------------------------
    def fresh_db(self, tool: str) -> str:
        db = self.cluster.createdb(re.sub(r"\W", "_", tool))
        sql = ";\n".join(SEED_SQL) + ";"
        self.cluster.psql(sql, db)
        self.cluster.psql("CHECKPOINT")  # the seed's dirty pages are not the tool's to flush
        return db

    def connections(self, db: str, since: int) -> int:
        with self.log.open("rb") as f:
            f.seek(since)
            text = f.read().decode("utf-8", "replace")
        return len(re.findall(rf"connection authorized: user=\S+ database={re.escape(db)}\b",
                              text))

    def log_pos(self) -> int:
        return self.log.stat().st_size

    def app_state(self, db: str) -> str:
        """Application tables, their columns, constraints, indexes, views, row counts."""
        skip = ",".join(f"'{t}'" for t in sorted(TOOL_TABLES))
        q = f"""
        SELECT string_agg(x, E'\\n' ORDER BY x) FROM (
          SELECT 'col ' || table_name || '.' || column_name || ' ' || data_type AS x
            FROM information_schema.columns
           WHERE table_schema = 'public' AND table_name NOT IN ({skip})
          UNION ALL
          SELECT 'con ' || conname || ' ' || pg_get_constraintdef(oid) FROM pg_constraint
           WHERE connamespace = 'public'::regnamespace
             AND conrelid::regclass::text NOT IN ({skip})
          UNION ALL
          SELECT 'idx ' || indexname FROM pg_indexes
           WHERE schemaname = 'public' AND tablename NOT IN ({skip})
          UNION ALL
          SELECT 'row settings ' || key || '=' || value FROM settings
          UNION ALL
          SELECT 'row positions ' || id || ' ' || coalesce(opened_at::text, '-') FROM positions
        ) s"""
        return self.cluster.psql(q, db)

    # -- runners: each returns (seconds, connections opened) --------------------------------
    def _timed(self, db: str, argv: list[str], cwd: Path | None = None,
               env: dict[str, str] | None = None, ok: Callable[[int], bool] = lambda rc: rc == 0
               ) -> tuple[float, int]:
        pos = self.log_pos()
        t0 = time.perf_counter()
        p = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True)
        dt = time.perf_counter() - t0
        if not ok(p.returncode):
            raise RuntimeError(f"{' '.join(argv)} -> {p.returncode}\n{p.stdout}\n{p.stderr}")
        time.sleep(0.05)  # let the server write its log lines
        return dt, self.connections(db, pos)

    def statekeeper(self, db: str, backup: bool) -> tuple[Path, Any]:
        self.n += 1
        cfg = write_statekeeper_project(self.work / f"sk{self.n}", self.cluster.url(db), backup)
        argv = [*self.sk, "--config", str(cfg), "start", "--to", RUN_TO, "--from", "v2.5"]
        return cfg, (lambda: self._timed(db, argv, cwd=cfg.parent, env=child_env()))

    def sk_noop(self, db: str, cfg: Path) -> tuple[float, int]:
        # nothing pending: a run to a new version that has no migrations to apply
        argv = [*self.sk, "--config", str(cfg), "start", "--to", "v2.7"]
        return self._timed(db, argv, cwd=cfg.parent, env=child_env())

    def liquibase_argv(self, db: str) -> list[str]:
        assert self.liquibase is not None
        return [str(self.liquibase), "--show-banner=false", "update",
                f"--changelog-file={self.changelog.name}",
                f"--url=jdbc:postgresql://127.0.0.1:{self.cluster.port}/{db}",
                "--username=postgres"]

    def liquibase_run(self, db: str) -> tuple[float, int]:
        env = dict(os.environ, LIQUIBASE_ANALYTICS_ENABLED="false")
        return self._timed(db, self.liquibase_argv(db), cwd=self.work, env=env)

    def sqitch_run(self, db: str) -> tuple[float, int]:
        argv = ["sqitch", "deploy", "--no-verify",
                f"db:pg://postgres@127.0.0.1:{self.cluster.port}/{db}"]
        env = dict(os.environ, SQITCH_USER_NAME="bench", SQITCH_USER_EMAIL="bench@example.com")
        return self._timed(db, argv, cwd=self.sqitch_dir, env=env)

    def psql_run(self, db: str) -> tuple[float, int]:
        pos = self.log_pos()
        t0 = time.perf_counter()
        for f in self.psql_files:
            subprocess.run(["psql", "-X", "-q", "-1", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1",
                            "-p", str(self.cluster.port), "-U", "postgres", "-d", db, "-f",
                            str(f)], check=True, capture_output=True)
        dt = time.perf_counter() - t0
        time.sleep(0.05)
        return dt, self.connections(db, pos)

    # -- crash and resume -------------------------------------------------------------------
    def crashed_project(self) -> tuple[str, Path]:
        db = self.fresh_db("crash")
        cfg, _ = self.statekeeper(db, backup=False)
        p = subprocess.run(
            [*self.sk, "--config", str(cfg), "start", "--to", RUN_TO, "--from", "v2.5"],
            cwd=cfg.parent, env=child_env(STATEKEEPER_FAILPOINT="migrate.done:5"),
            capture_output=True, text=True)
        if p.returncode != 137:
            raise RuntimeError(f"the crash did not happen: {p.returncode}\n{p.stdout}{p.stderr}")
        return db, cfg

    def resume_decision(self) -> dict[str, float]:
        """One crashed run: status (replay), then resume killed right after the decision."""
        db, cfg = self.crashed_project()
        base = [*self.sk, "--config", str(cfg)]
        t_status, _ = self._timed(db, [*base, "status"], cwd=cfg.parent, env=child_env())
        t_decide, conns = self._timed(
            db, [*base, "resume"], cwd=cfg.parent,
            env=child_env(STATEKEEPER_FAILPOINT="migrate.before"), ok=lambda rc: rc == 137)
        st = json.loads(subprocess.run([*base, "status", "--json"], cwd=cfg.parent,
                                       env=child_env(), capture_output=True, text=True,
                                       check=True).stdout)
        last = st["last_step"]
        if (last["name"], last["status"]) != (f"migrate:{MIGRATIONS[4][0]}", "succeeded"):
            raise RuntimeError(f"resume did not settle migrate:005 as done: {last}")
        return {"status": t_status, "decide": t_decide, "decide_conns": conns}

    def resume_full(self) -> dict[str, float]:
        """Another crashed run resumed to the end; the settled line's time read off stdout."""
        _db, cfg = self.crashed_project()
        t0 = time.perf_counter()
        p = subprocess.Popen([*self.sk, "--config", str(cfg), "resume"], cwd=cfg.parent,
                             env=child_env(PYTHONUNBUFFERED="1"), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
        assert p.stdout is not None
        t_line = float("nan")
        for line in p.stdout:
            if "settled after a crash" in line and t_line != t_line:
                t_line = time.perf_counter() - t0
        p.wait()
        total = time.perf_counter() - t0
        if p.returncode != 0:
            raise RuntimeError(f"resume -> {p.returncode}: {p.stderr.read() if p.stderr else ''}")
        return {"settled_line": t_line, "full": total}

    def cold_start(self, n: int, env: dict[str, str] | None = None) -> list[float]:
        times = []
        for _ in range(n):
            t0 = time.perf_counter()
            subprocess.run([*self.sk, "--help"], check=True, capture_output=True,
                           env=env or child_env())
            times.append(time.perf_counter() - t0)
        return times

    # -- where statekeeper's time goes ------------------------------------------------------
    def breakdown(self, what: str) -> dict[str, Any]:
        """One instrumented run (see BREAKDOWN_CHILD): 'apply', 'noop' or 'resume'."""
        env = child_env()
        ok: Callable[[int], bool] = lambda rc: rc == 0  # noqa: E731
        if what == "resume":
            db, cfg = self.crashed_project()
            args = ["--config", str(cfg), "resume"]
            env = child_env(STATEKEEPER_FAILPOINT="migrate.before")
            ok = lambda rc: rc == 137  # noqa: E731
        else:
            db = self.fresh_db("breakdown")
            cfg, _ = self.statekeeper(db, backup=False)
            args = ["--config", str(cfg), "start", "--to", RUN_TO, "--from", "v2.5"]
            if what == "noop":
                subprocess.run([*self.sk, *args], cwd=cfg.parent, env=env, check=True,
                               capture_output=True)
                args = ["--config", str(cfg), "start", "--to", "v2.7"]
        out = self.work / f"breakdown-{what}.json"
        env["UPGRADE_BENCH_BREAKDOWN"] = str(out)
        argv = [sys.executable, "-c", BREAKDOWN_CHILD, *args]
        dt, conns = self._timed(db, argv, cwd=cfg.parent, env=env, ok=ok)
        data: dict[str, Any] = json.loads(out.read_text())
        data["wall"] = dt
        fsyncs = None
        if shutil.which("strace"):
            # counted in a second, identical run: strace slows the process down
            if what == "resume":
                _db, cfg = self.crashed_project()
                args = ["--config", str(cfg), "resume"]
            else:
                db2 = self.fresh_db("breakdown")
                cfg2, _ = self.statekeeper(db2, backup=False)
                args = ["--config", str(cfg2), *args[2:]]
                if what == "noop":
                    subprocess.run([*self.sk, "--config", str(cfg2), "start", "--to", RUN_TO,
                                    "--from", "v2.5"], cwd=cfg2.parent, env=child_env(),
                                   check=True, capture_output=True)
                cfg = cfg2
            trace = self.work / f"strace-{what}.txt"
            env.pop("UPGRADE_BENCH_BREAKDOWN", None)
            p = subprocess.run(["strace", "-f", "-c", "-o", str(trace), "-e",
                                "trace=fsync,fdatasync", *self.sk, *args], cwd=cfg.parent,
                               env=env, capture_output=True, text=True)
            if ok(p.returncode):
                fsyncs = sum(int(m.group(1)) for m in re.finditer(
                    r"^\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+(?:\d+\s+)?f(?:data)?sync$",
                    trace.read_text(), re.M))
        data["fsyncs"] = fsyncs
        data["target_connections"] = conns
        return data


# The instrumented child: imports what `start`/`resume` import (timed per package, in the
# order they load), wraps the library's costly operations with counters, runs the real CLI
# entry point and writes the counters as JSON to $UPGRADE_BENCH_BREAKDOWN when the process
# ends (normally, or at an armed failpoint, which exits with os._exit). Times are inclusive:
# a migration's apply includes the connection it opens. SQLAlchemy is not imported up front
# (a SQLite ledger's run never loads it): whether the command loaded it is reported.
BREAKDOWN_CHILD = r"""
import json, os, sys, time
T0 = time.perf_counter()
imports = []
def imp(label, *mods):
    t = time.perf_counter()
    for m in mods:
        __import__(m)
    imports.append((label, time.perf_counter() - t))
imp("click + cli (the commands)", "click", "cli.main")
imp("psycopg", "psycopg")
imp("cryptography (Ed25519)", "cryptography.hazmat.primitives.asymmetric.ed25519",
    "cryptography.hazmat.primitives.serialization")
imp("transitions", "transitions")
imp("ledger (own code)", "ledger")
imp("statekeeper upgrade modules", "statekeeper.command", "statekeeper.upgrade",
    "statekeeper.runner", "statekeeper.migrations", "statekeeper.backups.manager",
    "statekeeper.fingerprint", "statekeeper.health", "statekeeper.lease", "statekeeper.replay")
T1 = time.perf_counter()

import ledger, statekeeper.upgrade as up, statekeeper.runner as rn
from statekeeper import failpoints, fingerprint, lease, migrations, session, targets
from statekeeper.migrations import lock as target_lock
stats = {}
def wrap(owner, name, label):
    f = getattr(owner, name)
    def w(*a, **k):
        t = time.perf_counter()
        try:
            return f(*a, **k)
        finally:
            s = stats.setdefault(label, [0, 0.0])
            s[0] += 1
            s[1] += time.perf_counter() - t
    setattr(owner, name, w)

wrap(targets.Target, "connect", "target: open a connection (psycopg)")
wrap(ledger.Ledger, "__init__", "ledger: open (engine, schema check)")
wrap(ledger, "load_signer", "ledger: load the signing key")
wrap(ledger.Ledger, "append", "ledger: append (1 commit, 1 seal)")
wrap(ledger.Ledger, "checkpoint", "ledger: signed checkpoint")
wrap(rn.Runner, "emit", "runner: emit (append + apply + narrate)")
wrap(up, "unfinished_for", "replay: all runs of the ledger (busy check)")
wrap(up, "load_run", "replay: load one run")
wrap(session.Session, "open", "session: open (config, Migrator, backups, ledger)")
wrap(up, "build_plan", "build_plan (validate, pending, tags)")
wrap(rn.Runner, "settle", "settle the in-doubt step (probe + event)")
wrap(up, "_checkpoint", "write the terminal checkpoint")
wrap(lease.LeaseStore, "__init__", "lease: open store (engine, create_all)")
wrap(lease.LeaseStore, "acquire", "lease: acquire")
wrap(lease.Lease, "release", "lease: release")
wrap(target_lock.TargetLock, "_take", "target: take the lock")
wrap(migrations.Migrator, "_read", "changelog: read")
wrap(migrations.Migrator, "_ensure_tables", "changelog: ensure tables")
wrap(migrations.Migrator, "validate", "changelog: validate")
wrap(migrations.Migrator, "apply", "migration: apply (1 transaction)")
wrap(migrations.Migrator, "tag", "changelog: tag")
wrap(fingerprint, "fingerprint", "fingerprint the target")
wrap(rn.Runner, "step", "runner: steps, all in")

def dump():
    T2 = time.perf_counter()
    with open(os.environ["UPGRADE_BENCH_BREAKDOWN"], "w") as f:
        json.dump({"imports": imports, "import_total": T1 - T0, "command": T2 - T1,
                   "stats": stats, "sqlalchemy": "sqlalchemy" in sys.modules}, f)

hit = failpoints.hit
def hit_and_dump(name):
    if failpoints._ARMED is not None and failpoints._ARMED[0] == name:
        dump()
    hit(name)
failpoints.hit = hit_and_dump

import atexit
atexit.register(dump)
sys.argv = ["statekeeper", *sys.argv[1:]]
from cli.main import main
main()
"""


def verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def main() -> None:
    global PYCACHE
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=5, help="repetitions of each run (median)")
    ap.add_argument("--cold", type=int, default=10, help="cold starts of statekeeper --help")
    ap.add_argument("--liquibase-prefix", type=Path, default=CACHE / "liquibase",
                    help="where `npm install liquibase@4.28.1` goes (not committed)")
    ap.add_argument("--skip-liquibase", action="store_true")
    ap.add_argument("--shm", action="store_true",
                    help="put the cluster on /dev/shm like the tests (fsync costs nothing "
                    "there); default: on disk, in the temp directory")
    ap.add_argument("--no-bytecode-cache", action="store_true",
                    help="run statekeeper as the environment says (PYTHONDONTWRITEBYTECODE "
                    "recompiles the checkout in every process); default: cache its bytecode "
                    "in benchmarks/.cache/pycache, as an installed package has it")
    ap.add_argument("--no-breakdown", action="store_true",
                    help="skip the instrumented runs that show where statekeeper's time goes")
    ap.add_argument("--json", type=Path, help="also write the raw numbers here")
    args = ap.parse_args()

    check_tools(args.skip_liquibase)
    liquibase = None if args.skip_liquibase else ensure_liquibase(args.liquibase_prefix)
    if not args.no_bytecode_cache:
        PYCACHE = CACHE / "pycache"
        PYCACHE.mkdir(parents=True, exist_ok=True)

    base = None if args.shm else Path(tempfile.gettempdir())
    cluster = PgCluster(conf={"fsync": "on", "log_connections": "on"}, base=base).start()
    work = Path(tempfile.mkdtemp(prefix="sk-upgrade-bench-"))
    print(f"cluster in {cluster.root} (fsync=on), projects and ledgers in {work}",
          file=sys.stderr)
    load_before = os.getloadavg()
    try:
        b = Bench(cluster, work, liquibase)
        res = run_tools(b, args.reps, with_liquibase=liquibase is not None)
        print("cold starts ...", file=sys.stderr)
        b.cold_start(2)
        cold = b.cold_start(args.cold)
        cold_nocache: list[float] = []
        if PYCACHE is not None and os.environ.get("PYTHONDONTWRITEBYTECODE"):
            env = child_env()
            env.pop("PYTHONPYCACHEPREFIX")
            env["PYTHONDONTWRITEBYTECODE"] = "1"
            cold_nocache = b.cold_start(args.cold, env)
        print("crash + resume ...", file=sys.stderr)
        decisions = [b.resume_decision() for _ in range(args.reps)]
        fulls = [b.resume_full() for _ in range(args.reps)]
        breakdowns = {}
        if not args.no_breakdown:
            print("instrumented runs ...", file=sys.stderr)
            for what in ("apply", "noop", "resume"):
                b.breakdown(what)  # warm
                breakdowns[what] = b.breakdown(what)
    finally:
        cluster.destroy()
        shutil.rmtree(work, ignore_errors=True)

    args.load = (load_before, os.getloadavg())
    report(res, cold, cold_nocache, decisions, fulls, breakdowns, args)


def run_tools(b: Bench, reps: int, with_liquibase: bool) -> dict[str, Result]:
    tools = ["statekeeper (no backup)", "statekeeper (pg_dump backup)", "Liquibase 4.28.1",
             "Sqitch", "psql, 1 process/file"]
    if not with_liquibase:
        tools.remove("Liquibase 4.28.1")
    res = {t: Result() for t in tools}
    reference: str | None = None
    # rep -1 is a warm-up round, untimed: page cache, the JVM's class data, Perl modules
    for rep in range(-1, reps):
        for tool in tools:
            db = b.fresh_db(tool.split()[0].lower())
            run: Callable[[], tuple[float, int]]
            noop: Callable[[], tuple[float, int]] | None
            if tool.startswith("statekeeper"):
                cfg, run = b.statekeeper(db, backup="pg_dump" in tool)
                noop = functools.partial(b.sk_noop, db, cfg)
            elif tool.startswith("Liquibase"):
                run = noop = functools.partial(b.liquibase_run, db)
            elif tool == "Sqitch":
                run = noop = functools.partial(b.sqitch_run, db)
            else:
                run, noop = functools.partial(b.psql_run, db), None
            t, c = run()
            state = b.app_state(db)
            if reference is None:
                reference = state
            elif state != reference:
                raise RuntimeError(f"{tool}: the database differs from the others:\n{state}"
                                   f"\n---\n{reference}")
            tn, cn = float("nan"), 0
            if noop is not None:
                tn, cn = noop()
                if b.app_state(db) != reference:
                    raise RuntimeError(f"{tool}: the no-op run changed the database")
            if rep < 0:
                continue
            r = res[tool]
            r.apply.append(t)
            r.conns_apply.append(c)
            if noop is not None:
                r.noop.append(tn)
                r.conns_noop.append(cn)
            print(f"rep {rep + 1} {tool:<30} {t:6.2f} s"
                  + (f"  no-op {tn:5.2f} s" if noop is not None else ""), file=sys.stderr)
    return res


def report(res: dict[str, Result], cold: list[float], cold_nocache: list[float],
           decisions: list[dict[str, float]], fulls: list[dict[str, float]],
           breakdowns: dict[str, dict[str, Any]], args: argparse.Namespace) -> None:
    med = {t: median(r.apply) for t, r in res.items()}
    sq = med.get("Sqitch")
    lq = med.get("Liquibase 4.28.1")

    def ratio(x: float, ref: float | None) -> str:
        return f"{x / ref:5.2f}x" if ref else "    -"

    where = "/dev/shm" if args.shm else "disk"
    (b1, b5, _), (a1, a5, _) = args.load
    print(f"\nmachine: {os.cpu_count()} CPUs, load average {b1:.2f}/{b5:.2f} (1/5 min) before, "
          f"{a1:.2f}/{a5:.2f} after: other work on the machine shows up as noise")
    print(f"10 migrations on a fresh PostgreSQL 15 database (fsync=on, on {where}), "
          f"median of {args.reps}")
    print(f"{'tool':<30} {'apply':>7} {'vs Sqitch':>10} {'vs Liquibase':>13} {'no-op':>7}"
          f" {'conns':>6} {'no-op conns':>12}")
    for t, r in res.items():
        noop = f"{median(r.noop):6.2f}s" if r.noop else "      -"
        cn = f"{statistics.median(r.conns_noop):>12.0f}" if r.conns_noop else f"{'-':>12}"
        print(f"{t:<30} {med[t]:6.2f}s {ratio(med[t], sq):>10} {ratio(med[t], lq):>13} {noop}"
              f" {statistics.median(r.conns_apply):>6.0f} {cn}")
    print("(conns: connections to the target database the run opened, from the server log)")

    d_status = median([d["status"] for d in decisions])
    d_decide = median([d["decide"] for d in decisions])
    d_conns = statistics.median([d["decide_conns"] for d in decisions])
    d_line = median([f["settled_line"] for f in fulls])
    d_full = median([f["full"] for f in fulls])
    c = median(cold)
    bc = "cached bytecode" if PYCACHE is not None else "bytecode as the environment says"
    print(f"\nstatekeeper --help cold start ({bc}), median of {len(cold)}: {c * 1000:.0f} ms"
          f" (min {min(cold) * 1000:.0f}, max {max(cold) * 1000:.0f})")
    if cold_nocache:
        print(f"  ... with PYTHONDONTWRITEBYTECODE=1 (no .pyc at all): "
              f"{median(cold_nocache) * 1000:.0f} ms")
    print(f"after a crash at migrate.done:5 (median of {len(decisions)}):")
    print(f"  statekeeper status (replay only)              {d_status:6.2f} s")
    print(f"  statekeeper resume until the step is settled  {d_decide:6.2f} s"
          f"  (target connections: {d_conns:.0f})")
    print(f"  ... cross-check: settled line on stdout       {d_line:6.2f} s")
    print(f"  statekeeper resume to completion              {d_full:6.2f} s")

    for what, data in breakdowns.items():
        print_breakdown(what, data)

    sk = med["statekeeper (no backup)"]
    sk_noop = median(res["statekeeper (no backup)"].noop)
    floor = med.get("psql, 1 process/file")
    sq_noop = median(res["Sqitch"].noop) if "Sqitch" in res else None
    print("\ntargets (issue 15):")
    rows15 = []
    if floor:
        rows15.append((f"statekeeper (no backup) <= 1.3x psql one process per file: "
                       f"{sk / floor:.2f}x", sk <= 1.3 * floor))
    if sq:
        rows15.append((f"statekeeper (no backup) <= 0.5x Sqitch: {sk / sq:.2f}x", sk <= 0.5 * sq))
    if sq_noop:
        rows15.append((f"no-op run < Sqitch's no-op: {sk_noop:.2f} s vs {sq_noop:.2f} s "
                       f"({sk_noop / sq_noop:.2f}x)", sk_noop < sq_noop))
    conns = statistics.median(res["statekeeper (no backup)"].conns_apply)
    rows15.append((f"one target connection per run: {conns:.0f}", conns <= 1))
    for text, ok in rows15:
        print(f"  {verdict(ok):<7} {text}")
    print("\ntargets (issue 4):")
    rows = []
    if sq:
        rows.append((f"statekeeper (no backup) <= 0.8x Sqitch: {sk / sq:.2f}x", sk <= 0.8 * sq))
    if lq:
        rows.append((f"statekeeper (no backup) <= 0.4x Liquibase: {sk / lq:.2f}x", sk <= 0.4 * lq))
    rows += [
        (f"no-op run < 0.5 s: {sk_noop:.2f} s", sk_noop < 0.5),
        (f"cold start < 300 ms: {c * 1000:.0f} ms", c < 0.3),
        (f"resume decision < 1 s: {d_decide:.2f} s", d_decide < 1.0),
    ]
    for text, ok in rows:
        print(f"  {verdict(ok):<7} {text}")

    if args.json:
        args.json.write_text(json.dumps({
            "tools": {t: r.__dict__ for t, r in res.items()}, "cold_start": cold,
            "cold_start_no_bytecode": cold_nocache, "resume_decision": decisions,
            "resume_full": fulls, "breakdown": breakdowns,
        }, indent=2))


def print_breakdown(what: str, data: dict[str, Any]) -> None:
    title = {"apply": "start, 10 migrations, no backup", "noop": "start, nothing pending",
             "resume": "resume until the in-doubt step is settled"}[what]
    wall = data["wall"]
    interp = wall - data["import_total"] - data["command"]
    print(f"\nwhere the time goes: {title} (one instrumented run, {wall:.2f} s wall; "
          f"{data['target_connections']} target connections"
          + (f", {data['fsyncs']} fsync/fdatasync calls" if data["fsyncs"] is not None else "")
          + ")")
    print(f"  {'python start-up and exit (interpreter, site)':<56} {interp * 1000:7.0f} ms")
    for label, t in data["imports"]:
        print(f"  {'import ' + label:<56} {t * 1000:7.0f} ms")
    print(f"  {'import sqlalchemy':<56} "
          + ("loaded by the command" if data.get("sqlalchemy") else "    not loaded"))
    print(f"  {'the command itself':<56} {data['command'] * 1000:7.0f} ms, of which "
          "(inclusive, overlapping):")
    for label, (n, t) in sorted(data["stats"].items(), key=lambda kv: -kv[1][1]):
        print(f"    {label:<48} {n:>4}x {t * 1000:7.0f} ms")


if __name__ == "__main__":
    main()
