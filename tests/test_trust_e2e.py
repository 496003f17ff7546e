"""The attack of issue 7 against real runs: an insider with INSERT only on the ledger tables
(triggers intact, no key) plants events while a real ``statekeeper start`` is running, or
plants a whole fake "completed" run. Nothing downstream adopts them: the running process stops
at its next append (exit 4), and resume, status and history refuse with the forged seq, with
nothing done to the target."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

import ledger
from statekeeper import command
from tests.test_ledger_support import RawDB, forge
from tests.upgrade_support import GOOD, ROOT, Project, make_project, seed

SLOW = ("WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 3000000)"
        " SELECT count(*) FROM c;\n")


def _project(tmp_path: Path, migrations: dict[str, str]) -> Project:
    target = tmp_path / "app.db"
    url = f"sqlite:///{target}"
    seed("sqlite", url)
    return make_project(tmp_path / "proj", "sqlite", url, migrations)


def _ledger_url(proj: Project) -> str:
    return f"sqlite:///{proj.dir / '.statekeeper' / 'ledger.db'}"


def _plant(url: str, stream: str, types: list[tuple[str, str]]) -> int:
    """INSERT correctly hashed, unsealed events at the head; return the first forged seq."""
    with RawDB(url) as db:
        seq, prev = db.execute("SELECT seq, hash FROM ledger_events ORDER BY seq DESC LIMIT 1")[0]
        first = seq + 1
        sprev = "0" * 64
        for i, (type_, payload) in enumerate(types, 1):
            ev = forge(seq + 1, stream, i, prev, sprev, closes=i == len(types), type_=type_,
                       payload=payload)
            db.insert_event(ev)
            seq, prev, sprev = ev.seq, ev.hash, ev.hash
    return int(first)


def _one_line(p: subprocess.CompletedProcess[str], code: int) -> str:
    assert p.returncode == code, (p.returncode, p.stdout, p.stderr)
    assert "Traceback" not in p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1, p.stderr
    return lines[0]


def test_a_forgery_during_a_real_start_stops_it_and_resume_refuses(tmp_path: Path) -> None:
    proj = _project(tmp_path, {**GOOD, "002_orders.sql": SLOW + GOOD["002_orders.sql"]})
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("STATEKEEPER_FAILPOINT", None)
    run = subprocess.Popen(
        [sys.executable, "-m", "cli", "--config", str(proj.config), "start", "--to", "v2.6"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # until it is inside the slow migration
            runs = [r for r in command.history(proj.settings()) if hasattr(r, "open_step")]
            if runs and runs[0].open_step is not None and runs[0].open_step.kind == "migrate" \
                    and runs[0].open_step.args.get("migration") == "002_orders":
                break
            time.sleep(0.05)
        else:
            pytest.fail("the run never reached the slow migration")
        forged = _plant(_ledger_url(proj), "upgrade/planted", [("run.created", "{}")])
        out, err = run.communicate(timeout=120)
    finally:
        if run.poll() is None:
            run.kill()
    assert run.returncode == 4, (out, err)
    assert f"seq {forged}: unsealed events" in err
    assert "refusing to build on it" in err
    after_crash = proj.fingerprint()
    applied = proj.applied_ids()

    for args in (["resume"], ["resume", "--rollback"], ["status"], ["history"],
                 ["ledger", "verify"], ["start", "--to", "v2.7"]):
        msg = _one_line(proj.cli(*args), 4)
        assert f"seq {forged}: missing seal" in msg, (args, msg)
    assert proj.fingerprint() == after_crash  # nothing was done to the target
    assert proj.applied_ids() == applied


def test_a_planted_completed_run_is_never_shown(tmp_path: Path) -> None:
    proj = _project(tmp_path, GOOD)
    assert proj.cli("start", "--to", "v2.6").returncode == 0
    url = _ledger_url(proj)
    with ledger.Ledger(url, create=False) as lg:
        real = lg.head().seq
    forged = _plant(url, "upgrade/20260101-000000-f0f0f0", [
        ("run.created", '{"run_id":"20260101-000000-f0f0f0","to_version":"v9.9"}'),
        ("state.changed", '{"from":"verifying","to":"completed","trigger":"complete"}'),
    ])
    assert forged == real + 1
    for args in (["history"], ["status"], ["status", "20260101-000000-f0f0f0"],
                 ["ledger", "verify"]):
        msg = _one_line(proj.cli(*args), 4)
        assert f"seq {forged}: missing seal: the append {forged}..{forged + 1} closes " \
            "without a seal" in msg, (args, msg)
        assert "v9.9" not in msg
