"""examples/ansible/upgrade.yml (issue 12), run by the real ansible-playbook: three hosts
(``ansible_connection=local``: three application directories, each with its own PostgreSQL
target database), one shared PostgreSQL ledger on the same throwaway cluster, passed to
statekeeper through the environment as the playbook does. The second host's upgrade fails
and rolls back: the rollout stops there, so the third host is never touched.

One playbook run for all the claims: ansible-playbook costs seconds of start-up."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from cli.main import cli
from tests.pgcluster import PgCluster
from tests.upgrade_support import GOOD, ROOT, SCENARIOS, Project, make_project, seed

PLAYBOOK = ROOT / "examples" / "ansible" / "upgrade.yml"


def _sk(p: Project, *args: str) -> Result:
    return CliRunner().invoke(cli, ["--config", str(p.config), *args])


def _ansible_env(base: Path) -> dict[str, str]:
    """No fact gathering, no interpreter discovery, no retry files, nothing in ~/.ansible."""
    env = dict(os.environ)
    env.pop("STATEKEEPER_FAILPOINT", None)
    env.update({
        "PYTHONPATH": str(ROOT),
        "ANSIBLE_HOME": str(base / "ansible-home"),
        "ANSIBLE_LOCAL_TEMP": str(base / "ansible-tmp"),
        "ANSIBLE_CONFIG": str(base / "none.cfg"),
        "ANSIBLE_GATHERING": "explicit",
        "ANSIBLE_PYTHON_INTERPRETER": sys.executable,
        "ANSIBLE_RETRY_FILES_ENABLED": "false",
        "ANSIBLE_HOST_KEY_CHECKING": "false",
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_FORKS": "1",
        "ANSIBLE_DEPRECATION_WARNINGS": "false",
        "ANSIBLE_LOCALHOST_WARNING": "false",
    })
    return env


def test_rollout_one_host_at_a_time_stops_at_the_first_rollback(
    pg_cluster: PgCluster, tmp_path: Path
) -> None:
    playbook = shutil.which("ansible-playbook")
    if playbook is None:
        pytest.fail("ansible-playbook not found: pip install 'statekeeper[test]' (ansible-core)")
    ledger_db = pg_cluster.createdb("ledger")
    ledger_url = pg_cluster.sqlalchemy_url(ledger_db)
    key = tmp_path / "ledger-key.pem"
    hosts: dict[str, Project] = {}
    for name, migrations in (("h1", GOOD), ("h2", SCENARIOS["revert"]), ("h3", GOOD)):
        url = pg_cluster.url(pg_cluster.createdb(name))
        seed("postgresql", url)
        hosts[name] = p = make_project(tmp_path / name, "postgresql", url, migrations,
                                       ledger_url=ledger_url, key=str(key), backup=False)
        # the playbook's environment must be what names the shared ledger
        cfg = p.config.read_text().replace(ledger_url, "sqlite:///.statekeeper/not-this.db")
        p.config.write_text(cfg)
    untouched = hosts["h3"].fingerprint().digest

    inventory = tmp_path / "inventory.ini"
    inventory.write_text("[app]\n" + "".join(
        f"{n} ansible_connection=local app_dir={p.dir}\n" for n, p in hosts.items()))
    extra = {"version": "v2.6", "ticket": "CHG-12", "ledger_url": ledger_url,
             "ledger_key": str(key), "statekeeper": [sys.executable, "-m", "cli"],
             "reports_dir": str(tmp_path / "reports")}
    r = subprocess.run([playbook, "-i", str(inventory), str(PLAYBOOK), "-e", json.dumps(extra)],
                       cwd=tmp_path, env=_ansible_env(tmp_path), capture_output=True,
                       text=True, timeout=300)
    out = r.stdout + r.stderr
    assert r.returncode == 2, out  # ansible-playbook: a host failed
    recap = {ln.split()[0]: ln for ln in r.stdout.splitlines() if ": ok=" in ln}
    assert set(recap) == {"h1", "h2"}, out  # h3 was never reached
    assert "changed=1" in recap["h1"] and "failed=0" in recap["h1"], out
    assert "failed=1" in recap["h2"], out
    assert "exited 1 (the upgrade failed and was rolled back cleanly)" in out, out

    import ledger
    from statekeeper.replay import Run
    from statekeeper.upgrade import scan_runs

    with contextlib.closing(ledger.Ledger(ledger_url, create=False)) as lg:
        runs = [x for x in scan_runs(lg) if isinstance(x, Run)]
    assert [(run.plan.target, run.state) for run in runs] == [
        (hosts["h1"].target().display, "completed"), (hosts["h2"].target().display,
                                                      "rolled_back")]
    assert runs[0].created_at < runs[1].created_at
    assert hosts["h3"].fingerprint().digest == untouched
    assert hosts["h3"].applied_ids() == []

    verify = _sk(hosts["h3"], "--ledger", ledger_url, "ledger", "verify")
    assert verify.exit_code == 0, verify.stderr
    for name, run in zip(("h1", "h2"), runs, strict=True):
        html = tmp_path / "reports" / name / f"report-{run.run_id}.html"
        assert run.run_id in html.read_text()
    assert not (tmp_path / "reports" / "h3").exists()

    # what the playbook takes for "already at the version" (ok on a re-run), from start --json
    again = _sk(hosts["h1"], "--ledger", ledger_url, "start", "--json", "--to", "v2.6")
    doc = json.loads(again.stdout)
    assert again.exit_code == 2 and "already tagged v2.6" in doc["error"]["message"], doc
