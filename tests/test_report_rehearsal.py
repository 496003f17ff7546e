"""The report shows the rehearsal next to the run (issue 13): real rehearsals on real SQLite
files, real runs after them, one shared ledger, read by every renderer; a tampered rehearsal
fails the report's verification; an export proves the section's figures offline.

The ledger, in order: a rehearsal whose down part loses data (it fails), then that plan's run
started without --require-rehearsal; a passing rehearsal of another project's plan, then its
run started with --require-rehearsal. The second project has a command health check, which a
rehearsal cannot run.
"""

from __future__ import annotations

import csv
import json
import sqlite3
import subprocess
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from cli.main import cli
from statekeeper.opreplay import Operation
from statekeeper.ops import scan_ops
from tests.independent_verifier import verify
from tests.test_report import _chromium, _pdf_pages
from tests.upgrade_support import GOOD, HEALTH, ROOT, Project, make_project, seed

COMMAND_CHECK = HEALTH.replace("\n]\n", '\n  { name = "app smoke", command = "true" },\n]\n')
LOSSY = {**GOOD, "002_orders.sql": "UPDATE positions SET qty = 0;\n" + GOOD["002_orders.sql"]}


def _sk(p: Project, *args: str, code: int = 0) -> str:
    r = CliRunner().invoke(cli, ["--config", str(p.config), *args])
    assert r.exit_code == code, r.output
    return r.output


def _rehearsals(p: Project) -> list[Operation]:
    with p.settings().open_ledger(signing=False) as lg:
        return [o for o in scan_ops(lg) if isinstance(o, Operation) and o.op == "rehearse"]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    base = tmp_path_factory.mktemp("report-rehearsal")
    url, key = f"sqlite:///{base}/ledger.db", str(base / "key.pem")
    projects = {}
    for name, migrations, health in (("lossy", LOSSY, HEALTH), ("good", GOOD, COMMAND_CHECK)):
        (base / f"{name}.db").touch()
        seed("sqlite", f"sqlite:///{base}/{name}.db")
        projects[name] = make_project(base / name, "sqlite", f"sqlite:///{base}/{name}.db",
                                      migrations, ledger_url=url, key=key, health=health)
    lossy, good = projects["lossy"], projects["good"]
    from statekeeper import command

    runs = {}
    _sk(lossy, "rehearse", "--to", "v2.6", code=1)
    _sk(lossy, "start", "--to", "v2.6")  # not required: it runs anyway
    runs["lossy"] = command.status(lossy.settings()).run_id
    _sk(good, "rehearse", "--to", "v2.6")
    _sk(good, "start", "--to", "v2.6", "--require-rehearsal")
    runs["good"] = command.status(good.settings()).run_id
    failed, passed = _rehearsals(good)
    out = base / "out"
    out.mkdir()
    reports = {}
    for fmt in ("json", "csv", "html", "pdf"):
        reports[fmt] = out / f"report.{fmt}"
        _sk(good, "report", "--format", fmt, "--out", str(reports[fmt]))
    return {"base": base, "projects": projects, "runs": runs, "failed": failed,
            "passed": passed, "reports": reports, "ledger": base / "ledger.db"}


def _entries(path: Path) -> dict[str, Any]:
    return {e["id"]: e for e in json.loads(path.read_text())["entries"]}


