"""A small real application for the release tests: a Python HTTP server, started from the
release directory ``current`` points to, that reads its configuration file and the database and
answers ``/health`` with its version. ``bin/appctl start|stop`` is its service manager (both
idempotent, as systemctl is); ``releases/vX/app.py`` is the code of each version.

The server is a real process: tests stop it through :func:`stop_app` (a finalizer) whatever
statekeeper did, even after statekeeper was killed.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

APP = r'''
import http.server, json, os, sys
VERSION = {version!r}
HEALTHY = {healthy!r}
NEEDS = {needs!r}
base = os.getcwd()
conf = {{}}
for line in open(os.path.join(base, "config", "app.env")):
    line = line.strip()
    if line and not line.startswith("#"):
        k, _, v = line.partition("=")
        conf[k] = v
def users():
    url = conf["DATABASE"]
    if url.startswith("sqlite:///"):
        import sqlite3
        c = sqlite3.connect(url[len("sqlite:///"):])
    else:
        import psycopg
        c = psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://"))
    try:
        n = c.execute("SELECT count(*) FROM users").fetchone()[0]
        for table in NEEDS:
            c.execute(f"SELECT count(*) FROM {{table}}").fetchone()
        return n
    finally:
        c.close()
class H(http.server.BaseHTTPRequestHandler):
    def log_message(self, *a):
        pass
    def do_GET(self):
        try:
            n = users()
            ok = HEALTHY and conf.get("RELEASE") == VERSION
            body = {{"version": VERSION, "users": n, "release_config": conf.get("RELEASE")}}
        except Exception as e:
            ok, body = False, {{"version": VERSION, "error": str(e)}}
        data = json.dumps(body).encode()
        self.send_response(200 if ok else 503)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
http.server.ThreadingHTTPServer(("127.0.0.1", int(conf["PORT"])), H).serve_forever()
'''

APPCTL = r'''#!{python}
"""appctl start|stop: the application's service manager (idempotent, like systemctl)."""
import os, signal, socket, subprocess, sys, time
base = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pidfile = os.path.join(base, "run", "app.pid")
port = int(dict(l.strip().split("=", 1) for l in open(os.path.join(base, "config", "app.env"))
                if "=" in l)["PORT"])
def alive():
    try:
        pid = int(open(pidfile).read())
        # a killed server nobody has reaped yet is a zombie: dead, though kill(pid, 0) works
        if open(f"/proc/{{pid}}/stat").read().rsplit(")", 1)[1].split()[0] == "Z":
            return None
        return pid
    except (OSError, ValueError, IndexError):
        return None
def listening():
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0
cmd = sys.argv[1]
if cmd == "stop":
    pid = alive()
    if pid:
        os.kill(pid, signal.SIGTERM)
        for _ in range(400):
            if not alive():
                break
            time.sleep(0.01)
    for _ in range(200):
        if not listening():
            break
        time.sleep(0.02)
    print("stopped")
elif cmd == "start":
    if not alive():
        os.makedirs(os.path.join(base, "run"), exist_ok=True)
        log = open(os.path.join(base, "run", "app.log"), "ab")
        p = subprocess.Popen([sys.executable, os.path.join(base, "current", "app.py")], cwd=base,
                             stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                             start_new_session=True)
        open(pidfile, "w").write(str(p.pid))
        for _ in range(500):
            if listening() or p.poll() is not None:
                break
            time.sleep(0.02)
    print("started", open(os.path.join(base, "current", "VERSION")).read().strip())
else:
    sys.exit("usage: appctl start|stop")
'''

SECRET = "sk-live-9f8e7d6c5b4a39281706f5e4d3c2b1a0"  # a broker API key that must stay secret


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def env_file(port: int, database: str, release: str, api_key: str) -> str:
    return (f"# trading-app configuration\nPORT={port}\nDATABASE={database}\n"
            f"RELEASE={release}\nBROKER_API_KEY={api_key}\n")


def write_release(base: Path, version: str, port: int, database: str, *, healthy: bool = True,
                  needs: tuple[str, ...] = (), api_key: str = SECRET) -> Path:
    rel = base / "releases" / version
    (rel / "config").mkdir(parents=True)
    (rel / "app.py").write_text(APP.format(version=version, healthy=healthy, needs=list(needs)))
    (rel / "VERSION").write_text(version + "\n")
    (rel / "config" / "app.env").write_text(env_file(port, database, version, api_key))
    return rel


def write_app(base: Path, database: str, *, v26_healthy: bool = True) -> int:
    """releases/v2.5 (live: current -> releases/v2.5, config/app.env) and releases/v2.6 (needs
    the orders table the migrations create). Returns the port."""
    port = free_port()
    database = database.replace("postgresql+psycopg://", "postgresql://")
    write_release(base, "v2.5", port, database, api_key=SECRET)
    write_release(base, "v2.6", port, database, healthy=v26_healthy, needs=("orders",),
                  api_key=SECRET + "-v26")
    (base / "config").mkdir(exist_ok=True)
    live = base / "config" / "app.env"
    live.write_text(env_file(port, database, "v2.5", SECRET))
    os.chmod(live, 0o640)
    (base / "bin").mkdir(exist_ok=True)
    ctl = base / "bin" / "appctl"
    ctl.write_text(APPCTL.format(python=sys.executable))
    ctl.chmod(0o755)
    os.symlink("releases/v2.5", base / "current")
    return port


def deploy_toml(*, commands: str = "") -> str:
    return ('\n[deploy]\nreleases_dir = "releases"\ncurrent_link = "current"\n'
            'config_files = ["config/app.env"]\nconfig_from = "releases/{version}/config"\n'
            'stop = "bin/appctl stop"\nstart = "bin/appctl start"\ntimeout = "20s"\n' + commands)


def health_toml(port: int, extra_checks: str = "") -> str:
    return ('\n[health]\nretries = 2\ninterval = "100ms"\nchecks = [\n'
            '  { name = "users readable", sql = "SELECT count(*) FROM users", expect = "3" },\n'
            f'  {{ name = "api", http = "http://127.0.0.1:{port}/health", status = 200, '
            'timeout = "2s" },\n' + extra_checks + ']\n')


def start_app(base: Path) -> None:
    import subprocess

    subprocess.run([str(base / "bin" / "appctl"), "start"], cwd=base, check=True,
                   capture_output=True, timeout=30)


def stop_app(base: Path) -> None:
    pidfile = base / "run" / "app.pid"
    with contextlib.suppress(OSError, ValueError):
        pid = int(pidfile.read_text())
        os.kill(pid, signal.SIGKILL)


def ask(port: int) -> tuple[int, Any]:
    """GET /health: (status, body); (0, reason) when nothing answers."""
    try:
        with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(
                f"http://127.0.0.1:{port}/health", timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())
    except OSError as e:
        return 0, str(e)


def wait_answer(port: int, seconds: float = 10) -> tuple[int, Any]:
    deadline = time.monotonic() + seconds
    got = ask(port)
    while got[0] == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
        got = ask(port)
    return got
