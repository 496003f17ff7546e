"""``statekeeper demo``: the main job on the embedded defaults, with no server.

A SQLite trading database (users, positions, settings) and its application's release side
(``releases/v2.5``, ``releases/v2.6``, ``current -> releases/v2.5``, a live ``config/app.env``
holding a FAKE broker API key) are upgraded v2.5 -> v2.6: a third migration fails and the run
rolls back (fingerprints shown equal; the release side is not reached yet); with the typo fixed,
v2.6's deploy command fails after the switch and the run rolls back the release too (the
configuration file restored byte for byte, ``current`` back to v2.5); the corrected upgrade is
killed half-way by a failpoint in a child process and finished by ``resume`` (``current ->
releases/v2.6``, v2.6's configuration live); then the ledger is verified and exported, and
neither is shown to hold the key. Everything is left in the directory to inspect.
The narration goes through ``say``; this module never prints (the crashing child writes its
narration to its standard output, which is the parent's pipe). It calls the library's verbs
with explicit paths: it neither launches the CLI nor changes the working directory.
"""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import sqlite3
import stat
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

# The release side: no stop/start (the demo starts no server). The deploy command runs in
# releases/<to>; its undo removes what it made there, nothing else.
[deploy]
releases_dir = "releases"
current_link = "current"
config_files = ["config/app.env"]
config_from = "releases/{version}/config"
timeout = "20s"

