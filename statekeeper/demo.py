"""``statekeeper demo``: the main job on the embedded defaults, with no server.

A SQLite trading database (users, positions, settings) is upgraded v2.5 -> v2.6 three ways:
a third migration fails and the run rolls back (fingerprints shown equal); the corrected
upgrade is killed half-way by a failpoint in a child process and finished by ``resume``; then
the ledger is verified and exported. Everything is left in the directory to inspect.
The narration goes through ``say``; this module never prints (the crashing child writes its
narration to its standard output, which is the parent's pipe). It calls the library's verbs
with explicit paths: it neither launches the CLI nor changes the working directory.
"""

from __future__ import annotations

import os
import random
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import command, failpoints
from .errors import ConfigError
from .narrate import narrate

Say = Callable[[str], None]
MARKER = ".statekeeper-demo"

CONFIG = '''\
# statekeeper demo: everything embedded (SQLite ledger, SQLite application database).
[upgrade]
application = "trading-platform"

[ledger]
url = "sqlite:///.statekeeper/ledger.db"
key = ".statekeeper/signing-key.pem"

[target]
url = "sqlite:///app.db"

[migrations]
dir = "migrations"

[backup]
method = "sqlite"
dir = ".statekeeper/backups"

[health]
checks = [
  { name = "users readable", sql = "SELECT count(*) > 0 FROM users", expect = "1" },
  { name = "every position has a user", expect = "0", sql = """
      SELECT count(*) FROM positions p LEFT JOIN users u ON u.id = p.user_id
      WHERE u.id IS NULL""" },
]
'''

MIGRATIONS = {
    "001_user_status.sql": """\
-- v2.6: users get a status; existing users are active.
ALTER TABLE users ADD COLUMN status TEXT NOT NULL DEFAULT 'active';
-- statekeeper:down
ALTER TABLE users DROP COLUMN status;
""",
    "002_orders.sql": """\
CREATE TABLE orders (
    id INTEGER PRIMARY KEY,
    user_id INTEGER NOT NULL REFERENCES users(id),
    symbol TEXT NOT NULL,
    qty INTEGER NOT NULL,
    limit_cents INTEGER
);
CREATE INDEX orders_user ON orders(user_id);
-- statekeeper:down
DROP TABLE orders;
""",
}

BROKEN_003 = """\
-- v2.6: positions carry their currency.
ALTER TABLE positions ADD COLUMN currency TEXT NOT NULL DEFAULT 'USD';
UPDATE positions SET currency = 'EUR' WHERE symbl LIKE '%.DE';
-- statekeeper:down
ALTER TABLE positions DROP COLUMN currency;
"""

FIXED_003 = BROKEN_003.replace("symbl", "symbol")


def _seed(db: Path) -> tuple[int, int, int]:
    rng = random.Random(26)
    conn = sqlite3.connect(db)
    with conn:
        conn.executescript("""
            CREATE TABLE users (id INTEGER PRIMARY KEY, email TEXT NOT NULL UNIQUE,
                                name TEXT NOT NULL, created_at TEXT NOT NULL);
            CREATE TABLE positions (id INTEGER PRIMARY KEY,
                                    user_id INTEGER NOT NULL REFERENCES users(id),
                                    symbol TEXT NOT NULL, qty INTEGER NOT NULL,
                                    avg_price_cents INTEGER NOT NULL);
            CREATE TABLE settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        """)
        conn.executemany(
            "INSERT INTO users VALUES (?, ?, ?, ?)",
            [
                (i, f"trader{i}@example.com", f"Trader {i}", f"2025-0{1 + i % 9}-1{i % 10}")
                for i in range(1, 51)
            ],
        )
        symbols = ["AAPL", "MSFT", "SAP.DE", "BMW.DE", "NVDA", "SIE.DE", "TSLA"]
        conn.executemany(
            "INSERT INTO positions VALUES (?, ?, ?, ?, ?)",
            [
                (
                    i,
                    rng.randint(1, 50),
                    rng.choice(symbols),
                    rng.randint(1, 500),
                    rng.randint(1_000, 90_000),
                )
                for i in range(1, 201)
            ],
        )
        conn.executemany(
            "INSERT INTO settings VALUES (?, ?)",
            [
                ("max_leverage", "4"),
                ("market_hours", "09:00-17:30"),
                ("fee_bps", "5"),
                ("margin_call_pct", "30"),
                ("base_currency", "USD"),
                ("risk_engine", "v3"),
                ("kyc_required", "true"),
                ("session_timeout_min", "30"),
                ("maintenance", "false"),
                ("feature_orders", "false"),
            ],
        )
    conn.close()
    return 50, 200, 10


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def _narrator(say: Say) -> Callable[[str, dict[str, Any]], None]:
    def progress(kind: str, payload: dict[str, Any]) -> None:
        line = narrate(kind, payload)
        if line is not None:
            say(line)

    return progress


