"""The crash matrix: every failpoint the code defines, on the forward and the rollback path,
against a SQLite target and a real PostgreSQL one. A real `statekeeper start` process dies
there (os._exit(137), as kill -9 would), then a real `statekeeper resume` finishes the run.

The failpoints are enumerated from `statekeeper debug failpoints --json`, so a new failpoint
is covered without editing this file (it must name a path: forward, rollback or both).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.upgrade_support import ROOT, SCENARIOS, Project, make_project, seed


def _failpoints() -> list[tuple[str, str]]:
    out = subprocess.run([sys.executable, "-m", "cli", "debug", "failpoints", "--json"],
                         capture_output=True, text=True, check=True, cwd=ROOT)
    return [(f["name"], f["path"]) for f in json.loads(out.stdout)]


# Transitions in the "revert" scenario: begin, preflight_passed, backed_up, tagged, fail,
# rollback_done. The 5th and 6th happen on the rollback path.
ROLLBACK_TRANSITION_HIT = 6


def _cases() -> list[Any]:
    cases = []
    for name, path in _failpoints():
        kind = name.split(".")[0]
        if path in ("forward", "both"):
            # crash on the way forward; one upgrade that completes, one that then fails
            cases.append(pytest.param(name, "forward", "completed", id=f"{name}-forward"))
            cases.append(pytest.param(name, "revert", "rolled_back", id=f"{name}-then-rollback"))
        if path in ("rollback", "both"):
            scenario = "restore" if kind == "restore" else "revert"
            fp = f"{name}:{ROLLBACK_TRANSITION_HIT}" if kind == "transition" else name
            cases.append(pytest.param(fp, scenario, "rolled_back", id=f"{name}-rollback"))
    return cases


@pytest.fixture(params=["sqlite", "postgresql"])
def target_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def _project(tmp_path: Path, backend: str, scenario: str, request: pytest.FixtureRequest
             ) -> Project:
    if backend == "sqlite":
        url = f"sqlite:///{tmp_path / 'app.db'}"
        (tmp_path / "app.db").touch()
    else:
        cluster = request.getfixturevalue("pg_cluster")
        url = cluster.url(cluster.createdb("crash"))
    seed(backend, url)
    return make_project(tmp_path / "proj", backend, url, SCENARIOS[scenario])


def _reference(tmp_path: Path, backend: str, request: pytest.FixtureRequest) -> Any:
    """The fingerprint of the same database migrated once, without statekeeper."""
    if backend == "sqlite":
        url = f"sqlite:///{tmp_path / 'ref.db'}"
        (tmp_path / "ref.db").touch()
    else:
        cluster = request.getfixturevalue("pg_cluster")
        url = cluster.url(cluster.createdb("ref"))
    seed(backend, url)
    ref = Project(tmp_path, url, backend)
    ref.apply_sql_directly(SCENARIOS["forward"])
    return ref.fingerprint()


@pytest.mark.slow
@pytest.mark.parametrize(("failpoint", "scenario", "outcome"), _cases())
def test_crash_then_resume(failpoint: str, scenario: str, outcome: str, target_backend: str,
                           tmp_path: Path, request: pytest.FixtureRequest) -> None:
    proj = _project(tmp_path, target_backend, scenario, request)
    before = proj.fingerprint()

    crashed = proj.cli("start", "--to", "v2.6", failpoint=failpoint)
    assert crashed.returncode == 137, (
        f"failpoint {failpoint} was not reached in scenario {scenario}:\n"
        f"{crashed.stdout}\n{crashed.stderr}"
    )
    resumed = proj.cli("resume")
    want_exit = {"completed": 0, "rolled_back": 1}[outcome]
    assert resumed.returncode == want_exit, resumed.stdout + resumed.stderr

    status = proj.cli_json("status")
    assert status["state"] == outcome
    assert status["resumes"] == 1
    assert status["takeovers"] == 1  # the dead process's lease, taken over and recorded

    after = proj.fingerprint()
    if outcome == "rolled_back":
        from statekeeper.fingerprint import diff

        assert after == before, diff(before, after)
    else:
        from statekeeper.fingerprint import diff

        ref = _reference(tmp_path, target_backend, request)
        assert after == ref, diff(ref, after)  # migrated schema, same data, each applied once

    applied = [m for m in proj.cli_json("migrate", "status") if m.get("applied")]
    ids = [m["id"] for m in applied]
    assert len(ids) == len(set(ids))
    if outcome == "completed":
        assert ids == sorted(SCENARIOS["forward"])[:3] or ids == [n[:-4] for n in sorted(SCENARIOS["forward"])]
    else:
        assert ids == []

    verify = proj.cli("ledger", "verify")
    assert verify.returncode == 0, verify.stdout + verify.stderr

    history = proj.cli_json("history")
    assert [h["state"] for h in history] == [outcome]


@pytest.mark.slow
def test_sigkill_at_random_instants_during_slow_migration(tmp_path: Path,
                                                          pg_cluster: Any) -> None:
    """SIGKILL a real start at 20 random instants while a pg_sleep migration runs; resume."""
    import os
    import random
    import signal
    import time

    rng = random.Random(20)
    outcomes: list[str] = []
    for i in range(20):
        url = pg_cluster.url(pg_cluster.createdb("sigkill"))
        seed("postgresql", url)
        migs = dict(SCENARIOS["forward"])
        migs["002_orders.sql"] = "SELECT pg_sleep(0.4);\n" + migs["002_orders.sql"]
        proj = make_project(tmp_path / f"p{i}", "postgresql", url, migs, backup=(i % 2 == 0))
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        env.pop("STATEKEEPER_FAILPOINT", None)
        p = subprocess.Popen([sys.executable, "-m", "cli", "--config", str(proj.config), "start",
                              "--to", "v2.6"], cwd=proj.dir, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.3, 2.5))
        p.send_signal(signal.SIGKILL)
        p.wait()
        res = proj.cli("resume") if p.returncode == -9 else None
        st = proj.cli_json("status")
        outcomes.append(f"{p.returncode}:{st['state']}")
        assert st["state"] == "completed", (res.stdout + res.stderr) if res else st
        applied = [m["id"] for m in proj.cli_json("migrate", "status") if m.get("applied")]
        assert applied == sorted(applied) and len(applied) == 3
        assert proj.cli("ledger", "verify").returncode == 0
    # most kills must really land during the run, or the test proves nothing
    assert sum(o.startswith("-9") for o in outcomes) >= 15, outcomes
