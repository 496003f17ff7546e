"""[health] retries, interval and timeout: range-checked with one-line errors, and honoured
against real targets (SQLite files, PostgreSQL databases) whose state changes between
attempts, through ``run_checks`` and through a real ``statekeeper start``."""

from __future__ import annotations

import itertools
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from cli.main import cli
from statekeeper import command
from statekeeper.errors import ConfigError, TargetError
from statekeeper.health import (
    INTERVAL_MS,
    TIMEOUT_MS,
    format_ms,
    parse_duration,
    run_checks,
    validate_health,
)
from statekeeper.targets import Target
from tests.upgrade_support import HEALTH, SCENARIOS, Project, make_project, seed

SRC = "/app/statekeeper.toml"


# -- validation ------------------------------------------------------------------------------

@pytest.mark.parametrize(("value", "ms"), [
    (0, 0), (2, 2000), (0.25, 250), ("500ms", 500), ("2s", 2000), ("1.5s", 1500),
    ("1m", 60_000), ("10m", 600_000), ("2", 2000), (" 3s ", 3000), (".5s", 500),
    ("0ms", 0), ("0.5ms", 1),
])
def test_interval_accepts_seconds_and_unit_strings(value: Any, ms: int) -> None:
    [c] = validate_health({"checks": [{"sql": "SELECT 1"}], "interval": value}, SRC)
    assert c["interval_ms"] == ms


@pytest.mark.parametrize(("key", "value", "message"), [
    ("retries", -1, "[health] retries must be an integer from 0 to 100, not -1"),
    ("retries", 101, "[health] retries must be an integer from 0 to 100, not 101"),
    ("retries", True, "[health] retries must be an integer from 0 to 100, not true"),
    ("retries", "3", "[health] retries must be an integer from 0 to 100, not '3'"),
    ("retries", 2.0, "[health] retries must be an integer from 0 to 100, not 2.0"),
    ("interval", "11m", "[health] interval must be between 0s and 10m, not '11m'"),
    ("interval", -1, "[health] interval must be between 0s and 10m, not -1"),
    ("interval", 601, "[health] interval must be between 0s and 10m, not 601"),
    ("timeout", 0, "[health] timeout must be between 1ms and 1h, not 0"),
    ("timeout", "0.4ms", "[health] timeout must be between 1ms and 1h, not '0.4ms'"),
    ("timeout", "2h", "[health] timeout must be between 1ms and 1h, not '2h'"),
    ("timeout", 1e300, "[health] timeout must be between 1ms and 1h, not 1e+300"),
    ("timeout", "5x", '[health] timeout must be a duration such as "500ms", "2s" or "1m" '
                      "(or a number of seconds), not '5x'"),
    ("timeout", "1m30s", '[health] timeout must be a duration such as "500ms", "2s" or "1m" '
                         "(or a number of seconds), not '1m30s'"),
    ("timeout", "2S", '[health] timeout must be a duration such as "500ms", "2s" or "1m" '
                      "(or a number of seconds), not '2S'"),
    ("timeout", float("nan"), '[health] timeout must be a duration such as "500ms", "2s" or '
                              '"1m" (or a number of seconds), not nan'),
    ("timeout", False, '[health] timeout must be a duration such as "500ms", "2s" or "1m" '
                       "(or a number of seconds), not false"),
    ("checks", {"sql": "SELECT 1"}, "[health] checks must be a list of tables"),
])
def test_out_of_range_or_malformed_values_are_one_line_naming_file_and_key(
        key: str, value: Any, message: str) -> None:
    section = {"checks": [{"sql": "SELECT 1"}], key: value}
    with pytest.raises(ConfigError) as e:
        validate_health(section, SRC)
    assert str(e.value) == f"{SRC}: {message}"


