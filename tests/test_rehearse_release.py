"""`statekeeper rehearse` with the release side and rehearsal variants: the release steps run
against a scratch releases directory with copies of the configuration files (the live
release, link and files stay byte for byte as they were, the live service keeps running), a
command or check with a rehearsal variant runs that variant against the clone, one without is
listed as not rehearsed; a real HTTP server (in a thread) and real commands."""

from __future__ import annotations

import http.server
import json
import os
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from statekeeper.errors import ConfigError
from tests.release_app import ask
from tests.upgrade_support import (
    HEALTH,
    SCENARIOS,
    Project,
    make_project,
    make_release_project,
    seeded_db,
)

NOTE = """#!{python}
import os, sys
with open({log!r}, "a") as f:
    f.write(" ".join([sys.argv[1], os.environ.get("STATEKEEPER_RELEASE_DIR", "-"),
                      os.environ["STATEKEEPER_DATABASE_URL"]]) + "\\n")
"""


def _note(d: Path) -> tuple[Path, Path]:
    """A real command that appends what it was given (its argument, the release directory,
    the database URL) to a log: the log says which of the operator's commands ran."""
    log = d / "commands.log"
    script = d / "note"
    script.write_text(NOTE.format(python=sys.executable, log=str(log)))
    script.chmod(0o755)
    return script, log


def _tree(root: Path) -> dict[str, Any]:
    """Everything under ``root`` as it is on disk: links (their target), files (bytes and
    mode), directories (mode); links are not followed."""
    out: dict[str, Any] = {}
    for dirpath, dirs, names in os.walk(root):
        for n in dirs + names:
            p = Path(dirpath) / n
            st = p.lstat()
            rel = str(p.relative_to(root))
            if p.is_symlink():
                out[rel] = ("link", os.readlink(p))
            elif p.is_dir():
                out[rel] = ("dir", st.st_mode)
            else:
                out[rel] = ("file", p.read_bytes(), st.st_mode, st.st_uid, st.st_gid)
    return out


def _live(p: Project) -> Any:
    return (_tree(p.dir / "releases"), os.readlink(p.dir / "current"),
            _tree(p.dir / "config"), (p.dir / "run" / "app.pid").read_text(), p.fingerprint())


