"""Health checks: by SQL against the target, by an HTTP GET, or by a command; with retries, a
timeout per attempt and a deadline for them all.

::

    [health]
    checks = [
      { name = "db", sql = "SELECT count(*) > 0 FROM users", expect = "true" },
      { name = "api", http = "http://127.0.0.1:8080/health", status = 200, timeout = "2s" },
      { name = "smoke", command = "./bin/smoke-test", timeout = "30s" },
    ]
    retries = 5
    interval = "2s"
    deadline = "60s"

Each check has exactly one of ``sql``, ``http`` and ``command``:

- ``sql`` passes when its query runs and, if ``expect`` is given, the first column of the
  first row, as text (booleans lower-case), equals it.
- ``http`` passes when a GET of the URL (http or https; no proxy; redirects not followed)
  answers ``status`` (default 200). A password in the URL is sent as basic authentication and
  shown as ``***``; the query string is never shown.
- ``command`` passes when the command (split like a shell would, run by :mod:`.procs` in the
  directory of statekeeper.toml) exits 0. Its output goes to private files, never into a
  message, a result or the ledger.

An http check may have ``rehearsal_http`` and a command check ``rehearsal_command``: what
``statekeeper rehearse`` runs instead, against the clone (:mod:`.rehearse`); validated here.
A command (the check's or its variant) finds the URL of the database the checks are about in
``STATEKEEPER_DATABASE_URL`` (:func:`command_env`).

``retries`` (default 2) is how many more times a failing check is tried after its first
attempt, ``interval`` (default 1s) the pause between attempts and ``timeout`` (default 10s,
overridden by a check's own ``timeout``) the limit on each attempt. ``deadline`` (default
none) bounds the whole health step: once it has passed, no further attempt starts, and an
attempt's timeout is cut to the time left. Durations: see :mod:`.durations`. Each validated
check carries the values it runs with, so the runner needs nothing but the list.

Validating runs at every configuration load: this module imports nothing heavy at module
level (the target's driver, urllib and the ledger are imported by the attempts).
"""

from __future__ import annotations

import re
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .durations import format_ms, parse_duration
from .durations import shown_value as _shown
from .errors import ConfigError, StatekeeperError, TargetError

if TYPE_CHECKING:  # validating [health] runs at every configuration load: keep it light
    from .targets import Target

__all__ = [
    "DEADLINE_MS", "INTERVAL_MS", "KINDS", "TIMEOUT_MS", "CheckResult", "HealthReport",
    "check_all", "format_ms", "parse_duration", "parse_retries", "run_checks",
    "validate_checks", "validate_health",
]

DEFAULT_RETRIES = 2
DEFAULT_INTERVAL_MS = 1_000
DEFAULT_TIMEOUT_MS = 10_000
DEFAULT_STATUS = 200
# Bounds: a health check runs while writers are stopped for the upgrade; more than a hundred
# retries or a ten-minute pause is a typo, not a policy. The timeout has millisecond
# resolution and must be positive (0 would disable PostgreSQL's statement_timeout).
RETRIES_MAX = 100
INTERVAL_MS = (0, 600_000)
TIMEOUT_MS = (1, 3_600_000)
DEADLINE_MS = (1, 3_600_000)
STATUS_RANGE = (100, 599)

KINDS = ("sql", "http", "command")
# The keys each kind takes besides its own and the common ones.
_KIND_KEYS = {"sql": ("expect",), "http": ("status", "rehearsal_http"),
              "command": ("rehearsal_command",)}
#: the key of each kind's variant that a rehearsal runs against the clone instead (the check
#: itself would probe the live application); a check without one is not rehearsed
REHEARSAL_KEYS = {"http": "rehearsal_http", "command": "rehearsal_command"}
_COMMON_KEYS = ("name", "timeout")
_URL_FORBIDDEN = re.compile(r"[\s\x00-\x1f\x7f]")


