"""`statekeeper report` (issue 10): replayed from the verified ledger, in four formats.

One ledger for the module: a real completed run and a real rolled-back run (two projects
sharing one ledger), plus events appended through the ledger's own API in the formats of the
issue-10 contract (operations in ``ops/<id>``, a run with ``--reason``/``--ticket``), some of
them hostile. Every test reads it; the tampered copy is made once too.
"""

from __future__ import annotations

import ast
import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from freezegun import freeze_time

import ledger
from cli.main import cli
from statekeeper import command
from statekeeper.plan import Plan
from tests.upgrade_support import ROOT, SCENARIOS, make_project, seed

HOSTILE_MIGRATION = "<script>alert('x')</script>"
FORMULA = "=cmd|' /C calc'!A0"
SYNTH_RUN = "20240101-120000-abcdef"
OPS = {"backup": "20240101-130000-000001", "migrate": "20240101-130000-000002",
       "crashed": "20240101-130000-000003"}
FILE_SHA = "9" * 64


def _append_synthetic(url: str, key: Path) -> None:
    E = ledger.NewEvent
    with ledger.Ledger(url, signer=ledger.load_signer(key), tool="test") as lg:
        plan = Plan(from_version="v2.6", to_version="v2.7", target="sqlite:///x.db").to_payload()
        lg.append(f"upgrade/{SYNTH_RUN}", E("run.created", {
            "run_id": SYNTH_RUN, **plan, "reason": "quarterly release", "ticket": "CHG-1001"}))
        lg.append(f"upgrade/{SYNTH_RUN}", E("run.resumed", {
            "host": "h2", "pid": 7, "mode": "forward", "state": "planned",
            "reason": "resumed after the window moved", "ticket": "CHG-1002"}))
        op = OPS["backup"]
        lg.append(f"ops/{op}", [
            E("op.created", {"op_id": op, "op": "backup.create", "target": "sqlite:///x.db",
                             "args": {"backup_id": op}, "reason": FORMULA,
                             "ticket": "INC-7", "confirmed": None, "version": "0.1.0"}),
            E("step.started", {"step": "backup", "kind": "backup", "backup_id": op,
                               "method": "sqlite"}),
            E("step.succeeded", {"step": "backup", "kind": "backup", "duration_ms": 12,
                                 "result": {"backup_id": op, "method": "sqlite", "size": 4096,
                                            "sha256": "a" * 64}}),
            E("op.ended", {"outcome": "succeeded", "duration_ms": 15}),
        ])
        op = OPS["migrate"]
        lg.append(f"ops/{op}", [
            E("op.created", {"op_id": op, "op": "migrate.up", "target": "sqlite:///x.db",
                             "args": {"to": HOSTILE_MIGRATION}, "confirmed": "--yes",
                             "version": "0.1.0"}),
            E("step.started", {"step": f"migrate:{HOSTILE_MIGRATION}", "kind": "migrate",
                               "migration": HOSTILE_MIGRATION, "checksum": "c" * 64,
                               "file_sha256": FILE_SHA}),
            E("step.succeeded", {"step": f"migrate:{HOSTILE_MIGRATION}", "kind": "migrate",
                                 "duration_ms": 3,
                                 "result": {"migration": HOSTILE_MIGRATION, "checksum": "c" * 64,
                                            "file_sha256": FILE_SHA, "execution_ms": 1}}),
            E("step.started", {"step": "migrate:002", "kind": "migrate", "migration": "002",
                               "checksum": "d" * 64, "file_sha256": "e" * 64}),
            E("step.failed", {"step": "migrate:002", "kind": "migrate", "duration_ms": 2,
                              "error": "no such column: <b>symbl</b>"}),
            E("op.ended", {"outcome": "failed", "error": "migration 002 failed",
                           "duration_ms": 9}),
        ])
        op = OPS["crashed"]
        lg.append(f"ops/{op}", E("op.created", {
            "op_id": op, "op": "backup.restore", "target": None, "args": {"backup_id": "b1"},
            "confirmed": "prompt", "version": "0.1.0"}))


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    base = tmp_path_factory.mktemp("report")
    url = f"sqlite:///{base}/ledger.db"
    key = base / "key.pem"
    runs = {}
    for name, outcome in (("forward", "completed"), ("restore", "rolled_back")):
        (base / f"{name}.db").touch()
        target = f"sqlite:///{base}/{name}.db"
        seed("sqlite", target)
        p = make_project(base / name, "sqlite", target, SCENARIOS[name], ledger_url=url,
                         key=str(key))
        r = p.cli("start", "--to", "v2.6")
        assert r.returncode in (0, 1), r.stderr
        runs[outcome] = command.status(p.settings()).run_id
        if name == "forward":
            project = p
    _append_synthetic(url, key)
    # the tampered copy: a real run's event edited in place, as an attacker with table
    # rights would (the triggers dropped first)
    bad = base / "tampered.db"
    src = sqlite3.connect(base / "ledger.db")
    dst = sqlite3.connect(bad)
    src.backup(dst)
    src.close()
    for (name,) in dst.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'"):
        dst.execute(f'DROP TRIGGER "{name}"')
    bad_seq = dst.execute(
        "SELECT min(seq) FROM ledger_events WHERE stream = ? AND type = 'step.succeeded'",
        (f"upgrade/{runs['rolled_back']}",)).fetchone()[0]
    dst.execute("UPDATE ledger_events SET payload = replace(payload, 'sqlite', 'SQLITE') "
                "WHERE seq = ?", (bad_seq,))
    dst.commit()
    dst.close()
    return {"base": base, "project": project, "runs": runs, "bad_url": f"sqlite:///{bad}",
            "bad_seq": bad_seq, "ledger_url": url}