def test_json_shows_the_rehearsal_next_to_the_run_and_validates(world: dict[str, Any]) -> None:
    doc = json.loads(world["reports"]["json"].read_text())
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads((ROOT / "docs" / "report.schema.json").read_text())
    jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker()).validate(doc)
    by_id = {e["id"]: e for e in doc["entries"]}
    passed = world["passed"]

    rh = by_id[world["runs"]["good"]]["rehearsal"]
    assert (rh["required"], rh["accepted"], rh["compared"]) == (True, passed.op_id,
                                                                 passed.op_id)
    assert rh["verdict"] == "required and accepted by start --require-rehearsal"
    assert rh["drift"] is False and rh["fingerprint_cloned"] == rh["fingerprint_at_start"]
    [r] = rh["rehearsals"]  # the lossy project's rehearsal is another plan
    assert r["passed"] is True and r["clone"]["method"] == "copy" and r["lossy"] == []
    assert [p["pass"] for p in r["passes"]] == ["forward", "rollback", "forward again"]
    assert r["compare"] == {"equal": True, "differences": []}
    # the operator's estimate against what it took, step by step
    timed = {t["step"]: t for t in rh["timings"]}
    for name in ("backup", "migrate:001_bump_qty", "migrate:002_orders",
                 "migrate:003_user_status", "health"):
        assert isinstance(timed[name]["rehearsed_ms"], int), name
        assert isinstance(timed[name]["run_ms"], int) and timed[name]["in_run"], name
    run_steps = {s["name"]: s["duration_ms"] for s in by_id[world["runs"]["good"]]["steps"]}
    assert all(timed[n]["run_ms"] == run_steps[n] for n in timed if timed[n]["in_run"])
    forward = next(p for p in r["passes"] if p["pass"] == "forward")
    assert rh["rehearsed_ms"] == forward["ms"] and isinstance(rh["run_ms"], int)
    assert rh["not_rehearsed"] == [
        "health check 'app smoke' (command): it would probe the live application"
        " (no rehearsal_command set)"]
    # the rehearse operation's own entry carries the same rehearsal
    assert by_id[passed.op_id]["rehearsal"] == r

    lossy = by_id[world["runs"]["lossy"]]["rehearsal"]
    assert (lossy["required"], lossy["accepted"]) == (False, None)
    assert lossy["verdict"] == ("not required; --require-rehearsal would have refused: the "
                                f"last rehearsal, {world['failed'].op_id}, did not pass")
    [bad] = lossy["rehearsals"]
    assert bad["passed"] is False and bad["outcome"] == "failed"
    assert bad["lossy"] == ["002_orders"]
    assert bad["compare"]["equal"] is False and bad["compare"]["differences"]
    assert any("does not give back the database" in p for p in bad["problems"])
    # other operations have none
    assert all(e["rehearsal"] is None for e in doc["entries"]
               if e["type"] == "operation" and e["op"] != "rehearse")


def test_a_run_in_scope_shows_rehearsals_out_of_scope(world: dict[str, Any]) -> None:
    out = world["base"] / "out" / "one.json"
    _sk(world["projects"]["good"], "report", "--format", "json", "--out", str(out), "--run",
        world["runs"]["good"])
    [entry] = _entries(out).values()
    assert entry["rehearsal"]["accepted"] == world["passed"].op_id


def test_csv_carries_the_rehearsal_on_the_run_rows(world: dict[str, Any]) -> None:
    rows = list(csv.DictReader(world["reports"]["csv"].open(newline="")))
    good = [r for r in rows if r["id"] == world["runs"]["good"]]
    assert {(r["rehearsal_id"], r["rehearsal_required"], r["rehearsal_passed"],
             r["rehearsal_clone_method"]) for r in good} == {
        (world["passed"].op_id, "true", "true", "copy")}
    migrate = next(r for r in good if r["step"] == "migrate:002_orders")
    assert migrate["step_rehearsed_ms"].isdigit() and migrate["step_duration_ms"].isdigit()
    assert "app smoke" in migrate["rehearsal_not_rehearsed"]
    lossy = [r for r in rows if r["id"] == world["runs"]["lossy"]]
    assert {(r["rehearsal_lossy"], r["rehearsal_passed"]) for r in lossy} == {
        ("002_orders", "false")}
    op = [r for r in rows if r["id"] == world["passed"].op_id]
    assert {r["step"] for r in op} >= {"clone", "forward", "rollback", "compare"}


