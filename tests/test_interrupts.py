"""Ctrl-C and SIGTERM during a real ``statekeeper start``: the run stops at the next safe point
(after the step that runs has ended and been recorded), ``run.interrupted`` is in the ledger,
the exit code is 130 / 143 with the commands that finish or undo the run, and ``resume``
finishes it. A second Ctrl-C stops at once, and ``resume`` settles the step left in doubt.

The moment is pinned without sleeps where it can be: a ``NAME@stop`` failpoint stops the
process (SIGSTOP) right after a step's ``step.started`` is committed; the test sends the signal
to the stopped process and then SIGCONT, so the signal arrives while that step runs.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jsonschema
import pytest

from statekeeper import command
from tests.upgrade_support import GOOD, ROOT, Project, make_project, seed


def project(tmp_path: Path, health: str | None = None) -> Project:
    url = f"sqlite:///{tmp_path / 'app.db'}"
    seed("sqlite", url)
    kw = {} if health is None else {"health": health}
    return make_project(tmp_path / "proj", "sqlite", url, dict(GOOD), **kw)


def spawn(proj: Project, failpoint: str, *args: str) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT), STATEKEEPER_FAILPOINT=failpoint)
    return subprocess.Popen(
        [sys.executable, "-m", "cli", "--config", str(proj.config), *args],
        cwd=proj.dir, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_stopped(p: subprocess.Popen[str], timeout: float = 60) -> None:
    """Until the process has stopped itself at its failpoint."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert p.poll() is None, p.communicate()
        with open(f"/proc/{p.pid}/stat") as f:
            if f.read().rsplit(")", 1)[1].split()[0] == "T":
                return
        time.sleep(0.02)
    p.kill()
    raise AssertionError("the process never reached its failpoint")


@pytest.mark.parametrize(("sig", "code", "then"), [
    (signal.SIGINT, 130, ("resume",)),
    (signal.SIGTERM, 143, ("resume", "--rollback")),
], ids=["ctrl-c then resume", "sigterm then resume --rollback"])
def test_a_signal_stops_the_run_after_the_step_and_resume_goes_on(
        tmp_path: Path, sig: signal.Signals, code: int, then: tuple[str, ...]) -> None:
    proj = project(tmp_path)
    p = spawn(proj, "migrate.started:2@stop", "start", "--to", "v2.6")
    wait_stopped(p)  # migrate:002_orders is announced, not yet run
    p.send_signal(sig)
    p.send_signal(signal.SIGCONT)
    out, err = p.communicate(timeout=60)

    assert p.returncode == code, out + err
    run = command.status(proj.settings())
    assert run.state == "migrating"
    # the step that ran when the signal came finished and was recorded; nothing after it ran
    assert [(s.name, s.status) for s in run.steps][-2:] == [
        ("migrate:001_bump_qty", "succeeded"), ("migrate:002_orders", "succeeded")]
    assert proj.applied_ids() == ["001_bump_qty", "002_orders"]
    assert [(i["signal"], i["state"]) for i in run.interruptions] == [(sig.name, "migrating")]
    last = err.strip().splitlines()[-1]
    assert last == (
        f"error: interrupted ({sig.name}): run {run.run_id} stopped at a safe point after step "
        f"migrate:002_orders (state migrating); finish it with 'statekeeper resume "
        f"{run.run_id}' or undo it with 'statekeeper resume {run.run_id} --rollback'")
    assert f"{sig.name} received: stopping after the current step" in err
    assert "Traceback" not in err
    assert f"stopped by {sig.name} in state migrating" in out
    command.ledger_verify(proj.settings())  # raises if it does not verify

    done = proj.cli(*then)
    assert done.returncode == 0, done.stdout + done.stderr
    if "--rollback" in then:
        assert command.status(proj.settings()).state == "rolled_back"
        assert proj.applied_ids() == []
    else:
        assert command.status(proj.settings()).state == "completed"
        assert proj.applied_ids() == ["001_bump_qty", "002_orders", "003_user_status"]
    command.ledger_verify(proj.settings())

    # the audit report shows the interrupted session, and still validates against its schema
    out = tmp_path / "report.json"
    command.report(proj.settings(), "json", out, run_id=run.run_id)
    doc = json.loads(out.read_text())
    schema = json.loads((ROOT / "docs" / "report.schema.json").read_text())
    jsonschema.Draft202012Validator(schema).validate(doc)
    (entry,) = doc["entries"]
    assert [x["ended"] for x in entry["sessions"]] == ["interrupted", "released"]


def test_a_second_ctrl_c_stops_at_once_and_resume_settles_the_step(tmp_path: Path) -> None:
    proj = project(tmp_path, health='\n[health]\nchecks = [{ name = "slow", '
                                     'command = "sleep 1" }]\n')
    p = spawn(proj, "health.started@stop", "start", "--to", "v2.6")
    wait_stopped(p)
    p.send_signal(signal.SIGINT)
    p.send_signal(signal.SIGCONT)
    time.sleep(0.4)  # the first is taken: the health check (sleep 1) runs on
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=60)

    assert p.returncode == 130, out + err
    run = command.status(proj.settings())
    assert run.open_step is not None and run.open_step.name == "health"
    assert run.interruptions == []  # not a safe point: nothing was recorded
    assert err.strip().splitlines()[-1] == (
        f"error: interrupted at once: run {run.run_id} stopped where it was, step health in "
        f"doubt; 'statekeeper resume {run.run_id}' settles it and goes on (or 'statekeeper "
        f"resume {run.run_id} --rollback')")

    done = proj.cli("resume")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "redo  health" in done.stdout
    assert command.status(proj.settings()).state == "completed"
    command.ledger_verify(proj.settings())