def _report(world: dict[str, Any], fmt: str, *args: str, name: str | None = None,
            ledger_url: str | None = None) -> tuple[int, str, Path]:
    out = world["base"] / "out" / (name or f"report.{fmt}")
    out.parent.mkdir(exist_ok=True)
    pre = ["--config", str(world["project"].config)]
    if ledger_url:
        pre += ["--ledger", ledger_url]
    r = CliRunner().invoke(cli, [*pre, "report", "--format", fmt, "--out", str(out), *args])
    return r.exit_code, r.stdout + r.stderr, out


@pytest.fixture(scope="module")
def reports(world: dict[str, Any]) -> dict[str, Path]:
    out = {}
    for fmt in ("json", "csv", "html", "pdf"):
        code, text, path = _report(world, fmt)
        assert code == 0, text
        out[fmt] = path
    return out


def test_json_is_the_model_and_validates_against_the_published_schema(
    world: dict[str, Any], reports: dict[str, Path]
) -> None:
    doc = json.loads(reports["json"].read_text())
    schema = json.loads((ROOT / "docs" / "report.schema.json").read_text())
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker()).validate(doc)
    assert doc["schema_version"] == 1 and doc["integrity"]["ok"] is True
    by_id = {e["id"]: e for e in doc["entries"]}
    done, rb = by_id[world["runs"]["completed"]], by_id[world["runs"]["rolled_back"]]
    assert done["state"] == "completed" and done["backup"]["sha256"]
    assert [m["migration"] for m in done["migrations"]] == [
        "001_bump_qty", "002_orders", "003_user_status"]
    # absent in an older history is absent: the real runs record no file sha256, no ticket
    assert all(m["file_sha256"] is None and m["checksum"] for m in done["migrations"])
    assert done["reason"] is None and done["ticket"] is None
    assert done["who"]["user"] and done["who"]["host"]
    assert done["downtime"]["basis"] == "run"
    assert rb["rollback"]["verdict"] == "data identical"
    assert rb["rollback"]["fingerprint_before"] == rb["rollback"]["fingerprint_after"]
    assert any("no_such_column" in e["message"] for e in rb["errors"])
    synth = by_id[SYNTH_RUN]
    assert (synth["reason"], synth["ticket"]) == ("quarterly release", "CHG-1001")
    assert synth["sessions"][0]["ended"] == "crashed"  # no lease.released before the resume
    assert synth["sessions"][1]["ticket"] == "CHG-1002"
    ops = {e["id"]: e for e in doc["entries"] if e["type"] == "operation"}
    assert ops[OPS["backup"]]["outcome"] == "succeeded"
    assert ops[OPS["backup"]]["backup"]["size"] == 4096
    assert ops[OPS["migrate"]]["migrations"][0]["file_sha256"] == FILE_SHA
    assert ops[OPS["crashed"]]["outcome"] == "interrupted"
    s = doc["summary"]
    assert s["runs"]["completed"] == 1 and s["runs"]["rolled_back"] == 1
    assert s["operations"] == {"succeeded": 1, "failed": 1, "interrupted": 1, "unreadable": 0}
    assert doc["ledger"]["head"]["seq"] == doc["integrity"]["trusted_through_seq"]
    assert doc["ledger"]["keys"]