def test_html_shows_it_and_renders_in_chromium(world: dict[str, Any], tmp_path: Path) -> None:
    html = world["reports"]["html"].read_text()
    section = html.split(f'id="rehearsal-{world["runs"]["good"]}"', 1)[1].split("</section>")[0]
    assert "required and accepted by start --require-rehearsal" in section
    assert world["passed"].op_id in section and "(the one accepted)" in section
    assert "copy: a SQLite file: copied with the online backup API" in section
    assert "app smoke" in section and "migrate:002_orders" in section
    lossy = html.split(f'id="rehearsal-{world["runs"]["lossy"]}"', 1)[1].split("</section>")[0]
    assert "002_orders" in lossy and "did not pass" in lossy
    exe = _chromium()
    if exe is None:
        pytest.skip("chromium is not installed")
    png = tmp_path / "r.png"
    p = subprocess.run(
        [exe, "--headless", "--no-sandbox", "--disable-gpu", f"--screenshot={png}",
         "--window-size=1200,3000", "--enable-logging=stderr", "--v=0",
         f"--user-data-dir={tmp_path / 'profile'}", "--no-first-run",
         "--no-default-browser-check", "--disable-extensions",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         world["reports"]["html"].as_uri()], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [ln for ln in p.stderr.splitlines() if ":CONSOLE" in ln]


def test_pdf_shows_it(world: dict[str, Any]) -> None:
    text = " ".join(" ".join(_pdf_pages(world["reports"]["pdf"])).split())
    assert "required and accepted by start --require-rehearsal" in text
    assert "(the one accepted)" in text and world["passed"].op_id in text
    assert "Lossy down parts 002_orders" in text
    assert "--require-rehearsal would have refused" in text


def test_a_tampered_rehearsal_fails_verification(world: dict[str, Any]) -> None:
    """The rehearsal's forward pass made to look faster, in place, as someone with table
    rights would: the report says the ledger failed verification at that event and shows
    neither the rehearsal nor the run after it; the run before keeps its own section."""
    bad = world["base"] / "tampered.db"
    src, dst = sqlite3.connect(world["ledger"]), sqlite3.connect(bad)
    src.backup(dst)
    src.close()
    for (name,) in dst.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'"):
        dst.execute(f'DROP TRIGGER "{name}"')
    stream = f"ops/{world['passed'].op_id}"
    seq, payload = dst.execute(
        "SELECT seq, payload FROM ledger_events WHERE stream = ? AND type = 'step.succeeded' "
        "AND payload LIKE '%\"step\":\"forward\"%'", (stream,)).fetchone()
    forged = json.loads(payload)
    forged["result"]["ms"] = 1
    dst.execute("UPDATE ledger_events SET payload = ? WHERE seq = ?",
                (json.dumps(forged, sort_keys=True, separators=(",", ":")), seq))
    dst.commit()
    dst.close()
    for fmt in ("json", "html"):  # every format's violation display: tests/test_report.py
        out = world["base"] / "out" / f"bad.{fmt}"
        r = CliRunner().invoke(cli, ["--config", str(world["projects"]["good"].config),
                                     "--ledger", f"sqlite:///{bad}", "report", "--format", fmt,
                                     "--out", str(out)])
        assert r.exit_code == 4, r.output
        assert f"failed verification at seq {seq}" in r.stderr
    by_id = _entries(world["base"] / "out" / "bad.json")
    assert world["runs"]["good"] not in by_id  # recorded after the bad seq
    cut = by_id[world["passed"].op_id]  # its events before the bad seq only, said so
    assert cut["truncated"] is True and cut["outcome"] == "interrupted"
    assert cut["rehearsal"]["passed"] is False  # the forged pass is not shown: in doubt
    assert [(p["pass"], p["outcome"], p["ms"]) for p in cut["rehearsal"]["passes"]] == [
        ("forward", "open", None)]
    assert by_id[world["runs"]["lossy"]]["rehearsal"]["rehearsals"][0]["lossy"] == ["002_orders"]


def test_an_export_proves_the_section_offline(world: dict[str, Any]) -> None:
    """The independent verifier (written from docs/compliance.md, no statekeeper code)
    accepts the export; the rehearsal's figures are the export's events at the seqs the
    report cites."""
    export = world["base"] / "audit.jsonl"
    _sk(world["projects"]["good"], "ledger", "export", "--out", str(export))
    ok, seq, reason = verify(str(export))
    assert ok, (seq, reason)
    events = {e["seq"]: e for e in map(json.loads, export.read_text().splitlines()[1:])
              if "seq" in e}
    r = _entries(world["reports"]["json"])[world["runs"]["good"]]["rehearsal"]["rehearsals"][0]
    first, last = r["seqs"]
    assert events[first]["type"] == "op.created" and events[last]["type"] == "op.ended"
    ops = [json.loads(events[s]["payload"]) if isinstance(events[s]["payload"], str)
           else events[s]["payload"] for s in range(first, last + 1)
           if events[s]["stream"] == f"ops/{r['id']}"]
    forward = next(p for p in ops if p.get("step") == "forward" and "result" in p)
    assert forward["result"]["ms"] == r["passes"][0]["ms"]
    clone = next(p for p in ops if p.get("step") == "clone" and "result" in p)
    assert clone["result"]["fingerprint_digest"] == r["clone"]["fingerprint_digest"]