@pytest.mark.parametrize(("check", "message"), [
    ({"name": "x"}, "[health] checks[0] needs exactly one of sql, http, command"),
    ({"sql": "  "}, "[health] checks[0] sql is empty"),
    ({"sql": "SELECT 1", "name": 3}, "[health] checks[0] name must be a string"),
    ({"sql": "SELECT 1", "expect": [1]},
     "[health] checks[0] expect must be a string, an integer or a boolean"),
    ({"sql": "SELECT 1", "retry": 3}, "[health] checks[0] has unknown key retry"),
])
def test_malformed_checks_are_refused(check: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as e:
        validate_health({"checks": [check]}, SRC)
    assert str(e.value) == f"{SRC}: {message}"


def test_defaults_are_two_retries_one_second_apart_ten_seconds_each() -> None:
    [c] = validate_health({"checks": [{"sql": "SELECT 1"}]}, SRC)
    assert (c["retries"], c["interval_ms"], c["timeout_ms"]) == (2, 1000, 10_000)
    assert validate_health({}, SRC) == []


DURATION_LIKE = st.one_of(
    st.text(max_size=12),
    st.from_regex(r"\s?-?\d{0,6}(\.\d{0,4})?\s?(ms|s|m|h|S|min|us)?\s?", fullmatch=True),
    st.integers(-10**12, 10**12),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.none(),
    st.lists(st.integers(), max_size=2),
)


@settings(max_examples=400, deadline=None)
@given(value=DURATION_LIKE, bounds=st.sampled_from([INTERVAL_MS, TIMEOUT_MS]))
def test_any_duration_value_is_a_bounded_whole_millisecond_or_one_clear_line(
        value: Any, bounds: tuple[int, int]) -> None:
    where = f"{SRC}: [health] timeout"
    try:
        ms = parse_duration(value, where, bounds)
    except ConfigError as e:
        text = str(e)
        assert text.startswith(f"{where} must be ") and "\n" not in text and len(text) < 200
    else:
        assert isinstance(ms, int) and bounds[0] <= ms <= bounds[1]


@settings(max_examples=300, deadline=None)
@given(ms=st.integers(TIMEOUT_MS[0], TIMEOUT_MS[1]))
def test_the_form_errors_print_parses_back_to_the_same_duration(ms: int) -> None:
    assert parse_duration(format_ms(ms), "w", TIMEOUT_MS) == ms


# -- honoured against real targets -----------------------------------------------------------

ATTEMPTS_SQLITE = [
    "CREATE TABLE health_attempts (at REAL NOT NULL)",
    "CREATE TABLE health_counter (n INTEGER NOT NULL)",
    "INSERT INTO health_counter VALUES (0)",
    # every attempt records when it ran, by the database's own clock
    "CREATE TRIGGER health_log AFTER UPDATE ON health_counter BEGIN "
    "INSERT INTO health_attempts VALUES ((julianday('now') - 2440587.5) * 86400.0); END",
]
ATTEMPTS_PG = [
    "CREATE TABLE health_attempts (at double precision NOT NULL"
    " DEFAULT extract(epoch FROM clock_timestamp()))",
    "CREATE FUNCTION health_attempt(ready_at int) RETURNS boolean LANGUAGE sql VOLATILE AS $$ "
    "INSERT INTO health_attempts DEFAULT VALUES; "
    "SELECT count(*) >= ready_at FROM health_attempts $$",
]


def ready_at(backend: str, n: int) -> str:
    """A check that fails its first n - 1 attempts and passes from the n-th on."""
    if backend == "sqlite":
        return f"UPDATE health_counter SET n = n + 1 RETURNING n >= {n}"
    return f"SELECT health_attempt({n})"


READY = {"sqlite": "1", "postgresql": "true"}
SLOW = {
    "sqlite": "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c"
              " WHERE x < 1000000000) SELECT count(*) FROM c",
    "postgresql": "SELECT pg_sleep(5)",
}


@pytest.fixture(params=["sqlite", "postgresql"])
def target(request: pytest.FixtureRequest, tmp_path: Path) -> Target:
    if request.param == "sqlite":
        path = tmp_path / "app.db"
        conn = sqlite3.connect(path)
        for s in ATTEMPTS_SQLITE:
            conn.execute(s)
        conn.commit()
        conn.close()
        return Target.from_url(f"sqlite:///{path}")
    t = Target.from_url(request.getfixturevalue("pg_url"))
    conn = t.connect(autocommit=True)
    for s in ATTEMPTS_PG:
        conn.execute(s)
    conn.close()
    return t


def attempt_times(t: Target) -> list[float]:
    conn = t.connect(autocommit=True)
    try:
        return [float(r[0]) for r in conn.execute("SELECT at FROM health_attempts ORDER BY at")]
    finally:
        conn.close()


def third_time_check(t: Target, **section: Any) -> list[dict[str, Any]]:
    check = {"name": "ready", "sql": ready_at(t.backend, 3), "expect": READY[t.backend]}
    return validate_health({"checks": [check], **section}, SRC)


def test_a_check_that_fails_twice_passes_on_its_third_attempt_with_retries_3(
        target: Target) -> None:
    t0 = time.monotonic()
    result = run_checks(target, third_time_check(target, retries=3, interval="300ms"))
    elapsed = time.monotonic() - t0
    assert result == {"checks": [{"name": "ready", "ok": True, "attempts": 3,
                                   "kind": "sql"}]}
    at = attempt_times(target)
    assert len(at) == 3  # it stopped at the first success
    gaps = [b - a for a, b in itertools.pairwise(at)]
    # the interval is observed between attempts (the database's clock), and not much more
    assert all(0.28 <= g < 2.3 for g in gaps), gaps
    assert 0.58 <= elapsed < 5, elapsed


@pytest.mark.parametrize("retries", [0, 1])
def test_too_few_retries_fail_naming_the_check_after_exactly_that_many_attempts(
        target: Target, retries: int) -> None:
    with pytest.raises(TargetError) as e:
        run_checks(target, third_time_check(target, retries=retries, interval=0))
    attempts = retries + 1
    times = "1 attempt" if attempts == 1 else f"{attempts} attempts"
    # the value itself (application data) stays out of the message
    assert str(e.value) == (f"health check 'ready' failed after {times}: "
                            "returned a value other than the one expected")
    assert len(attempt_times(target)) == attempts


def test_a_check_exceeding_its_timeout_fails_naming_the_check(target: Target) -> None:
    checks = validate_health({"checks": [{"name": "slow", "sql": SLOW[target.backend]}],
                              "timeout": 1, "retries": 1, "interval": 0}, SRC)
    t0 = time.monotonic()
    with pytest.raises(TargetError) as e:
        run_checks(target, checks)
    elapsed = time.monotonic() - t0
    assert str(e.value) == "health check 'slow' failed after 2 attempts: timed out after 1s"
    assert 1.9 <= elapsed < 6, elapsed  # two attempts of about a second, not of five or more


def test_on_sqlite_the_timeout_also_bounds_a_wait_for_another_writers_lock(
        tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    sqlite3.connect(path).executescript("CREATE TABLE users (id INTEGER); "
                                        "INSERT INTO users VALUES (1);")
    target = Target.from_url(f"sqlite:///{path}")
    writer = sqlite3.connect(path, isolation_level=None)
    writer.execute("BEGIN EXCLUSIVE")  # readers wait (rollback journal) up to busy_timeout
    try:
        checks = validate_health({"checks": [{"name": "users", "sql": "SELECT count(*) FROM "
                                              "users", "expect": 1}],
                                  "timeout": "500ms", "retries": 0}, SRC)
        t0 = time.monotonic()
        with pytest.raises(TargetError) as e:
            run_checks(target, checks)
        elapsed = time.monotonic() - t0
    finally:
        writer.execute("ROLLBACK")
        writer.close()
    assert str(e.value) == "health check 'users' failed after 1 attempt: timed out after 500ms"
    assert 0.4 <= elapsed < 5, elapsed  # not the target's 30 s busy timeout
    # released, the same check passes (expect = 1, an integer, compares as text)
    assert run_checks(target, checks)["checks"][0]["ok"]


def test_a_table_another_session_fills_between_attempts(target: Target) -> None:
    conn = target.connect(autocommit=True)
    conn.execute("CREATE TABLE orders (id INTEGER)")
    conn.close()
    checks = validate_health({"checks": [{"name": "orders", "expect": "2",
                                          "sql": "SELECT count(*) FROM orders"}],
                              "retries": 20, "interval": "100ms"}, SRC)

    def fill() -> None:
        c = target.connect(autocommit=True)
        for _ in range(2):
            time.sleep(0.3)
            c.execute("INSERT INTO orders VALUES (1)")
        c.close()

    filler = threading.Thread(target=fill)
    filler.start()
    try:
        [r] = run_checks(target, checks)["checks"]
    finally:
        filler.join()
    assert r["ok"] and r["attempts"] > 1


def test_expect_true_matches_a_boolean_result(pg_url: str) -> None:
    t = Target.from_url(pg_url)
    checks = validate_health({"checks": [{"name": "b", "sql": "SELECT 1 = 1", "expect": True}],
                              "retries": 0}, SRC)
    assert run_checks(t, checks)["checks"][0]["ok"]


# -- end to end: a real `statekeeper start` ---------------------------------------------------

def new_project(tmp_path: Path, backend: str, request: pytest.FixtureRequest) -> Project:
    if backend == "sqlite":
        (tmp_path / "app.db").touch()
        url = f"sqlite:///{tmp_path / 'app.db'}"
    else:
        cluster = request.getfixturevalue("pg_cluster")
        url = cluster.url(cluster.createdb("health"))
    seed(backend, url)
    conn = Target.from_url(url).connect(autocommit=True)
    for s in ATTEMPTS_SQLITE if backend == "sqlite" else ATTEMPTS_PG:
        conn.execute(s)
    conn.close()
    return make_project(tmp_path / "proj", backend, url, SCENARIOS["forward"])


@pytest.fixture(params=["sqlite", "postgresql"])
def proj(request: pytest.FixtureRequest, tmp_path: Path) -> Project:
    return new_project(tmp_path, request.param, request)


def set_health(proj: Project, body: str) -> None:
    text = proj.config.read_text()
    assert HEALTH in text
    proj.config.write_text(text.replace(HEALTH, "\n[health]\n" + body))


def test_start_honours_retries_and_interval(proj: Project) -> None:
    # Neither value is the default (2 retries, 1 s apart): a check that passes on its fifth
    # attempt passes only if both reached the run.
    sql = ready_at(proj.backend, 5)
    set_health(proj, f'retries = 4\ninterval = 0\nchecks = [{{ name = "ready", '
                     f'sql = "{sql}", expect = "{READY[proj.backend]}" }}]\n')
    r = proj.cli("start", "--to", "v2.6")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "    ok    health: ready passed" in r.stdout
    run = command.status(proj.settings())
    [step] = [s for s in run.steps if s.kind == "health"]
    assert step.result == {"checks": [{"name": "ready", "ok": True, "attempts": 5,
                                   "kind": "sql"}]}
    at = attempt_times(proj.target())
    assert len(at) == 5
    assert all(b - a < 0.9 for a, b in itertools.pairwise(at)), at


def test_start_fails_a_check_over_its_timeout_and_rolls_back(proj: Project) -> None:
    sql = SLOW[proj.backend]
    set_health(proj, f'retries = 0\ntimeout = 1\nchecks = [{{ name = "slow", sql = "{sql}" }}]\n')
    before = proj.fingerprint()
    t0 = time.monotonic()
    r = proj.cli("start", "--to", "v2.6")
    elapsed = time.monotonic() - t0
    assert r.returncode == 1, r.stdout + r.stderr
    assert ("    FAIL  health: health check 'slow' failed after 1 attempt: timed out after 1s"
            in r.stdout), r.stdout
    assert command.status(proj.settings()).state == "rolled_back"
    assert proj.applied_ids() == [] and proj.fingerprint() == before
    assert elapsed < 60


BAD_SETTINGS = [
    ("retries = -1\n", "[health] retries must be an integer from 0 to 100, not -1"),
    ("retries = 101\n", "[health] retries must be an integer from 0 to 100, not 101"),
    ("timeout = 0\n", "[health] timeout must be between 1ms and 1h, not 0"),
    ("timeout = 3601\n", "[health] timeout must be between 1ms and 1h, not 3601"),
    ("interval = 601\n", "[health] interval must be between 0s and 10m, not 601"),
]


def test_bad_health_settings_stop_plan_and_start_with_one_line_exit_2(
        tmp_path: Path, request: pytest.FixtureRequest) -> None:
    # validated before the target is touched, so one backend shows it
    proj = new_project(tmp_path, "sqlite", request)
    before, original = proj.fingerprint(), proj.config.read_text()
    runner = CliRunner(env={"STATEKEEPER_CONFIG": None, "STATEKEEPER_FAILPOINT": None})
    for body, message in BAD_SETTINGS:
        set_health(proj, body + 'checks = [{ name = "one", sql = "SELECT 1" }]\n')
        for args in (["plan", "--to", "v2.6"], ["start", "--to", "v2.6"]):
            r = runner.invoke(cli, ["--config", str(proj.config), *args])
            assert r.exit_code == 2, r.output
            assert r.stderr == f"error: {proj.config}: {message}\n"
        proj.config.write_text(original)
    assert command.history(proj.settings()) == []
    assert proj.fingerprint() == before