def test_replay_is_deterministic(world: dict[str, Any]) -> None:
    for fmt in ("json", "csv"):
        with freeze_time("2025-01-02T03:04:05Z"):
            a = _report(world, fmt, name=f"a.{fmt}")
            b = _report(world, fmt, name=f"b.{fmt}")
        assert a[0] == b[0] == 0
        assert a[2].read_bytes() == b[2].read_bytes()
    assert '"generated_at":"2025-01-02T03:04:05.000000+00:00"' in (
        world["base"] / "out" / "a.json").read_text()


def test_files_are_private(reports: dict[str, Path]) -> None:
    for path in reports.values():
        assert (path.stat().st_mode & 0o777) == 0o600, path


def test_html_escapes_hostile_payloads_and_is_self_contained(reports: dict[str, Path]) -> None:
    html = reports["html"].read_text()
    assert "&lt;script&gt;alert(" in html
    assert "<script" not in html.lower() and "<b>symbl" not in html
    assert "src=" not in html and "<link" not in html and "@import" not in html
    assert "@media print" in html and 'class="timeline"' in html


def test_csv_neutralises_formulas(reports: dict[str, Path]) -> None:
    import csv

    rows = list(csv.DictReader(reports["csv"].open(newline="")))
    backup_op = [r for r in rows if r["id"] == OPS["backup"]]
    assert backup_op and backup_op[0]["reason"] == "'" + FORMULA
    assert not any(v.startswith(("=", "+", "@")) for r in rows for v in r.values())
    # one row per step, the run's columns repeated
    assert sum(r["type"] == "run" for r in rows) >= 16


def _pdf_pages(path: Path) -> list[str]:
    pypdf = pytest.importorskip("pypdf")
    return [p.extract_text() for p in pypdf.PdfReader(str(path)).pages]