# The second upgrade must die as kill -9 would, in a process of its own, so that ``resume``
# finds its lease held by a dead pid: a child interpreter that calls the same verb, armed by
# the failpoint's environment variable (read when the child starts, before anything runs).
_CHILD = "import sys; from statekeeper.demo import crashing_start; crashing_start(sys.argv[1])"


def crashing_start(config: str) -> None:
    """The child's side of part 2: ``start`` v2.6, each narration line written to stdout,
    which is the parent's pipe (the parent shows it as ``child|``)."""

    def send(line: str) -> None:
        sys.stdout.write(line + "\n")

    command.start(command.Settings.load(config), "v2.6", observer=_narrator(send))


def run_demo(directory: Path, say: Say) -> int:
    from .runner import STREAM_PREFIX

    directory = directory.absolute()
    if directory.exists() and any(directory.iterdir()):
        if not (directory / MARKER).exists():
            raise ConfigError(f"--dir {directory}: not empty; choose a new directory")
        shutil.rmtree(directory)  # a previous demo's leftovers, and nothing else
    directory.mkdir(parents=True, exist_ok=True)
    (directory / MARKER).write_text("made by 'statekeeper demo'; it replaces this directory\n")
    (directory / "statekeeper.toml").write_text(CONFIG)
    mig = directory / "migrations"
    mig.mkdir()
    for name, text in MIGRATIONS.items():
        (mig / name).write_text(text)
    (mig / "003_position_currency.sql").write_text(BROKEN_003)
    users, positions, settings_n = _seed(directory / "app.db")

    # Every path is absolute (the configuration's own relative paths resolve against its
    # directory), so nothing depends on the working directory.
    cfg = str(directory / "statekeeper.toml")
    say(f"== statekeeper demo in {directory}")
    for line in command.init(cfg, None, None, None, "migrations"):
        say(f"   {line}")
    s = command.Settings.load(cfg)
    say(f"   app.db: {users} users, {positions} positions, {settings_n} settings")
    command.migrate_tag(s, "v2.5")
    say("   tagged the current schema v2.5")
    progress = _narrator(say)

    say("")
    say("== 1. upgrade v2.5 -> v2.6; its third migration has a typo (column symbl)")
    run1 = command.start(s, "v2.6", observer=progress)
    say(f"   result: {run1.state}")
    pre = run1.succeeded("preflight")
    cmp_ = [x for x in run1.steps if x.kind == "compare" and x.status == "succeeded"]
    if pre and pre.result and cmp_ and cmp_[-1].result:
        after = cmp_[-1].result
        say(f"   fingerprint before: {pre.result['fingerprint_digest'][:32]}")
        say(
            f"   fingerprint after:  {after['digest'][:32]}  "
            f"({'equal' if after['equal'] else 'DIFFERENT'})"
        )

    say("")
    say("== 2. fix the typo; upgrade again, killed (os._exit 137) after the 2nd migration")
    (mig / "003_position_currency.sql").write_text(FIXED_003)
    env = _child_env()
    env[failpoints.ENV] = "migrate.done:2"
    child = subprocess.run(
        [sys.executable, "-c", _CHILD, cfg],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    for line in child.stdout.splitlines():
        say(f"   child| {line}")
    say(f"   child process died with exit code {child.returncode}")
    st = command.status(s)
    open_step = st.open_step
    say(
        f"   status: run {st.run_id} is {st.state}; step "
        f"{open_step.name if open_step else '-'} was left open (in doubt)"
    )

    say("")
    say("== 3. statekeeper resume")
    run2 = command.resume(s, observer=progress)
    say(f"   result: {run2.state}")

    say("")
    say("== 4. statekeeper ledger verify, then export the run for the compliance officer")
    v = command.ledger_verify(s)
    say(f"   ok: {v.events} events verified, head seq {v.head.seq}")
    exp = command.ledger_export(
        s, directory / f"{run2.run_id}.jsonl", stream=STREAM_PREFIX + run2.run_id
    )
    say(f"   exported {exp.events} events of run {run2.run_id} to {run2.run_id}.jsonl")
    ok = (run1.state == "rolled_back" and child.returncode == failpoints.EXIT_CODE
          and run2.state == "completed")
    say("")
    say(
        f"Everything is left in {directory} (statekeeper.toml, app.db, migrations/, "
        ".statekeeper/). Try: cd " + str(directory) + " && statekeeper history"
    )
    return 0 if ok else 3