def parse_retries(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= RETRIES_MAX:
        raise ConfigError(
            f"{where} must be an integer from 0 to {RETRIES_MAX}, not {_shown(value)}"
        )
    return value


# -- validation ------------------------------------------------------------------------------

def validate_health(section: Mapping[str, Any], source: str) -> list[dict[str, Any]]:
    """The ``[health]`` table, validated: each check with the retries, interval, timeout and
    deadline it runs with. Errors are one line naming the file and the key."""
    retries = parse_retries(section.get("retries", DEFAULT_RETRIES), f"{source}: [health] retries")
    interval = parse_duration(section.get("interval", DEFAULT_INTERVAL_MS / 1000),
                              f"{source}: [health] interval", INTERVAL_MS)
    timeout = parse_duration(section.get("timeout", DEFAULT_TIMEOUT_MS / 1000),
                             f"{source}: [health] timeout", TIMEOUT_MS)
    deadline = section.get("deadline")
    deadline_ms = (None if deadline is None else
                   parse_duration(deadline, f"{source}: [health] deadline", DEADLINE_MS))
    checks = section.get("checks", [])
    if not isinstance(checks, list):
        raise ConfigError(f"{source}: [health] checks must be a list of tables")
    return [
        {"retries": retries, "interval_ms": interval, "deadline_ms": deadline_ms,
         **c, "timeout_ms": c.get("timeout_ms", timeout)}
        for c in validate_checks(checks, source)
    ]


def validate_checks(checks: list[Any], source: str) -> list[dict[str, Any]]:
    """Each check as the runner takes it: ``name``, ``kind`` and what that kind needs
    (``sql``/``expect``, ``http``/``status``, ``command``/``argv``), and ``timeout_ms`` when
    the check has its own."""
    out = []
    for i, c in enumerate(checks):
        where = f"{source}: [health] checks[{i}]"
        if not isinstance(c, dict):
            raise ConfigError(f"{where} must be a table such as {{ name = ..., sql = ... }}")
        kinds = [k for k in KINDS if k in c]
        if len(kinds) != 1:
            raise ConfigError(f"{where} needs exactly one of {', '.join(KINDS)}")
        kind = kinds[0]
        for key in c:
            if key in (kind, *_COMMON_KEYS, *_KIND_KEYS[kind]):
                continue
            owner = [k for k, keys in _KIND_KEYS.items() if key in keys]
            if owner:
                raise ConfigError(f"{where} {key} is for {owner[0]} checks only")
            raise ConfigError(f"{where} has unknown key {key}")
        if not isinstance(c[kind], str):
            raise ConfigError(f'{where} {kind} must be a string: {kind} = "..."')
        name = c.get("name")
        if name is not None and not isinstance(name, str):
            raise ConfigError(f"{where} name must be a string")
        check: dict[str, Any] = {"name": name or f"check {i + 1}", "kind": kind}
        if kind == "sql":
            check.update(_sql_check(c, where))
        elif kind == "http":
            check.update(_http_check(c, where))
        else:
            check["command"] = c["command"]
            from .procs import split

            check["argv"] = split(c["command"], f"{where} command")
        variant = REHEARSAL_KEYS.get(kind)
        if variant is not None and variant in c:
            if not isinstance(c[variant], str):
                raise ConfigError(f'{where} {variant} must be a string: {variant} = "..."')
            if kind == "http":
                _http_url(c[variant], where, variant)
            else:
                from .procs import split

                split(c[variant], f"{where} {variant}")
        if "timeout" in c:
            check["timeout_ms"] = parse_duration(c["timeout"], f"{where} timeout", TIMEOUT_MS)
        out.append(check)
    return out


def _sql_check(c: Mapping[str, Any], where: str) -> dict[str, Any]:
    if not c["sql"].strip():
        # an empty query "succeeds" without looking at anything
        raise ConfigError(f"{where} sql is empty")
    expect = c.get("expect")
    if expect is not None and not isinstance(expect, str | int | bool):
        raise ConfigError(f"{where} expect must be a string, an integer or a boolean")
    # compared as text the way the result is: expect = true matches a boolean true
    return {"sql": c["sql"], "expect": None if expect is None else _as_text(expect)}


def _http_url(url: str, where: str, key: str) -> None:
    from urllib.parse import urlsplit

    # The URL is never quoted in these messages: it may hold a password or a token.
    if _URL_FORBIDDEN.search(url):
        raise ConfigError(f"{where} {key} must not contain spaces or control characters")
    try:
        parts = urlsplit(url)
    except ValueError as e:  # an unclosed "[" of an IPv6 host
        raise ConfigError(f"{where} {key} is not a URL: {e}") from e
    if "://" not in url or parts.scheme.lower() not in ("http", "https"):
        scheme = f" (not {parts.scheme}://)" if "://" in url and parts.scheme else ""
        raise ConfigError(f"{where} {key} must be an http:// or https:// URL{scheme}")
    try:
        parts.port  # noqa: B018  (raises for a port that is not one)
    except ValueError as e:
        raise ConfigError(f"{where} {key} has an invalid port") from e
    if not parts.hostname:
        raise ConfigError(f"{where} {key} has no host")


def _http_check(c: Mapping[str, Any], where: str) -> dict[str, Any]:
    url: str = c["http"]
    _http_url(url, where, "http")
    status = c.get("status", DEFAULT_STATUS)
    lo, hi = STATUS_RANGE
    if isinstance(status, bool) or not isinstance(status, int) or not lo <= status <= hi:
        raise ConfigError(
            f"{where} status must be an HTTP status code from {lo} to {hi}, not {_shown(status)}"
        )
    return {"http": url, "status": status}


def _as_text(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return "" if v is None else str(v)


# -- running ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class CheckResult:
    """One check's outcome: how many attempts it took, why the last one failed (None when it
    passed), and what its last attempt recorded (``status`` of an http check; exit code,
    output sizes and keyed fingerprints of a command). Nothing in it is secret."""

    name: str
    kind: str
    ok: bool
    attempts: int
    reason: str | None = None
    detail: Mapping[str, Any] = field(default_factory=dict)

    def to_payload(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "ok": self.ok, "attempts": self.attempts,
                               "kind": self.kind, **self.detail}
        if not self.ok:
            out["reason"] = self.reason
        return out

    def outcome(self) -> str:
        """``passed after 1 attempt``, ``failed after 3 attempts: REASON`` or ``was not
        tried: REASON`` (the deadline passed before its turn)."""
        times = "1 attempt" if self.attempts == 1 else f"{self.attempts} attempts"
        if self.ok:
            return f"passed after {times}"
        if self.attempts == 0:
            return f"was not tried: {self.reason}"
        return f"failed after {times}: {self.reason}"

    def error(self) -> str:
        """The one line of a failed check: ``health check 'api' failed after 3 attempts:
        GET http://127.0.0.1:8080/health answered 503, expected 200``."""
        return f"health check {self.name!r} {self.outcome()}"


@dataclass(frozen=True)
class HealthReport:
    """Every configured check's result, in order (``statekeeper health``)."""

    checks: list[CheckResult]

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    def to_payload(self) -> dict[str, Any]:
        return {"ok": self.ok, "checks": [c.to_payload() for c in self.checks]}


@dataclass
class _Attempt:
    ok: bool
    reason: str = ""
    detail: dict[str, Any] = field(default_factory=dict)
    final: bool = False  # no use trying again (a command that cannot be started)
    cut: bool = False  # stopped at the deadline, and its reason says so


@dataclass(frozen=True)
class _Limit:
    """An attempt's time limit: the check's timeout, or what is left before the deadline
    (``by_deadline``), and how a message says it was reached."""

    ms: int
    by_deadline: bool = False
    deadline_ms: int = 0

    def reached(self) -> str:
        """``after 2s``, or ``at the 1m deadline``."""
        if self.by_deadline:
            return f"at the {format_ms(self.deadline_ms)} deadline"
        return f"after {format_ms(self.ms)}"


def run_checks(
    target: Target | None,
    checks: list[dict[str, Any]],
    *,
    retries: int = DEFAULT_RETRIES,
    interval_ms: int = DEFAULT_INTERVAL_MS,
    timeout_ms: int = DEFAULT_TIMEOUT_MS,
    deadline_ms: int | None = None,
    hook: Callable[[], None] | None = None,
    out_dir: Path | None = None,
    base_dir: Path | None = None,
    secret: bytes | None = None,
    env: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The health step: every check in order; the first that fails all its attempts raises
    TargetError with its one line (:meth:`CheckResult.error`). The result is what the ledger
    records: ``{"checks": [{"name", "ok", "attempts", "kind", ...}]}``. See :func:`check_all`
    for the keywords."""
    results = check_all(target, checks, retries=retries, interval_ms=interval_ms,
                        timeout_ms=timeout_ms, deadline_ms=deadline_ms, hook=hook,
                        out_dir=out_dir, base_dir=base_dir, secret=secret,
                        stop_at_failure=True, env=env)
    for r in results:
        if not r.ok:
            raise TargetError(r.error())
    return {"checks": [r.to_payload() for r in results]}


def check_all(
    target: Target | None,
    checks: list[dict[str, Any]],
    *,
    retries: int = DEFAULT_RETRIES,
    interval_ms: int = DEFAULT_INTERVAL_MS,
    timeout_ms: int = DEFAULT_TIMEOUT_MS,
    deadline_ms: int | None = None,
    hook: Callable[[], None] | None = None,
    out_dir: Path | None = None,
    base_dir: Path | None = None,
    secret: bytes | None = None,
    stop_at_failure: bool = False,
    env: Mapping[str, str] | None = None,
) -> list[CheckResult]:
    """Run the checks in order, each until it passes or its attempts (or the deadline) run
    out; with ``stop_at_failure``, none after the first that fails. The keyword values apply
    to checks that do not carry their own (see :func:`validate_health`); ``deadline_ms``
    defaults to the checks'. ``target`` may be None when there is no sql check.

    A command runs in ``base_dir`` (default: the working directory) and writes its output to
    ``out_dir`` (``health-N-NAME.out`` and ``.err``, 0600, the last attempt's); without
    ``out_dir``, to a private temporary directory removed afterwards; the result records the
    output's sizes and, given the fingerprint ``secret``, its keyed fingerprints (never a plain
    digest: a short token could be found from one), with ``env`` as its environment
    (default: :func:`command_env` of ``target``). ``hook`` is called once, after the first
    check (the failure-injection point of the upgrade's step)."""
    if deadline_ms is None and checks:
        deadline_ms = checks[0].get("deadline_ms")
    t0 = time.monotonic()
    ends = None if deadline_ms is None else t0 + deadline_ms / 1000
    temp: Path | None = None
    if out_dir is None and any(c.get("kind") == "command" for c in checks):
        temp = Path(tempfile.mkdtemp(prefix="statekeeper-health-"))  # 0700
    runner = _Runner(target, out_dir or temp, out_dir is not None, base_dir or Path.cwd(),
                     secret, command_env(target) if env is None else env)
    results: list[CheckResult] = []
    try:
        for n, check in enumerate(checks):
            if n == 1 and hook:
                hook()
            tries = int(check.get("retries", retries)) + 1
            pause = int(check.get("interval_ms", interval_ms)) / 1000
            limit = int(check.get("timeout_ms", timeout_ms))
            r = _check_one(runner, n, check, tries, pause, limit, ends, deadline_ms)
            results.append(r)
            if not r.ok and stop_at_failure:
                break
        if len(checks) < 2 and hook:
            hook()
    finally:
        if temp is not None:
            shutil.rmtree(temp, ignore_errors=True)
    return results


def _check_one(runner: _Runner, n: int, check: dict[str, Any], tries: int, pause: float,
               limit: int, ends: float | None, deadline_ms: int | None) -> CheckResult:
    name, kind = str(check["name"]), str(check.get("kind", "sql"))
    last = _Attempt(False)
    attempt = 0
    while attempt < tries:
        this_limit = _Limit(limit)
        if ends is not None:
            left = int((ends - time.monotonic()) * 1000)
            if left <= 0:
                break
            if left < limit:
                this_limit = _Limit(left, True, deadline_ms or 0)
        attempt += 1
        last = runner.attempt(n, kind, check, this_limit)
        if last.ok:
            return CheckResult(name, kind, True, attempt, None, last.detail)
        if last.final or attempt == tries:
            break
        if ends is not None and time.monotonic() + pause >= ends:
            break
        time.sleep(pause)
    reason = last.reason
    if attempt < tries and not last.final and not last.cut:
        # the deadline, not the retries, ended it (a message that says so already: as is)
        reached = f"the {format_ms(deadline_ms or 0)} deadline was reached"
        reason = f"{reason} ({reached})" if attempt else reached
    return CheckResult(name, kind, False, attempt, reason, last.detail)


class _Runner:
    def __init__(self, target: Target | None, out_dir: Path | None, keep: bool,
                 cwd: Path, secret: bytes | None = None,
                 env: Mapping[str, str] | None = None) -> None:
        self.env = env
        self.secret = secret
        self.target = target
        self.out_dir = out_dir
        self.keep = keep
        self.cwd = cwd

    def attempt(self, n: int, kind: str, check: dict[str, Any], limit: _Limit) -> _Attempt:
        if kind == "http":
            return _http_attempt(check["http"], int(check.get("status", DEFAULT_STATUS)),
                                 limit)
        if kind == "command":
            assert self.out_dir is not None
            return _command_attempt(check["argv"], _output_name(n, str(check["name"])),
                                    limit, self.out_dir, self.keep, self.cwd, self.secret,
                                    self.env)
        if self.target is None:
            raise ConfigError(f"health check {check['name']!r} is a sql check: it needs a "
                              "target ([target] url)")
        try:
            got = _run_sql(self.target, check["sql"], limit.ms)
        except TimeoutError:
            return _Attempt(False, f"timed out {limit.reached()}", cut=limit.by_deadline)
        except TargetError as e:
            return _Attempt(False, str(e))
        if check.get("expect") is None or got == check["expect"]:
            return _Attempt(True)
        # the value itself stays out of the ledger: it may be application data
        return _Attempt(False, "returned a value other than the one expected")


def _run_sql(target: Target, sql: str, timeout_ms: int) -> str:
    """The first column of the first row as text; TimeoutError at the timeout."""
    try:
        row = target.dialect.health_query(target, sql, timeout_ms)
    except (TimeoutError, StatekeeperError):  # no connection, no database file: as they are
        raise
    except Exception as e:  # the driver's error, whichever the backend
        from .dialects.base import first_line

        raise TargetError(first_line(e)) from e
    return _as_text(row[0]) if row else ""


# -- http ------------------------------------------------------------------------------------

def shown_url(url: str) -> str:
    """The URL as a message may show it: no query string or fragment (tokens), the password
    as ``***``."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    bare = urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))
    if parts.password is None:
        return bare
    from ledger import redact

    return redact(bare)


def _http_attempt(url: str, expected: int, limit: _Limit) -> _Attempt:
    import base64
    import http.client
    import urllib.error
    import urllib.request
    from urllib.parse import unquote, urlsplit, urlunsplit

    what = f"GET {shown_url(url)}"
    parts = urlsplit(url)
    headers = {}
    if "@" in parts.netloc:
        # urllib does not send a URL's user info: it goes as basic authentication, and the
        # request's URL is left without it
        user, password = unquote(parts.username or ""), unquote(parts.password or "")
        token = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
        headers["Authorization"] = f"Basic {token}"
        url = urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))
    opener = _opener()
    timed_out = _Attempt(False, f"{what} timed out {limit.reached()}", cut=limit.by_deadline)
    try:
        with opener.open(urllib.request.Request(url, headers=headers, method="GET"),
                         timeout=limit.ms / 1000) as resp:
            status = int(resp.status)
    except urllib.error.HTTPError as e:  # an answer, with a status urllib calls an error
        status = int(e.code)
        e.close()
    except urllib.error.URLError as e:
        if isinstance(e.reason, TimeoutError):
            return timed_out
        return _Attempt(False, f"{what} failed: {_why(e.reason)}")
    except TimeoutError:
        return timed_out
    except (OSError, http.client.HTTPException, ValueError) as e:
        return _Attempt(False, f"{what} failed: {_why(e)}")
    detail = {"status": status}
    if status == expected:
        return _Attempt(True, detail=detail)
    return _Attempt(False, f"{what} answered {status}, expected {expected}", detail)


def _why(reason: object) -> str:
    if isinstance(reason, ConnectionRefusedError):
        return "connection refused"
    if isinstance(reason, OSError) and reason.strerror:
        return reason.strerror
    return " ".join(str(reason).split()) or type(reason).__name__


def _opener() -> Any:
    """No proxy (a health check asks the host it names), and no redirect followed: a redirect
    is an answer like any other, its status compared, and nothing (the basic authentication
    least of all) is sent to where it points."""
    import urllib.request

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args: Any, **kwargs: Any) -> None:
            return None

    return urllib.request.build_opener(urllib.request.ProxyHandler({}), NoRedirect())


# -- command ---------------------------------------------------------------------------------

def _output_name(n: int, name: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9_-]+", "-", name).strip("-")[:40]
    return f"health-{n + 1}-{slug}" if slug else f"health-{n + 1}"


def command_env(target: Target | None) -> dict[str, str]:
    """A command check's environment: statekeeper's, with ``STATEKEEPER_DATABASE_URL``, the
    database the checks are about (in a rehearsal, the clone: a rehearsal variant points at
    it with that), password included as the configuration has it."""
    import os

    env = dict(os.environ)
    env.pop("STATEKEEPER_FAILPOINT", None)  # a crash test's failpoint is statekeeper's own
    if target is not None:
        env["STATEKEEPER_DATABASE_URL"] = target.client_url()
    return env


def _command_attempt(argv: list[str], name: str, limit: _Limit, out_dir: Path, keep: bool,
                     cwd: Path, secret: bytes | None = None,
                     env: Mapping[str, str] | None = None) -> _Attempt:
    # Only the program is named: the arguments may carry a secret (from ${ENV}).
    from .procs import not_executable, run

    what = f"command {argv[0]}"
    why = not_executable(argv, cwd)
    if why is not None:
        return _Attempt(False, why, final=True)
    try:
        outcome = run(argv, cwd=cwd, timeout_ms=limit.ms, out_dir=out_dir, name=name, env=env)
    except OSError as e:
        return _Attempt(False, f"{what} cannot be started: {e.strerror or e}", final=True)
    detail = outcome.result(secret)
    if outcome.ok:
        return _Attempt(True, detail=detail)
    how = outcome.how(limit.reached())
    # where the output is, never what it says; without an output directory the files are
    # gone when the checks end, so none is named
    where = (f"; its output is in {outcome.stderr} and {outcome.stdout}" if keep
             else " (its output was not kept)")
    return _Attempt(False, f"{what} {how}{where}", detail,
                    cut=outcome.timed_out and limit.by_deadline)