def test_the_release_side_is_rehearsed_in_a_scratch_directory_and_the_live_one_is_untouched(
        tmp_path: Path, request: pytest.FixtureRequest) -> None:
    script, log = _note(tmp_path)
    commands = ('[[deploy.command]]\nname = "assets"\n'
                f'run = "{script} live-run"\nundo = "{script} live-undo"\n'
                f'rehearsal_run = "{script} rehearsal-run"\n'
                f'rehearsal_undo = "{script} rehearsal-undo"\n'
                '[[deploy.command]]\nname = "cache warm"\n'
                f'run = "{script} live-warm"\nundo = "true"\n')
    url = seeded_db(tmp_path, "sqlite", "app", request)
    p = make_release_project(tmp_path / "proj", "sqlite", url, SCENARIOS["forward"], request,
                             commands=commands)
    before = _live(p)

    out = p.cli_json("rehearse", "--to", "v2.6", "--keep")["rehearsal"]

    assert out["passed"] is True, out["problems"]
    assert _live(p) == before  # releases, link, configuration, the running service, data
    assert ask(p.port) == (200, {"version": "v2.5", "users": 3, "release_config": "v2.5"})
    assert out["not_rehearsed"] == [
        "health check 'api' (http): it would probe the live application (no rehearsal_http "
        "set)",
        "[deploy] stop and start: they act on the live service (no "
        "rehearsal_stop/rehearsal_start set)",
        "[[deploy.command]] 'cache warm': it acts on the live release (no "
        "rehearsal_run/rehearsal_undo set)"]
    assert out["variants"] == ["[[deploy.command]] 'assets': its rehearsal_run and "
                               "rehearsal_undo"]
    # the scratch release was laid out, switched, rolled back and switched again
    rel = out["release"]
    scratch = Path(rel["dir"])
    assert scratch.parent.parent == p.dir / ".statekeeper" / "rehearsals"
    steps = {name: [(s["name"], s["status"]) for s in ps["steps"]]
             for name, ps in out["passes"].items()}
    assert ("switch", "succeeded") in steps["forward"] and ("config", "succeeded") in \
        steps["forward"]
    assert steps["rollback"][:3] == [("undo:1", "succeeded"), ("unswitch", "succeeded"),
                                     ("unconfig", "succeeded")], steps["rollback"]
    assert os.readlink(rel["current_link"]) == "../releases/v2.6"  # after the second pass
    copy = Path(rel["config_files"][str(p.dir / "config" / "app.env")])
    assert copy.read_bytes() == (p.dir / "releases" / "v2.6" / "config" / "app.env"
                                 ).read_bytes()
    assert copy.stat().st_mode & 0o777 == 0o640  # the live file's mode, kept by the copy
    # only the variant ran, in the scratch release, against the clone
    lines = [ln.split(" ") for ln in log.read_text().splitlines()]
    assert [ln[0] for ln in lines] == ["rehearsal-run", "rehearsal-undo", "rehearsal-run"]
    assert {ln[1] for ln in lines} == {rel["releases_dir"] + "/v2.6"}
    assert {ln[2] for ln in lines} == {f"sqlite:///{scratch.parent / 'clone-app.db'}"}

    p.cli("rehearse", "--clean", check=True)
    assert not scratch.exists() and _live(p) == before
    # a variant that runs another command is not the one rehearsed
    p.config.write_text(p.config.read_text().replace("rehearsal-undo", "rehearsal-revert"))
    r = p.cli("start", "--to", "v2.6", "--require-rehearsal")
    assert r.returncode == 2 and "no rehearsal of this plan (" in r.stderr, r.stderr
    assert _live(p) == before


class _App(http.server.BaseHTTPRequestHandler):
    """A clone's application: answers ``/clone`` with the status the test sets, and
    remembers what it was asked."""

    status = 200
    asked: list[str] = []  # noqa: RUF012  (the server's shared record, reset per test)

    def log_message(self, *a: Any) -> None:
        pass

    def do_GET(self) -> None:
        type(self).asked.append(self.path)
        self.send_response(self.status)
        self.send_header("Content-Length", "0")
        self.end_headers()


@pytest.fixture
def clone_app() -> Iterator[int]:
    _App.asked, _App.status = [], 200
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _App)
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()


SMOKE = """#!{python}
import os, sqlite3, sys
url = os.environ["STATEKEEPER_DATABASE_URL"]
with open({log!r}, "a") as f:
    f.write(url + "\\n")
c = sqlite3.connect(url[len("sqlite:///"):])
sys.exit(0 if c.execute("SELECT count(*) FROM users").fetchone()[0] == 3 else 1)
"""