def test_pdf_reads_back(world: dict[str, Any], reports: dict[str, Path]) -> None:
    pages = _pdf_pages(reports["pdf"])
    text = "\n".join(pages)
    for run_id in world["runs"].values():
        assert run_id in text
    assert all(p.lstrip().startswith("Integrity: VERIFIED") for p in pages)


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def test_html_renders_in_headless_chromium(reports: dict[str, Path], tmp_path: Path) -> None:
    exe = _chromium()
    if exe is None:
        # the issue: skipped only where Chromium cannot be installed, never under CI
        if os.environ.get("CI") or os.environ.get("STATEKEEPER_FULL_SUITE"):
            pytest.fail("chromium is not installed (scripts/test installs Debian's chromium)")
        pytest.skip("chromium is not installed")
    png = tmp_path / "report.png"
    p = subprocess.run(
        [exe, "--headless", "--no-sandbox", "--disable-gpu", f"--screenshot={png}",
         "--window-size=1200,2000", "--enable-logging=stderr", "--v=0",
         f"--user-data-dir={tmp_path / 'profile'}", reports["html"].as_uri()],
        capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    console = [ln for ln in p.stderr.splitlines() if ":CONSOLE" in ln]
    assert not console, console


@pytest.mark.parametrize("fmt", ["json", "csv", "html", "pdf"])
def test_tampered_ledger_warns_and_exits_4(world: dict[str, Any], fmt: str) -> None:
    code, text, out = _report(world, fmt, name=f"bad.{fmt}", ledger_url=world["bad_url"])
    seq = world["bad_seq"]
    assert code == 4, text
    assert f"INTEGRITY VIOLATION: the ledger failed verification at seq {seq}" in text
    assert out.exists()
    if fmt == "pdf":
        pages = _pdf_pages(out)
        assert all(f"INTEGRITY VIOLATION at seq {seq}" in p for p in pages)
        return
    body = out.read_text()
    assert f"failed verification at seq {seq}" in body
    assert f"Only events before seq {seq} are trusted" in body
    if fmt == "json":
        doc = json.loads(body)
        assert doc["integrity"]["ok"] is False and doc["integrity"]["first_bad_seq"] == seq
        rb = next(e for e in doc["entries"] if e["id"] == world["runs"]["rolled_back"])
        assert rb["truncated"] is True and rb["state"] != "rolled_back"
        assert all(e["id"] != SYNTH_RUN for e in doc["entries"])  # appended after seq
    if fmt == "html":
        assert "WARNING: THIS LEDGER FAILED VERIFICATION." in body


def test_scope_and_time_zone(world: dict[str, Any]) -> None:
    run_id = world["runs"]["completed"]
    code, text, out = _report(world, "json", "--run", run_id, "--tz", "Asia/Kolkata",
                              name="one.json")
    assert code == 0, text
    doc = json.loads(out.read_text())
    assert [e["id"] for e in doc["entries"]] == [run_id]
    assert doc["timezone"] == "Asia/Kolkata" and doc["entries"][0]["started_at"].endswith("+05:30")
    code, text, out = _report(world, "json", "--until", "2000-01-01", name="none.json")
    assert code == 0 and json.loads(out.read_text())["entries"] == []


@pytest.mark.parametrize(("args", "needle"), [
    (["--format", "xml", "--out", "{d}/x"], "--format"),
    (["--format", "json", "--out", "{d}/x", "--since", "2025-02-01", "--until", "2025-01-01"],
     "--since"),
    (["--format", "json", "--out", "{d}/x", "--since", "yesterday"], "--since"),
    (["--format", "json", "--out", "{d}/x", "--run", "20990101-000000-ffffff"], "--run"),
    (["--format", "json", "--out", "{d}/x", "--tz", "Mars/Olympus"], "--tz"),
    (["--format", "json", "--out", "{d}/missing/x"], "--out"),
    (["--format", "json", "--out", "{d}"], "--out"),
])
def test_usage_errors_exit_2_with_one_line(world: dict[str, Any], args: list[str],
                                           needle: str) -> None:
    d = world["base"] / "out"
    d.mkdir(exist_ok=True)
    r = CliRunner().invoke(cli, ["--config", str(world["project"].config), "report",
                                 *[a.format(d=d) for a in args]])
    assert r.exit_code == 2, r.output
    err = r.stderr.strip()
    errors = [ln for ln in err.splitlines() if ln.lower().startswith("error:")]
    assert len(errors) == 1 and needle in errors[0], err


def test_model_is_pure() -> None:
    stdlib = set(sys.stdlib_module_names)
    for name in ("model.py", "ops.py", "text.py"):
        tree = ast.parse((ROOT / "statekeeper" / "report" / name).read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                mods = [a.name.split(".")[0] for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                mods = [node.module.split(".")[0]]
            else:
                continue
            assert set(mods) <= stdlib | {"__future__"}, (name, mods)
