"""The crash matrix: every failpoint the code defines, on the forward and the rollback path,
against a SQLite target and a real PostgreSQL one. A real `statekeeper start` process dies
there (os._exit(137), as kill -9 would), then a real `statekeeper resume` finishes the run.

The failpoints are enumerated from `statekeeper debug failpoints --json`, so a new failpoint
is covered without editing this file (it must name a path: forward, rollback or both, and a
side). A failpoint of the release side (stop, snapshot, config, switch, deploy commands,
start and their compensations) runs in a project that deploys the test application
(tests/release_app.py): forward in an upgrade that completes, rollback in one whose new release
fails its HTTP health check, so every compensation runs; the release is checked afterwards
(where `current` points, the configuration byte for byte, which version answers).

The release side's failpoints run against a SQLite target only: their steps touch files and
processes, never the target, so a PostgreSQL target takes no other code path there, and they
are the matrix's slowest cases (each starts the test application). So do the transitions'
(a crash between a step's terminal event and the state change it fires is the ledger's
matter: the target is as the step left it, and the step failpoints already cover every such
point on both backends). The database side's failpoints run against both, but for their
`.before` ones, which run against SQLite only: `.before` is hit after the step has taken the
target's lock and before anything is recorded or done, the very point of the target where
`.started` is hit one ledger event later, so a resume after `.started` on PostgreSQL takes
every target path one after `.before` would (the dead session's lock, the step run again),
and the step's probe besides.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.release_app import SECRET, ask
from tests.upgrade_support import (
    ROOT,
    SCENARIOS,
    Project,
    make_project,
    make_release_project,
    seed,
    seeded_db,
)

UNDO_MARK = "undo-ran"
# one deploy command with its undo, so that `command` and `undo` have steps to crash in
COMMANDS = ('[[deploy.command]]\nname = "warm cache"\nrun = "sh -c \'echo warmed > warm\'"\n'
            f'undo = "sh -c \'rm -f warm; echo x >> ../../{UNDO_MARK}\'"\n')


def _failpoints() -> list[tuple[str, str, str]]:
    out = subprocess.run(
        [sys.executable, "-m", "cli", "debug", "failpoints", "--json"],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    return [(f["name"], f["path"], f["side"]) for f in json.loads(out.stdout)]


# Transitions (state changes) in each scenario, in order.
FORWARD_TRANSITIONS = 7  # begin, preflight_passed, backed_up, tagged, migrated, deployed, verified
REVERT_TRANSITIONS = 6  # begin, preflight_passed, backed_up, tagged, fail, rollback_done


def _cases() -> list[Any]:
    return [pytest.param(*c.values, backend, id=f"{c.id}-{backend}")
            for c in _scenarios() for backend in ("sqlite", "postgresql")
            if backend == "sqlite" or _on_postgresql(str(c.values[0]), str(c.values[1]))]


def _on_postgresql(failpoint: str, scenario: str) -> bool:
    """Whether a case takes a target-specific path (see the module's docstring)."""
    return (scenario not in ("release", "unhealthy") and not failpoint.startswith("transition.")
            and not failpoint.endswith(".before"))


def _scenarios() -> list[Any]:
    cases = []
    for name, path, side in _failpoints():
        kind = name.split(".")[0]
        if side == "release":
            if path in ("forward", "both"):
                cases.append(pytest.param(name, "release", "completed", id=f"{name}-forward"))
            if path in ("rollback", "both"):
                cases.append(pytest.param(name, "unhealthy", "rolled_back",
                                          id=f"{name}-rollback"))
            continue
        if kind == "transition":
            # every state change of both scenarios, on the forward and the rollback path
            for n in range(1, FORWARD_TRANSITIONS + 1):
                cases.append(pytest.param(f"{name}:{n}", "forward", "completed",
                                          id=f"{name}:{n}-forward"))
            for n in range(1, REVERT_TRANSITIONS + 1):
                cases.append(pytest.param(f"{name}:{n}", "revert", "rolled_back",
                                          id=f"{name}:{n}-revert"))
            continue
        if path in ("forward", "both"):
            # crash on the way forward; one upgrade that completes, one that then fails (its
            # third migration), which never reaches the health checks
            cases.append(pytest.param(name, "forward", "completed", id=f"{name}-forward"))
            if kind != "health":
                cases.append(pytest.param(name, "revert", "rolled_back",
                                          id=f"{name}-then-rollback"))
        if path in ("rollback", "both"):
            scenario = "restore" if kind == "restore" else "revert"
            cases.append(pytest.param(name, scenario, "rolled_back", id=f"{name}-rollback"))
    return cases


def _project(
    tmp_path: Path, backend: str, scenario: str, request: pytest.FixtureRequest
) -> Project:
    url = seeded_db(tmp_path, backend, "app", request)
    if scenario in ("release", "unhealthy"):
        return make_release_project(tmp_path / "proj", backend, url, SCENARIOS["forward"],
                                    request, healthy=scenario == "release", commands=COMMANDS)
    return make_project(tmp_path / "proj", backend, url, SCENARIOS[scenario])


def _release_state(proj: Project) -> tuple[str, bytes, int]:
    import os

    live = proj.dir / "config" / "app.env"
    return (os.readlink(proj.dir / "current"), live.read_bytes(), live.stat().st_mode)


_REFERENCE: dict[str, Any] = {}


def _reference(tmp_path: Path, backend: str, request: pytest.FixtureRequest) -> Any:
    """The fingerprint of the same database migrated once, without statekeeper (the same for
    every case of a backend: built once per worker)."""
    if backend not in _REFERENCE:
        ref = Project(tmp_path, seeded_db(tmp_path, backend, "ref", request), backend)
        ref.apply_sql_directly(SCENARIOS["forward"])
        _REFERENCE[backend] = ref.fingerprint()
    return _REFERENCE[backend]


@pytest.mark.slow
@pytest.mark.parametrize(("failpoint", "scenario", "outcome", "target_backend"), _cases())
def test_crash_then_resume(
    failpoint: str,
    scenario: str,
    outcome: str,
    target_backend: str,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    proj = _project(tmp_path, target_backend, scenario, request)
    before = proj.fingerprint()
    release = scenario in ("release", "unhealthy")
    release_before = _release_state(proj) if release else None

    crashed = proj.cli("start", "--to", "v2.6", failpoint=failpoint)
    assert crashed.returncode == 137, (
        f"failpoint {failpoint} was not reached in scenario {scenario}:\n"
        f"{crashed.stdout}\n{crashed.stderr}"
    )
    resumed = proj.cli("resume")
    want_exit = {"completed": 0, "rolled_back": 1}[outcome]
    assert resumed.returncode == want_exit, resumed.stdout + resumed.stderr

    from statekeeper import command

    settings = proj.settings()
    run = command.status(settings)
    assert run.state == outcome
    assert run.resumes == 1
    assert run.takeovers == 1  # the dead process's lease, taken over and recorded
    taken = [lease for lease in run.leases if lease["type"] == "lease.taken_over"]
    assert taken[0]["from_pid"] != taken[0]["pid"]

    after = proj.fingerprint()
    if outcome == "rolled_back":
        from statekeeper.fingerprint import diff

        assert after == before, diff(before, after)
    else:
        from statekeeper.fingerprint import diff

        ref = _reference(tmp_path, target_backend, request)
        assert after == ref, diff(ref, after)  # migrated schema, same data, each applied once

    ids = proj.applied_ids()
    if outcome == "completed":
        assert ids == [n.removesuffix(".sql") for n in sorted(SCENARIOS["forward"])]
    else:
        assert ids == []

    assert command.ledger_verify(settings).events > 0  # raises IntegrityViolation otherwise
    assert [r.state for r in command.history(settings)] == [outcome]

    if release:
        link, config, mode = _release_state(proj)
        status, body = ask(proj.port)
        if outcome == "completed":
            assert link == "releases/v2.6"
            assert config == (proj.dir / "releases/v2.6/config/app.env").read_bytes()
            assert (status, body["version"]) == (200, "v2.6"), body
            assert (proj.dir / "releases/v2.6/warm").exists()
        else:
            assert (link, config, mode) == release_before
            assert (status, body["version"]) == (200, "v2.5"), body
            assert not (proj.dir / "releases/v2.6/warm").exists()
            # the undo ran once (a crash inside it is settled by its exit file, never rerun)
            assert (proj.dir / UNDO_MARK).read_text() == "x\n"
        assert SECRET not in (proj.dir / ".statekeeper" / "ledger.db").read_bytes().decode(
            "latin-1")


@pytest.mark.slow
@pytest.mark.parametrize("i", range(4))  # separate tests: xdist spreads them over the cores
def test_sigkill_at_random_instants_during_slow_migration(
    tmp_path: Path, pg_cluster: Any, i: int
) -> None:
    """SIGKILL a real start at a random instant while a pg_sleep migration runs; resume."""
    import os
    import random
    import signal
    import time

    from statekeeper import command

    rng = random.Random(20 + i)
    url = pg_cluster.url(pg_cluster.createdb("sigkill"))
    seed("postgresql", url)
    migs = dict(SCENARIOS["forward"])
    migs["002_orders.sql"] = "SELECT pg_sleep(2.0);\n" + migs["002_orders.sql"]
    proj = make_project(tmp_path / f"p{i}", "postgresql", url, migs, backup=(i % 2 == 0))
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("STATEKEEPER_FAILPOINT", None)
    p = subprocess.Popen(
        [sys.executable, "-m", "cli", "--config", str(proj.config), "start", "--to", "v2.6"],
        cwd=proj.dir,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    # wait until the slow migration is running on the server, then kill at a random instant
    db = url.rsplit("/", 1)[1]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and p.poll() is None:
        if (
            pg_cluster.psql(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = "
                f"'{db}' AND query LIKE 'SELECT pg_sleep(2.0)%'"
            )
            != "0"
        ):
            break
        time.sleep(0.02)
    time.sleep(rng.uniform(0.0, 1.4))  # well inside the 2 s sleep
    p.send_signal(signal.SIGKILL)
    p.wait()
    # the kill must really land during the run, or the test proves nothing
    assert p.returncode == -9, p.returncode
    assert command.history(proj.settings()), "killed before the run was recorded"
    res = proj.cli("resume")
    run = command.status(proj.settings())
    assert run.state == "completed", res.stdout + res.stderr
    assert proj.applied_ids() == [n.removesuffix(".sql") for n in sorted(migs)]
    assert command.ledger_verify(proj.settings()).events > 0
