"""SIGTERM and Ctrl-C during a real `statekeeper rehearse`: the step under way on the clone
ends, the rehearsal stops at that safe point, is recorded as failed (interrupted), its clone
is dropped, production is untouched, and the exit code is 143 / 130 as for `start`.

The moment is pinned as in tests/test_interrupts.py: a ``NAME@stop`` failpoint stops the
process (SIGSTOP) right after the clone's run announces its second migration; the signal is
sent to the stopped process, then SIGCONT."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

from statekeeper import command
from tests.test_interrupts import spawn, wait_stopped
from tests.test_rehearse import _clones, _production, _project, _rehearsal, _rehearsal_ops
from tests.upgrade_support import SCENARIOS


@pytest.mark.parametrize(("sig", "code", "backend"), [
    (signal.SIGTERM, 143, "postgresql"),
    (signal.SIGINT, 130, "sqlite"),
], ids=["sigterm", "ctrl-c"])
def test_a_signal_stops_the_rehearsal_at_a_safe_point_and_drops_the_clone(
        tmp_path: Path, request: pytest.FixtureRequest, sig: signal.Signals, code: int,
        backend: str) -> None:
    proj = _project(tmp_path, backend, request, SCENARIOS["forward"])
    before = _production(proj)
    p = spawn(proj, "migrate.started:2@stop", "rehearse", "--to", "v2.6", "--json")
    wait_stopped(p)  # on the clone: migrate:002_orders announced, not yet run
    assert len(_clones(proj, request)) == (2 if backend == "postgresql" else 1)
    p.send_signal(sig)
    p.send_signal(signal.SIGCONT)
    out, err = p.communicate(timeout=120)

    assert p.returncode == code, out + err
    [op] = _rehearsal_ops(proj)
    said = (f"interrupted ({sig.name}): rehearsal {op.op_id} stopped at a safe point during "
            "the upgrade, after its step migrate:002_orders; its clone is dropped; production "
            "was not touched")
    assert err.strip().splitlines()[-1] == f"error: {said}"
    assert json.loads(out)["error"] == {"class": None, "message": said, "exit_code": code}
    assert op.status == "failed" and op.error == said
    assert [(s.name, s.status) for s in op.steps][-1] == ("drop clone", "succeeded")
    assert _production(proj) == before and command.history(proj.settings()) == []
    assert _clones(proj, request) == []
    assert _rehearsal(proj)["passed"] is True  # nothing left in the way of the next one
