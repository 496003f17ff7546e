"""`statekeeper demo`, the README's first command: it must keep working, end to end, with no
server, and tell the story it promises."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
from pathlib import Path

from statekeeper import command
from statekeeper.demo import FAKE_KEY
from statekeeper.replay import Run
from tests.upgrade_support import ROOT


def _demo(directory: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("STATEKEEPER_FAILPOINT", None)
    env.pop("STATEKEEPER_CONFIG", None)
    return subprocess.run([sys.executable, "-m", "cli", "demo", "--dir", str(directory)],
                          capture_output=True, text=True, timeout=120, env=env, cwd=ROOT)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_demo_runs_the_upgrades_and_verifies(tmp_path: Path) -> None:
    d = tmp_path / "demo"
    p = _demo(d)
    assert p.returncode == 0, p.stdout + p.stderr
    out = p.stdout
    lines = out.splitlines()
    # 1: the failing third migration, rolled back with equal fingerprints
    assert "FAIL  migrate:003_position_currency: migration 003_position_currency failed" in out
    assert "no such column: symbl" in out
    before = next(ln for ln in lines if "fingerprint before:" in ln).split()[-1]
    after_lines = [ln for ln in lines if "fingerprint after:" in ln]
    assert len(after_lines) == 2
    assert all(before in ln and ln.endswith("(equal)") for ln in after_lines)
    assert "the release side was never reached: current -> releases/v2.5" in out
    # 2: the deploy command fails after the switch; the release side goes back too
    assert "FAIL  command:1: deploy command 'warm quote cache' exited with status 1" in out
    assert "config/app.env restored byte for byte (sha256 " in out
    assert "equal to before)" in out and "DIFFERENT" not in out
    assert "   current -> releases/v2.5 again" in out
    # 3: a real child process killed half-way
    assert "child process died with exit code 137" in out
    assert "was left open (in doubt)" in out
    # 4: resumed to completion, the dead process's lease taken over
    assert "took over the lease from dead pid" in out
    assert "   result: completed" in out
    assert "current -> releases/v2.6; config/app.env is v2.6's" in out
    # 5: the ledger verifies, and the exported run verifies offline
    assert "   ok: " in out and " events verified" in out
    assert "the API key appears in neither the ledger nor the export: checked" in out
    export = next(d.glob("*.jsonl"))
    v = subprocess.run([sys.executable, "-m", "cli", "ledger", "verify-export", str(export)],
                       capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert v.returncode == 0, v.stderr
    assert (d / "app.db").exists() and (d / "statekeeper.toml").exists()
    # 6: the audit report, written into the demo's directory, its path printed last but one
    report = d / "report.html"
    # its three runs, the init and migrate.tag operations that set the project up, and the
    # rehearsal of the fixed upgrade (on a copy of app.db, which stayed as it was)
    assert f"   wrote {report}" in out and "ledger verified: 6 runs and operations" in out
    assert re.search(r"   rehearsal \S+ on a copy of app\.db: passed \(upgrade \d+ ms, rollback "
                     r"\d+ ms, fingerprint equal, upgrade again \d+ ms\); app\.db untouched", out)
    assert ("   not rehearsed: [[deploy.command]] 'warm quote cache': it acts on the live "
            "release (no rehearsal_run/rehearsal_undo set)") in out
    html = report.read_text()
    assert "Integrity: VERIFIED" in html and FAKE_KEY not in html
    assert (report.stat().st_mode & 0o777) == 0o600


def test_demo_rolls_the_release_back_then_deploys_it_and_keeps_the_key_out(
        tmp_path: Path) -> None:
    d = tmp_path / "demo"
    p = _demo(d)
    assert p.returncode == 0, p.stdout + p.stderr
    live = d / "config" / "app.env"
    v25 = (d / "releases/v2.5/config/app.env").read_bytes()
    v26 = (d / "releases/v2.6/config/app.env").read_bytes()
    assert FAKE_KEY.encode() in v25 and b"RELEASE=v2.5" in v25 and v25 != v26
    # the end state: v2.6's code and configuration are live, the file keeps its mode
    assert os.readlink(d / "current") == "releases/v2.6"
    assert live.read_bytes() == v26
    assert live.stat().st_mode & 0o777 == 0o640
    assert (d / "releases/v2.6/quote-cache.txt").exists()  # the deploy command ran
    s = command.Settings.load(str(d / "statekeeper.toml"))
    runs = [r for r in command.history(s) if isinstance(r, Run)]  # in the order created
    assert [r.state for r in runs] == ["rolled_back", "rolled_back", "completed"]
    first, second, third = runs
    # 1: the failure came before the release side; nothing of it to undo
    assert not {"config", "switch", "unconfig", "unswitch"} & {x.kind for x in first.steps}
    # 2: switched, then put back in reverse order
    assert [x.kind for x in second.phase_steps()] == [
        "undo", "unswitch", "unconfig", "revert", "revert", "revert", "compare", "recheck"]
    # each run's snapshot is the original live file, byte for byte: what run 2 restored (and
    # what run 3 started from, so run 2 did restore it)
    for r in runs:
        [copy] = (d / ".statekeeper" / "runs" / r.run_id / "snapshot").iterdir()
        assert copy.read_bytes() == v25, r.run_id
        assert copy.stat().st_mode & 0o777 == 0o600
    snap = third.succeeded("snapshot")
    assert snap is not None and (snap.result or {}).get("link_target") == "releases/v2.5"
    # the key is in neither the ledger's database nor the export (their bytes)
    ledger_files = list((d / ".statekeeper").glob("ledger.db*"))
    assert ledger_files
    export = next(d.glob("*.jsonl"))
    for f in [*ledger_files, export]:
        assert FAKE_KEY.encode() not in f.read_bytes(), f
    # the sha256 the narration shows as restored is the original file's
    line = next(ln for ln in p.stdout.splitlines() if "restored byte for byte (sha256" in ln)
    assert f"(sha256 {_sha(v25)[:16]}, equal to before)" in line
