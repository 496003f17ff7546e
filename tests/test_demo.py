"""`statekeeper demo`, the README's first command: it must keep working, end to end, with no
server, and tell the story it promises."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.upgrade_support import ROOT


def _demo(directory: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("STATEKEEPER_FAILPOINT", None)
    env.pop("STATEKEEPER_CONFIG", None)
    return subprocess.run([sys.executable, "-m", "cli", "demo", "--dir", str(directory)],
                          capture_output=True, text=True, timeout=120, env=env, cwd=ROOT)


def test_demo_runs_the_three_upgrades_and_verifies(tmp_path: Path) -> None:
    d = tmp_path / "demo"
    p = _demo(d)
    assert p.returncode == 0, p.stdout + p.stderr
    out = p.stdout
    # 1: the failing third migration, rolled back with equal fingerprints
    assert "FAIL  migrate:003_position_currency: migration 003_position_currency failed" in out
    assert "no such column: symbl" in out
    before = next(ln for ln in out.splitlines() if "fingerprint before:" in ln).split()[-1]
    after_line = next(ln for ln in out.splitlines() if "fingerprint after:" in ln)
    assert before in after_line and after_line.endswith("(equal)")
    # 2: a real child process killed half-way
    assert "child process died with exit code 137" in out
    assert "was left open (in doubt)" in out
    # 3: resumed to completion, the dead process's lease taken over
    assert "took over the lease from dead pid" in out
    assert "   result: completed" in out
    # 4: the ledger verifies, and the exported run verifies offline
    assert "   ok: " in out and " events verified" in out
    export = next(d.glob("*.jsonl"))
    v = subprocess.run([sys.executable, "-m", "cli", "ledger", "verify-export", str(export)],
                       capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert v.returncode == 0, v.stderr
    assert (d / "app.db").exists() and (d / "statekeeper.toml").exists()


def test_demo_replaces_its_own_directory_but_nothing_else(tmp_path: Path) -> None:
    d = tmp_path / "demo"
    assert _demo(d).returncode == 0
    assert _demo(d).returncode == 0  # a previous demo's directory is replaced
    other = tmp_path / "precious"
    other.mkdir()
    (other / "data.txt").write_text("keep me")
    p = _demo(other)
    assert p.returncode == 2
    assert p.stderr == f"error: --dir {other}: not empty; choose a new directory\n"
    assert (other / "data.txt").read_text() == "keep me"