def test_checks_with_a_rehearsal_variant_run_it_against_the_clone(
        tmp_path: Path, request: pytest.FixtureRequest, clone_app: int) -> None:
    log = tmp_path / "smoke.log"
    smoke = tmp_path / "smoke"
    smoke.write_text(SMOKE.format(python=sys.executable, log=str(log)))
    smoke.chmod(0o755)
    # the live URLs and command would fail: only the variants may run
    health = HEALTH.replace("},\n]\n", "},\n" + (
        f'  {{ name = "api", http = "http://127.0.0.1:9/live", '
        f'rehearsal_http = "http://127.0.0.1:{clone_app}/clone" }},\n'
        '  { name = "web", http = "http://127.0.0.1:9/web" },\n'
        f'  {{ name = "smoke", command = "false", rehearsal_command = "{smoke}" }},\n'
        ']\nretries = 0\n'), 1)
    url = seeded_db(tmp_path, "sqlite", "app", request)
    p = make_project(tmp_path / "proj", "sqlite", url, SCENARIOS["forward"], health=health)
    before = p.fingerprint()

    out = p.cli_json("rehearse", "--to", "v2.6")["rehearsal"]

    assert out["passed"] is True, out["problems"]
    assert _App.asked == ["/clone", "/clone"]  # the upgrade and the upgrade again
    assert out["variants"] == ["health check 'api' (http): its rehearsal_http",
                               "health check 'smoke' (command): its rehearsal_command"]
    assert out["not_rehearsed"] == [
        "health check 'web' (http): it would probe the live application (no rehearsal_http "
        "set)"]
    clone = f"sqlite:///{p.dir / '.statekeeper' / 'rehearsals' / out['rehearsal_id']}"
    assert log.read_text().splitlines() == [f"{clone}/clone-app.db"] * 2
    health_step = next(s for s in out["passes"]["forward"]["steps"] if s["name"] == "health")
    assert health_step["status"] == "succeeded"

    _App.status = 503  # the clone's application is unhealthy: the upgrade would fail
    r = p.cli("rehearse", "--to", "v2.6")
    assert r.returncode == 1, r.stdout + r.stderr
    assert (f"health check 'api' failed after 1 attempt: GET http://127.0.0.1:{clone_app}"
            "/clone answered 503, expected 200") in r.stderr
    assert p.fingerprint() == before


@pytest.mark.parametrize(("snippet", "error"), [
    ('[health]\nchecks = [{ name = "a", http = "http://x/", rehearsal_http = "ftp://x/" }]',
     "[health] checks[0] rehearsal_http must be an http:// or https:// URL (not ftp://)"),
    ('[health]\nchecks = [{ sql = "SELECT 1", rehearsal_http = "http://x/" }]',
     "[health] checks[0] rehearsal_http is for http checks only"),
    ('[health]\nchecks = [{ command = "true", rehearsal_command = 5 }]',
     '[health] checks[0] rehearsal_command must be a string: rehearsal_command = "..."'),
    ('[health]\nchecks = [{ command = "true", rehearsal_command = "\'open" }]',
     "[health] checks[0] rehearsal_command"),
    ('[health]\nchecks = [{ command = "true", rehearsal_http = "http://x/" }]',
     "[health] checks[0] rehearsal_http is for http checks only"),
    ('[deploy]\nreleases_dir = "r"\nrehearsal_stop = "true"',
     "[deploy] rehearsal_start is not set: rehearsal_stop and rehearsal_start go together"),
    ('[deploy]\nreleases_dir = "r"\n[[deploy.command]]\nrun = "true"\nundo = "true"\n'
     'rehearsal_undo = "true"',
     "[[deploy.command]] #1 rehearsal_run is not set: rehearsal_run and rehearsal_undo go "
     "together"),
])
def test_a_bad_rehearsal_variant_is_refused_naming_its_key(tmp_path: Path, snippet: str,
                                                           error: str) -> None:
    from statekeeper.command import Settings

    cfg = tmp_path / "statekeeper.toml"
    cfg.write_text(f'[target]\nurl = "sqlite:///{tmp_path / "app.db"}"\n\n{snippet}\n')
    with pytest.raises(ConfigError) as e:
        Settings.load(str(cfg))
    assert f"{cfg}: {error}" in str(e.value) and "\n" not in str(e.value)


def test_a_bad_variant_exits_2_with_one_line(tmp_path: Path,
                                             request: pytest.FixtureRequest) -> None:
    url = seeded_db(tmp_path, "sqlite", "app", request)
    p = make_project(tmp_path / "proj", "sqlite", url, SCENARIOS["forward"])
    p.config.write_text(p.config.read_text().replace(
        'expect = "3" }', 'expect = "3", rehearsal_command = "./x" }'))
    r = p.cli("rehearse", "--to", "v2.6", "--json")
    assert r.returncode == 2
    assert r.stderr == (f"error: {p.config}: [health] checks[0] rehearsal_command is for "
                        "command checks only\n")
    assert json.loads(r.stdout)["error"]["exit_code"] == 2
