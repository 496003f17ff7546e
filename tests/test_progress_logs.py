"""What the operator sees while a run works and what a log shipper receives: the progress
display on a terminal and plain lines elsewhere, ``-q``, ``NO_COLOR``; ``-v``,
``--log-format json`` and ``--log-file`` (0600); secrets masked in both formats."""

from __future__ import annotations

import io
import json
import logging
import stat
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from cli import logs as cli_logs
from cli.main import cli
from cli.progress import Progress
from statekeeper import children, logs, progress
from statekeeper.backups import manager_for
from tests.upgrade_support import GOOD, Project, make_project, seed, seeded_db


def project(tmp_path: Path) -> Project:
    url = f"sqlite:///{tmp_path / 'app.db'}"
    seed("sqlite", url)
    return make_project(tmp_path / "proj", "sqlite", url, dict(GOOD))


def run(proj: Project, *args: str) -> Result:
    r = CliRunner(env={"STATEKEEPER_CONFIG": None, "STATEKEEPER_FAILPOINT": None}).invoke(
        cli, [*args[:-3], "--config", str(proj.config), *args[-3:]], prog_name="statekeeper")
    assert r.exception is None or isinstance(r.exception, SystemExit), r.exception
    return r


def test_json_log_file_is_private_and_names_run_and_step(tmp_path: Path) -> None:
    proj = project(tmp_path)
    log = tmp_path / "statekeeper.jsonl"
    r = run(proj, "-v", "--log-format", "json", "--log-file", str(log), "start", "--to", "v2.6")
    assert r.exit_code == 0, r.output
    assert stat.S_IMODE(log.stat().st_mode) == 0o600
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert records and all({"ts", "level", "logger", "message"} <= set(x) for x in records)
    run_id = r.stdout.splitlines()[-1].split()[1].rstrip(":")
    ended = [x for x in records if x.get("step") == "migrate:002_orders"
             and x["message"].startswith("step migrate:002_orders succeeded in ")]
    assert len(ended) == 1 and ended[0]["run_id"] == run_id
    assert ended[0]["logger"] == "statekeeper.runner" and ended[0]["level"] == "INFO"
    assert any(x["message"].startswith("lease on ") for x in records)
    # -v: the same records on stderr, one JSON object per line
    assert [json.loads(line)["message"] for line in r.stderr.splitlines()] == [
        x["message"] for x in records]


def test_quiet_prints_only_the_outcome(tmp_path: Path) -> None:
    proj = project(tmp_path)
    r = run(proj, "-q", "start", "--to", "v2.6")
    assert r.exit_code == 0, r.output
    assert r.stderr == ""
    assert len(r.stdout.splitlines()) == 1 and r.stdout.endswith(": completed\n")


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_secrets_are_masked_in_both_formats(tmp_path: Path, fmt: str) -> None:
    log = tmp_path / "log"
    logs.register_secret("tok-4f9a1c")
    cli_logs.configure(verbose=2, fmt=fmt, log_file=log)
    try:
        # a real child tool, its argv logged as it is started
        children.run(["true", "--dbname=postgresql://bob:hunter2x@db/app?sslpassword=k3y",
                      "host=db password='pa ss' user=bob", "PGPASSWORD=hunter2x"], timeout=10)
        lg = logging.getLogger("statekeeper.test")
        lg.info("token %s in a message", "tok-4f9a1c")
        try:
            raise ValueError("connect to postgresql://bob:hunter2x@db/app failed")
        except ValueError:
            lg.exception("it failed")
    finally:
        cli_logs.reset()
    text = log.read_text()
    for secret in ("hunter2x", "k3y", "pa ss", "tok-4f9a1c"):
        assert secret not in text, (secret, text)
    assert "postgresql://bob:***@db/app?sslpassword=***" in text
    assert "password=***" in text and "PGPASSWORD=***" in text
    assert "token *** in a message" in text
    if fmt == "json":
        lines = [json.loads(x) for x in text.splitlines()]
        assert lines[-1]["message"] == "it failed" and "ValueError" in lines[-1]["exc"]


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def feed(p: Progress) -> None:
    p("step.started", {"step": "backup", "kind": "backup"})
    p.task_started("t1", "pg_dump", None, "bytes")
    p.task_advanced("t1", 2_500_000, None)
    p.task_ended("t1")
    p("step.succeeded", {"step": "backup", "kind": "?", "result": {}, "duration_ms": 1500})
    p("step.failed", {"step": "migrate:003", "kind": "migrate", "error": "boom",
                      "duration_ms": 12})
    p.close()


def test_progress_colours_on_a_terminal_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setenv("TERM", "xterm-256color")
    tty = Tty()
    feed(Progress(tty, quiet=False))
    out = tty.getvalue()
    assert "\x1b[32mok\x1b[0m" in out and "\x1b[1;31mFAIL\x1b[0m" in out
    assert "pg_dump" in out and "2.5 MB" in out  # the live display, while the step ran

    monkeypatch.setenv("NO_COLOR", "1")
    tty = Tty()
    feed(Progress(tty, quiet=False))
    assert "\x1b[32m" not in tty.getvalue() and "\x1b[1;31m" not in tty.getvalue()

    plain = io.StringIO()  # a pipe: the narrated lines, nothing else
    feed(Progress(plain, quiet=False))
    assert plain.getvalue().splitlines() == [
        "    ok    backup  [1.5 s]", "    FAIL  migrate:003: boom  [12 ms]"]


class Recorded:
    """A statekeeper.progress.Reporter that keeps what it was told."""

    def __init__(self) -> None:
        self.labels: dict[str, tuple[str, str]] = {}
        self.last: dict[str, tuple[int, int | None]] = {}

    def task_started(self, key: str, label: str, total: int | None, unit: str) -> None:
        self.labels[key] = (label, unit)

    def task_advanced(self, key: str, done: int, total: int | None) -> None:
        self.last[key] = (done, total)

    def task_ended(self, key: str) -> None:
        pass

    def final(self) -> dict[str, tuple[str, int, int | None]]:
        return {label: (unit, *self.last.get(k, (0, None)))
                for k, (label, unit) in self.labels.items()}


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_backup_reports_its_progress_table_by_table(tmp_path: Path, backend: str,
                                                      request: pytest.FixtureRequest) -> None:
    url = seeded_db(tmp_path, backend, "prog", request)
    proj = make_project(tmp_path / "proj", backend, url, {})
    cfg = proj.settings().config
    rec = Recorded()
    with progress.reporting(rec):
        manager_for(cfg, proj.target()).create("b1")
    seen = rec.final()
    # every table, with the rows read (the seed: 3 users, 4 positions, 2 settings)
    assert seen["fingerprint"] == ("tables", 3, 3)
    assert seen["  users"] == ("rows", 3, None) and seen["  positions"] == ("rows", 4, None)
    tool = "pg_dump" if backend == "postgresql" else "copy"
    assert tool in seen
    if backend == "sqlite":
        assert seen["copy"][0] == "pages" and seen["copy"][1] == seen["copy"][2] > 0