[[deploy.command]]
name = "warm quote cache"
run = "sh warm-cache.sh"
undo = "rm -f quote-cache.txt"
'''

#: Obviously fake: the demo shows it never reaches the ledger or the export.
FAKE_KEY = "demo-fake-key-0000-not-a-real-secret"
LIVE_CONFIG = "config/app.env"

APP_PY = '''\
"""trading-app {version}: the demo's stand-in for the application (it is never started)."""
VERSION = "{version}"
'''

WARM_CACHE = """\
# warm the quote cache for the symbols this release trades
cp symbols.txt quote-cache.txt
"""

SYMBOLS = "AAPL\nMSFT\nSAP.DE\nBMW.DE\nNVDA\nSIE.DE\nTSLA\n"


def _app_env(version: str) -> str:
    orders = "true" if version == "v2.6" else "false"
    return (f"# trading-app configuration (demo; the key is FAKE)\nRELEASE={version}\n"
            f"DATABASE=sqlite:///app.db\nFEATURE_ORDERS={orders}\n"
            f"BROKER_API_KEY={FAKE_KEY}\n")


def _write_releases(directory: Path) -> None:
    """releases/v2.5 (live) and releases/v2.6, which ships without its symbols.txt (the
    second upgrade's deploy command fails on it; part 3 adds it)."""
    for version in ("v2.5", "v2.6"):
        rel = directory / "releases" / version
        (rel / "config").mkdir(parents=True)
        (rel / "app.py").write_text(APP_PY.format(version=version))
        (rel / "VERSION").write_text(version + "\n")
        (rel / "warm-cache.sh").write_text(WARM_CACHE)
        (rel / "config" / "app.env").write_text(_app_env(version))
        if version == "v2.5":
            (rel / "symbols.txt").write_text(SYMBOLS)
    (directory / "config").mkdir()
    live = directory / LIVE_CONFIG
    live.write_text(_app_env("v2.5"))
    os.chmod(live, 0o640)
    os.symlink("releases/v2.5", directory / "current")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _holds_key(path: Path) -> bool:
    return FAKE_KEY.encode() in path.read_bytes()

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


def _fingerprints(run: Any, say: Say) -> bool:
    """Say the fingerprint before the upgrade and after its rollback; are they equal?"""
    pre = run.succeeded("preflight")
    cmp_ = [x for x in run.steps if x.kind == "compare" and x.status == "succeeded"]
    if not (pre and pre.result and cmp_ and cmp_[-1].result):
        return False
    after = cmp_[-1].result
    say(f"   fingerprint before: {pre.result['fingerprint_digest'][:32]}")
    say(
        f"   fingerprint after:  {after['digest'][:32]}  "
        f"({'equal' if after['equal'] else 'DIFFERENT'})"
    )
    return bool(after["equal"])


def _release_back(directory: Path, config_sha: str, say: Say, *, touched: bool) -> bool:
    """Say (with evidence) that ``current`` and the configuration file are as before."""
    link = os.readlink(directory / "current")
    sha = _sha256(directory / LIVE_CONFIG)
    same = sha == config_sha
    if touched:
        say(f"   {LIVE_CONFIG} restored byte for byte (sha256 {sha[:16]}, "
            f"{'equal to' if same else 'DIFFERENT from'} before)")
        say(f"   current -> {link} again")
    else:
        say(f"   the release side was never reached: current -> {link}, {LIVE_CONFIG} "
            f"untouched (sha256 {sha[:16]}, {'equal to' if same else 'DIFFERENT from'} before)")
    return same and link == "releases/v2.5"


def _rehearse(s: Any, say: Say) -> bool:
    """The fixed upgrade rehearsed on a copy of app.db first: it passes on the database side;
    the release side in a scratch releases directory; what acts on the live release (the
    deploy command, which has no rehearsal variant) is listed as not rehearsed."""
    from .errors import RehearsalFailed

    try:
        r = command.rehearse(s, "v2.6")
    except RehearsalFailed as e:
        say(f"   rehearsal FAILED: {e}")
        return False
    passes = r["passes"]
    say(f"   rehearsal {r['rehearsal_id']} on a copy of app.db: passed (upgrade "
        f"{passes['forward']['ms']} ms, rollback {passes['rollback']['ms']} ms, fingerprint "
        f"equal, upgrade again {passes['again']['ms']} ms); app.db untouched")
    for line in r["not_rehearsed"]:
        say(f"   not rehearsed: {line}")
    return True


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
    _write_releases(directory)
    config_sha = _sha256(directory / LIVE_CONFIG)

    # Every path is absolute (the configuration's own relative paths resolve against its
    # directory), so nothing depends on the working directory.
    cfg = str(directory / "statekeeper.toml")
    say(f"== statekeeper demo in {directory}")
    for line in command.init(cfg, None, None, None, "migrations"):
        say(f"   {line}")
    s = command.Settings.load(cfg)
    say(f"   app.db: {users} users, {positions} positions, {settings_n} settings")
    say(f"   release: current -> {os.readlink(directory / 'current')}; {LIVE_CONFIG} "
        f"sha256 {config_sha[:16]} (holds a FAKE broker API key)")
    command.migrate_tag(s, "v2.5")
    say("   tagged the current schema v2.5")
    progress = _narrator(say)

    say("")
    say("== 1. upgrade v2.5 -> v2.6; its third migration has a typo (column symbl)")
    run1 = command.start(s, "v2.6", observer=progress)
    say(f"   result: {run1.state}")
    ok = _fingerprints(run1, say) and run1.state == "rolled_back"
    ok = _release_back(directory, config_sha, say, touched=False) and ok

    say("")
    say("== 2. fix the typo; rehearse it on a copy of app.db, then upgrade again: release v2.6")
    say("      ships without its symbols.txt, so its deploy command fails after the")
    say("      configuration and the link were switched (the rehearsal switches a scratch")
    say("      release, but runs no deploy command without its rehearsal variant)")
    (mig / "003_position_currency.sql").write_text(FIXED_003)
    ok = _rehearse(s, say) and ok
    run2 = command.start(s, "v2.6", observer=progress)
    say(f"   result: {run2.state}")
    ok = _fingerprints(run2, say) and run2.state == "rolled_back" and ok
    ok = _release_back(directory, config_sha, say, touched=True) and ok

    say("")
    say("== 3. add releases/v2.6/symbols.txt; upgrade again, killed (os._exit 137) after the "
        "2nd migration")
    (directory / "releases" / "v2.6" / "symbols.txt").write_text(SYMBOLS)
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
    say("== 4. statekeeper resume")
    run3 = command.resume(s, observer=progress)
    say(f"   result: {run3.state}")
    link = os.readlink(directory / "current")
    live_v26 = _sha256(directory / LIVE_CONFIG) == _sha256(
        directory / "releases" / "v2.6" / "config" / "app.env")
    say(f"   current -> {link}; {LIVE_CONFIG} is "
        + ("v2.6's (sha256 equal to releases/v2.6/config/app.env)" if live_v26
           else "NOT v2.6's"))
    ok = ok and link == "releases/v2.6" and live_v26

    say("")
    say("== 5. statekeeper ledger verify, then export the run for the compliance officer")
    v = command.ledger_verify(s)
    say(f"   ok: {v.events} events verified, head seq {v.head.seq}")
    export = directory / f"{run3.run_id}.jsonl"
    exp = command.ledger_export(s, export, stream=STREAM_PREFIX + run3.run_id)
    say(f"   exported {exp.events} events of run {run3.run_id} to {export.name}")
    # The ledger records keyed fingerprints of the configuration, never its content: read
    # the bytes of the ledger's database (with any journal beside it) and of the export.
    ledger_files = sorted((directory / ".statekeeper").glob("ledger.db*"))
    leaked = [f.name for f in [*ledger_files, export] if _holds_key(f)]
    if leaked:
        say(f"   the API key WAS FOUND in {', '.join(leaked)}")
    else:
        say("   the API key appears in neither the ledger nor the export: checked "
            f"({', '.join(f.name for f in ledger_files)}, {export.name})")
    copies = sorted((directory / ".statekeeper" / "runs").glob("*/snapshot/*"))
    private = all(stat.S_IMODE(c.stat().st_mode) == 0o600 for c in copies)
    say(f"   it is in {LIVE_CONFIG}, releases/*/{LIVE_CONFIG} and each run's snapshot copy "
        f"(.statekeeper/runs/*/snapshot/, {len(copies)} files"
        f"{', mode 0600' if private else ', NOT all mode 0600'}), which rollback restores from")
    ok = ok and private
    ok = (ok and not leaked and child.returncode == failpoints.EXIT_CODE
          and run3.state == "completed")

    say("")
    say("== 6. statekeeper report: the audit report, replayed from the verified ledger")
    report = directory / "report.html"
    r = command.report(s, "html", report)
    say(f"   {'ledger verified' if r.ok else 'LEDGER FAILED VERIFICATION'}: {r.entries} runs "
        "and operations replayed")
    say(f"   wrote {report}")
    in_report = _holds_key(report)
    if in_report:
        say("   the API key WAS FOUND in the report")
    ok = ok and r.ok and not in_report
    say("")
    say(
        f"Everything is left in {directory} (statekeeper.toml, app.db, migrations/, "
        "releases/, current, config/, .statekeeper/). Try: cd " + str(directory)
        + " && statekeeper history"
    )
    return 0 if ok else 3
