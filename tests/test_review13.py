"""review13: `start --require-rehearsal` against what changed after a passing rehearsal: an
edited rehearse operation in the ledger (rows rewritten with sqlite3 behind the tool's back),
the configuration a release installs edited; real SQLite ledger and target, the real CLI."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from tests.upgrade_support import SCENARIOS, Project, make_project, seeded_db

DEPLOY = ('\n[deploy]\nreleases_dir = "releases"\ncurrent_link = "current"\n'
          'config_files = ["config/app.env"]\nconfig_from = "releases/{version}/config"\n')


def _project(tmp_path: Path, request: pytest.FixtureRequest, deploy: bool = False) -> Project:
    url = seeded_db(tmp_path, "sqlite", "app", request)
    base = tmp_path / "proj"
    if deploy:  # a release side with no commands: the rehearsal runs all of it
        for v in ("v2.5", "v2.6"):
            (base / "releases" / v / "config").mkdir(parents=True)
            (base / "releases" / v / "config" / "app.env").write_text(f"VERSION={v}\n")
        (base / "config").mkdir()
        (base / "config" / "app.env").write_text("VERSION=v2.5\n")
        (base / "current").symlink_to("releases/v2.5")
    return make_project(base, "sqlite", url, SCENARIOS["forward"],
                        extra=DEPLOY if deploy else "")


def _tamper(ledger: Path, old: str, new: str) -> int:
    """Rewrite ledger rows in place, as someone with write access to the file could."""
    db = sqlite3.connect(ledger)
    try:
        db.execute("DROP TRIGGER ledger_events_no_update")
        n = db.execute("UPDATE ledger_events SET payload = replace(payload, ?, ?) "
                       "WHERE stream LIKE 'ops/%'", (old, new)).rowcount
        db.commit()
        return n
    finally:
        db.close()


def test_an_edited_rehearsal_in_the_ledger_does_not_open_the_gate(
        tmp_path: Path, request: pytest.FixtureRequest) -> None:
    proj = _project(tmp_path, request)
    doc = proj.cli_json("rehearse", "--to", "v2.6")["rehearsal"]
    rehearsed = doc["fingerprint_digest"]
    conn = proj.target().connect(autocommit=True)  # production written to since
    conn.execute("INSERT INTO settings (key, value) VALUES ('late', 'x')")
    conn.commit()
    conn.close()
    drifted = proj.fingerprint().digest
    # refused, and this verified the ledger up to its head (the local checkpoint moves there)
    r = proj.cli("start", "--to", "v2.6", "--require-rehearsal")
    assert r.returncode == 2 and "the target changed since rehearsal" in r.stderr, r.stderr
    # the rehearsal's recorded clone fingerprint rewritten to the drifted production's
    assert _tamper(proj.dir / ".statekeeper" / "ledger.db", rehearsed, drifted) >= 1
    before = proj.applied_ids()
    r = proj.cli("start", "--to", "v2.6", "--require-rehearsal")
    assert r.returncode == 4, r.stdout + r.stderr  # a ledger integrity violation
    assert "hash mismatch" in r.stderr and "Traceback" not in r.stderr
    assert proj.applied_ids() == before


def test_the_configuration_a_release_installs_edited_after_the_rehearsal_closes_the_gate(
        tmp_path: Path, request: pytest.FixtureRequest) -> None:
    proj = _project(tmp_path, request, deploy=True)
    assert proj.cli_json("rehearse", "--to", "v2.6")["rehearsal"]["passed"] is True
    new = proj.dir / "releases" / "v2.6" / "config" / "app.env"
    new.write_text("VERSION=v2.6\nBROKER=https://evil.example\n")
    r = proj.cli("start", "--to", "v2.6", "--require-rehearsal")
    assert r.returncode == 2, r.stdout + r.stderr
    assert "no rehearsal of this plan" in r.stderr
    new.write_text("VERSION=v2.6\n")
    r = proj.cli("start", "--to", "v2.6", "--require-rehearsal")
    assert r.returncode == 0, r.stdout + r.stderr
    assert len(proj.applied_ids()) == 3  # it ran


@pytest.mark.parametrize("key", ["http", "rehearsal_http"])
def test_a_malformed_check_url_is_a_one_line_configuration_error(
        tmp_path: Path, request: pytest.FixtureRequest, key: str) -> None:
    proj = _project(tmp_path, request)
    bad = '"http://[::1"'
    check = (f'  {{ name = "api", http = {bad} }},\n' if key == "http" else
             f'  {{ name = "api", http = "http://127.0.0.1:9/", rehearsal_http = {bad} }},\n')
    toml = proj.config.read_text()
    head, sep, tail = toml.partition("checks = [\n")
    assert sep, toml
    proj.config.write_text(head + sep + check + tail)
    r = proj.cli("rehearse", "--to", "v2.6")
    assert r.returncode == 2, r.stdout + r.stderr
    assert r.stderr == (f"error: {proj.config}: [health] checks[0] {key} is not a URL: "
                        "Invalid IPv6 URL\n")


def test_a_command_check_with_a_relative_path_runs_in_the_project_directory_in_rehearsal(
        tmp_path: Path, request: pytest.FixtureRequest) -> None:
    proj = _project(tmp_path, request)
    (proj.dir / "bin").mkdir()
    (proj.dir / "bin" / "ok").write_text("#!/bin/sh\nexit 0\n")
    (proj.dir / "bin" / "ok").chmod(0o755)
    toml = proj.config.read_text()
    head, sep, tail = toml.partition("checks = [\n")
    proj.config.write_text(head + sep + '  { name = "app", command = "bin/ok", '
                           'rehearsal_command = "bin/ok" },\n' + tail)
    r = proj.cli("rehearse", "--to", "v2.6")
    assert r.returncode == 0, r.stdout + r.stderr
