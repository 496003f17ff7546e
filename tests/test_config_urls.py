"""Connection URLs against a real PostgreSQL server.

* A role whose password holds every URL metacharacter, behind scram-sha-256 (pg_hba), reached
  through ``${ENV}`` in statekeeper.toml by statekeeper itself, by pg_dump and by psql, for the
  target and for a PostgreSQL ledger; the password appears in no output, no ledger row, no
  backup manifest, no export.
* A URL without host or port is left to libpq (PGHOST, PGPORT, PGSERVICE, the socket
  directory) as psql does, for our own connection, the ledger's and pg_dump/psql children.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import psycopg
import pytest

from statekeeper.targets import Target
from tests.pgcluster import PgCluster
from tests.upgrade_support import GOOD, ROOT, SEED_SQL

pytestmark = pytest.mark.postgresql

# Every character that means something in a URL or a conninfo string, and a space.
PASSWORD = "Xs3crQ@Hunt3rZ/#%:? Pw0rd&=+;K'\"\\"
FRAGMENTS = ("Xs3crQ", "Hunt3rZ", "Pw0rd")
PW_VAR = "SK_TEST_DB_PASSWORD"


def leaks(text: str | bytes) -> list[str]:
    """Any recognisable part of the password (raw, percent-encoded or JSON-escaped) in text."""
    t = text.decode("utf-8", "replace") if isinstance(text, bytes) else text
    found = [f for f in FRAGMENTS if f in t]
    for form in (PASSWORD, quote(PASSWORD, safe=""), json.dumps(PASSWORD)[1:-1]):
        if form in t:
            found.append(form)
    return found


@pytest.fixture(scope="module")
def pw_role(pg_cluster: PgCluster) -> Iterator[str]:
    """A login role that must authenticate with its password (scram-sha-256 over TCP and the
    socket), while the cluster's other roles keep the fixture's trust."""
    role = f"sk_pw_{os.getpid()}"
    lit = PASSWORD.replace("'", "''")
    pg_cluster.psql(f"SET password_encryption = 'scram-sha-256'; "
                    f"CREATE ROLE {role} LOGIN PASSWORD '{lit}'")
    hba = pg_cluster.data / "pg_hba.conf"
    original = hba.read_text()
    hba.write_text(f"local all {role} scram-sha-256\n"
                   f"host all {role} 127.0.0.1/32 scram-sha-256\n" + original)
    pg_cluster.pg_ctl("reload")
    probe = f"host=127.0.0.1 port={pg_cluster.port} dbname=postgres user={role}"
    deadline = time.monotonic() + 10
    while True:  # the reload is asynchronous: wait until a password is demanded
        try:
            psycopg.connect(probe, connect_timeout=5).close()
        except psycopg.OperationalError as e:
            if "password" in str(e):
                break
        if time.monotonic() > deadline:
            raise AssertionError("pg_hba reload did not take effect")
        time.sleep(0.1)
    try:
        yield role
    finally:
        hba.write_text(original)
        pg_cluster.pg_ctl("reload")


def own_db(cluster: PgCluster, role: str, prefix: str) -> str:
    name = cluster.createdb(prefix)
    cluster.psql(f'ALTER DATABASE "{name}" OWNER TO {role}')
    cluster.psql(f"GRANT ALL ON SCHEMA public TO {role}", db=name)
    cluster.psql(f"ALTER SCHEMA public OWNER TO {role}", db=name)
    return name


def run(cwd: Path, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    e = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    e.update(env, PYTHONPATH=str(ROOT))
    e.pop("STATEKEEPER_FAILPOINT", None)
    return subprocess.run([sys.executable, "-m", "cli", "--config", "statekeeper.toml", *args],
                          cwd=cwd, env=e, capture_output=True, text=True, timeout=180)


def ok(p: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert p.returncode == 0, f"{p.args[3:]} -> {p.returncode}\n{p.stdout}\n{p.stderr}"
    return p


# -- a password with URL metacharacters ------------------------------------------------------
def test_password_in_env_reaches_the_server_and_nothing_prints_it(
    pg_cluster: PgCluster, pw_role: str, tmp_path: Path
) -> None:
    db = own_db(pg_cluster, pw_role, "pwtarget")
    url = f"postgresql://{pw_role}:${{{PW_VAR}}}@127.0.0.1:{pg_cluster.port}/{db}"
    (tmp_path / "migrations").mkdir()
    for name, text in GOOD.items():
        (tmp_path / "migrations" / name).write_text(text)
    (tmp_path / "statekeeper.toml").write_text(
        '[ledger]\nurl = "sqlite:///.statekeeper/ledger.db"\n\n'
        f'[target]\nurl = "{url}"\n\n[migrations]\ndir = "migrations"\n\n'
        '[backup]\nmethod = "pg_dump"\ndir = "backups"\n\n'
        '[health]\nchecks = [{ name = "users", sql = "SELECT count(*) FROM users", '
        'expect = "3" }]\n'
    )
    # Seeded through the same encoding path, as the role itself.
    from statekeeper.config import load_config

    cfg = load_config(str(tmp_path / "statekeeper.toml"), env={PW_VAR: PASSWORD})
    target = Target.from_url(str(cfg.target_url))
    assert target.url.password == PASSWORD
    conn = target.connect(autocommit=True)
    try:
        assert conn.execute("SELECT current_user").fetchone()[0] == pw_role
        for s in SEED_SQL:
            conn.execute(s)
    finally:
        conn.close()

    env = {PW_VAR: PASSWORD}
    outputs = [
        ok(run(tmp_path, "init", env=env)),
        ok(run(tmp_path, "migrate", "tag", "v2.5", env=env)),
        ok(run(tmp_path, "plan", "--to", "v2.6", env=env)),
        ok(run(tmp_path, "plan", "--to", "v2.6", "--json", env=env)),
        ok(run(tmp_path, "start", "--to", "v2.6", env=env)),  # pg_dump authenticates
        ok(run(tmp_path, "status", env=env)),
        ok(run(tmp_path, "status", "--json", env=env)),
        ok(run(tmp_path, "history", "--json", env=env)),
        ok(run(tmp_path, "migrate", "status", env=env)),
        ok(run(tmp_path, "backup", "list", "--json", env=env)),
    ]
    backups = json.loads(outputs[-1].stdout)
    assert backups, outputs[-1].stdout
    bid = backups[0]["id"]
    # psql authenticates for the restore, with the same password from the environment
    outputs.append(ok(run(tmp_path, "backup", "restore", "--yes", bid, env=env)))
    outputs.append(ok(run(tmp_path, "ledger", "export", "--out", "export.jsonl", env=env)))
    # a wrong password: refused by the server, and the wrong one is not printed either
    bad = run(tmp_path, "migrate", "status", env={PW_VAR: PASSWORD[::-1]})
    assert bad.returncode != 0 and "password authentication failed" in bad.stderr, bad.stderr
    assert bad.stderr.count("\n") == 1
    outputs.append(bad)
    assert "Hunt3rZ"[::-1] not in bad.stderr

    for p in outputs:
        assert not leaks(p.stdout) and not leaks(p.stderr), (p.args, p.stdout, p.stderr)
    # Every file statekeeper wrote: the SQLite ledger (and its WAL), manifests, checkpoints,
    # the export. The dump itself holds the role name, never its password.
    written = [f for f in tmp_path.rglob("*")
               if f.is_file() and "migrations" not in f.parts and f.name != "statekeeper.toml"]
    assert any(f.name == "ledger.db" for f in written) and any(f.suffix == ".jsonl"
                                                               for f in written)
    for f in written:
        assert not leaks(f.read_bytes()), f


def test_a_postgresql_ledger_behind_a_password(
    pg_cluster: PgCluster, pw_role: str, tmp_path: Path
) -> None:
    db = own_db(pg_cluster, pw_role, "pwledger")
    (tmp_path / "statekeeper.toml").write_text(
        "[ledger]\n"
        f'url = "postgresql://{pw_role}:${{{PW_VAR}}}@127.0.0.1:{pg_cluster.port}/{db}"\n'
    )
    env = {PW_VAR: PASSWORD}
    outs = [
        ok(run(tmp_path, "init", env=env)),
        ok(run(tmp_path, "ledger", "append", "--stream", "notes/1", "--type", "note",
               "--payload", '{"by": "test"}', env=env)),
        ok(run(tmp_path, "ledger", "verify", "--json", env=env)),
        ok(run(tmp_path, "keys", "list", env=env)),
    ]
    assert json.loads(outs[2].stdout)["ok"] is True
    wrong = run(tmp_path, "ledger", "verify", env={PW_VAR: "Hunt3rZ-wrong"})
    assert wrong.returncode == 6 and wrong.stderr.count("\n") == 1, wrong.stderr
    assert "password authentication failed" in wrong.stderr
    missing = run(tmp_path, "ledger", "verify", env={})
    assert missing.returncode == 2 and f"{PW_VAR} is not set" in missing.stderr
    for p in [*outs, wrong, missing]:
        assert not leaks(p.stdout) and not leaks(p.stderr), (p.args, p.stdout, p.stderr)
    rows = pg_cluster.psql("SELECT string_agg(t::text, E'\\n') FROM (SELECT * FROM "
                           "ledger_events) t", db=db)
    assert "notes/1" in rows and not leaks(rows)


# -- a URL without host or port --------------------------------------------------------------
@pytest.fixture
def pg_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for k in list(os.environ):
        if k.startswith("PG"):
            monkeypatch.delenv(k)
    return monkeypatch


def server_port(t: Target) -> int:
    conn = t.connect(autocommit=True)
    try:
        return int(conn.execute("SHOW port").fetchone()[0])
    finally:
        conn.close()


def test_no_port_in_the_url_means_pgport(pg_cluster: PgCluster, pg_env: pytest.MonkeyPatch) -> None:
    db = pg_cluster.createdb("noport")
    pg_env.setenv("PGPORT", str(pg_cluster.port))
    t = Target.from_url(f"postgresql://postgres@127.0.0.1/{db}")
    assert server_port(t) == pg_cluster.port  # not 5432, where another server listens
    assert t.endpoint() == ("127.0.0.1", pg_cluster.port)


def test_no_host_in_the_url_means_pghost_and_its_socket(
    pg_cluster: PgCluster, pg_env: pytest.MonkeyPatch
) -> None:
    db = pg_cluster.createdb("nohost")
    pg_env.setenv("PGHOST", str(pg_cluster.root))  # the cluster's socket directory
    pg_env.setenv("PGPORT", str(pg_cluster.port))
    t = Target.from_url(f"postgresql:///{db}?user=postgres")
    assert server_port(t) == pg_cluster.port
    assert t.endpoint() == (str(pg_cluster.root), pg_cluster.port)


def test_pgservice_names_the_server(
    pg_cluster: PgCluster, pg_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    db = pg_cluster.createdb("service")
    services = tmp_path / "pg_service.conf"
    services.write_text(f"[skt]\nhost=127.0.0.1\nport={pg_cluster.port}\nuser=postgres\n")
    pg_env.setenv("PGSERVICEFILE", str(services))
    pg_env.setenv("PGSERVICE", "skt")
    assert server_port(Target.from_url(f"postgresql:///{db}")) == pg_cluster.port
    pg_env.delenv("PGSERVICE")
    assert server_port(Target.from_url(f"postgresql:///{db}?service=skt")) == pg_cluster.port


def test_pg_dump_psql_and_the_ledger_follow_pgport_and_pghost(
    pg_cluster: PgCluster, tmp_path: Path
) -> None:
    """Host-less, port-less URLs everywhere; only PGHOST/PGPORT say where the server is. A
    backup (pg_dump), a restore (psql) whose fingerprint must equal the backup's, and a
    PostgreSQL ledger all reach the throwaway cluster."""
    db = pg_cluster.createdb("children")
    ledger_db = pg_cluster.createdb("childledger")
    for s in SEED_SQL:
        pg_cluster.psql(s, db=db)
    (tmp_path / "statekeeper.toml").write_text(
        f'[ledger]\nurl = "postgresql://postgres@/{ledger_db}"\n\n'
        f'[target]\nurl = "postgresql://postgres@/{db}"\n\n'
        '[backup]\ndir = "backups"\n'
    )
    env = {"PGHOST": str(pg_cluster.root), "PGPORT": str(pg_cluster.port)}
    ok(run(tmp_path, "init", env=env))
    created = json.loads(ok(run(tmp_path, "backup", "create", "--id", "b1", "--json",
                                env=env)).stdout)
    assert created["method"] == "pg_dump"
    manifest = json.loads((tmp_path / "backups" / "b1" / "manifest.json").read_text())
    assert (manifest["host"], manifest["port"]) == (str(pg_cluster.root), pg_cluster.port)
    pg_cluster.psql("DELETE FROM positions", db=db)
    ok(run(tmp_path, "backup", "restore", "--yes", "b1", env=env))  # proves the fingerprint again
    assert pg_cluster.psql("SELECT count(*) FROM positions", db=db) == "4"
    assert pg_cluster.psql("SELECT count(*) FROM ledger_events", db=ledger_db) != "0"
    # Without the variables, libpq's own defaults apply (the system socket, port 5432):
    # the database there is not ours, and that is an error, not a silent success.
    p = run(tmp_path, "backup", "create", "--id", "b2", env={})
    assert p.returncode != 0 and p.stderr.count("\n") == 1, p.stderr
