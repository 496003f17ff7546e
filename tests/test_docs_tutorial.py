"""The user guide's walk-through ("Getting started"), run as written: every ```sh block of
that section, in order, as one bash script with `set -euo pipefail`, in an empty directory,
against a throwaway PostgreSQL server found through PGHOST/PGPORT/PGUSER as the guide says.
A command the guide shows that does not work as shown fails this test."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.upgrade_support import ROOT

GUIDE = ROOT / "docs" / "user-guide.md"
SECTION = "## Getting started"


def tutorial_script() -> str:
    text = GUIDE.read_text(encoding="utf-8")
    start = text.index(SECTION)
    end = text.index("\n## ", start + len(SECTION))
    blocks = re.findall(r"^```sh\n(.*?)^```$", text[start:end], flags=re.S | re.M)
    assert len(blocks) >= 8, "the walk-through lost its commands"
    return "set -euo pipefail\n" + "\n".join(blocks)


def test_the_getting_started_walk_through_runs_as_written(tmp_path: Path,
                                                          pg_cluster: Any) -> None:
    # `statekeeper` on PATH is this checkout's, whatever else is installed
    bindir = tmp_path / "bin"
    bindir.mkdir()
    shim = bindir / "statekeeper"
    shim.write_text(f"#!/bin/sh\nexec {sys.executable} -m cli \"$@\"\n")
    shim.chmod(0o755)
    env = dict(os.environ, PATH=f"{bindir}:{pg_cluster.bin}:{os.environ['PATH']}",
               PYTHONPATH=str(ROOT), PGHOST="127.0.0.1", PGPORT=str(pg_cluster.port),
               PGUSER="postgres")
    for k in ("STATEKEEPER_CONFIG", "STATEKEEPER_FAILPOINT", "STATEKEEPER_TARGET_URL",
              "STATEKEEPER_LEDGER_URL", "STATEKEEPER_LEDGER_KEY", "PGDATABASE"):
        env.pop(k, None)
    pg_cluster.psql("DROP DATABASE IF EXISTS trading")
    work = tmp_path / "home"
    work.mkdir()
    r = subprocess.run(["bash", "-c", tutorial_script()], cwd=work, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"{r.stdout}\n{r.stderr}"
    assert "Traceback" not in r.stdout + r.stderr

    app = work / "trading-app"
    runs = json.loads(subprocess.run([str(shim), "history", "--json"], cwd=app, env=env,
                                     capture_output=True, text=True, check=True).stdout)
    assert [(x["to"], x["state"]) for x in runs] == [
        ("v2.6", "completed"), ("v2.7", "rolled_back"), ("v2.7", "completed")]
    # what the guide says the failed run printed: the file, line and column, then rollback
    assert "003_user_status.sql:2:" in r.stdout + r.stderr
    # the target as written in statekeeper.toml, not SQLAlchemy's postgresql+psycopg://
    assert "trading v2.5 -> v2.6 on postgresql:///trading" in r.stdout
    assert "psycopg" not in r.stdout + r.stderr
    assert 'column "email" of relation "users" already exists' in r.stdout + r.stderr
    assert pg_cluster.psql("SELECT string_agg(email || ':' || status, ',' ORDER BY id) "
                           "FROM users", db="trading") == (
        "ada@example.com:active,grace@example.com:active")
    assert pg_cluster.psql("SELECT count(*) FROM pg_indexes WHERE indexname = "
                           "'positions_symbol'", db="trading") == "1"
    assert (app / "upgrades.html").stat().st_size > 0
