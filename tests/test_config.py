"""Loading statekeeper.toml: a byte order mark, unknown keys and sections, [deploy], types,
``${ENV}`` interpolation (percent-encoded inside URLs, malformed references refused) and URLs
checked up front. Every refusal is one line naming the file, and exit 2 from the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import quote

import pytest

from statekeeper.config import SCHEMA, load_config
from statekeeper.errors import ConfigError
from statekeeper.targets import Target
from tests.upgrade_support import ROOT

# Every character that means something in a URL, and a space.
NASTY = "Xs3crQ@Hunt3rZ/#%:? Pw0rd&=+;K'\"\\"


def write(tmp_path: Path, text: str | bytes) -> Path:
    p = tmp_path / "statekeeper.toml"
    if isinstance(text, bytes):
        p.write_bytes(text)
    else:
        p.write_text(text, encoding="utf-8")
    return p


def load(tmp_path: Path, text: str | bytes, **env: str):  # type: ignore[no-untyped-def]
    return load_config(str(write(tmp_path, text)), env=env, cwd=tmp_path)


def refused(tmp_path: Path, text: str | bytes, **env: str) -> str:
    with pytest.raises(ConfigError) as ei:
        load(tmp_path, text, **env)
    msg = str(ei.value)
    assert "\n" not in msg and str(tmp_path / "statekeeper.toml") in msg, msg
    return msg


def cli(
    tmp_path: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    e = dict(os.environ, PYTHONPATH=str(ROOT), **(env or {}))
    return subprocess.run([sys.executable, "-m", "cli", *args], cwd=tmp_path, env=e,
                          capture_output=True, text=True, timeout=60)


# -- the file itself ---------------------------------------------------------------------------
def test_a_utf8_byte_order_mark_is_accepted(tmp_path: Path) -> None:
    cfg = load(tmp_path, b'\xef\xbb\xbf[upgrade]\napplication = "tr\xc3\xa4ding"\n')
    assert cfg.raw["upgrade"]["application"] == "träding"


def test_a_byte_order_mark_is_accepted_by_the_cli(tmp_path: Path) -> None:
    write(tmp_path, b'\xef\xbb\xbf[migrations]\ndir = "nowhere"\n')
    p = cli(tmp_path, "--config", "statekeeper.toml", "migrate", "status",
            "--target", f"sqlite:///{tmp_path / 'x.db'}")
    # Past the TOML parser: the error is about the directory the file names.
    assert p.returncode == 2 and "[migrations] dir" in p.stderr and "nowhere" in p.stderr, p.stderr


def test_not_utf8_and_not_toml_are_one_line_each(tmp_path: Path) -> None:
    assert "not UTF-8" in refused(tmp_path, b'[upgrade]\napplication = "\xff"\n')
    assert "not valid TOML" in refused(tmp_path, "[upgrade\n")
    assert "not valid TOML" in refused(tmp_path, b"\xef\xbb\xbf\xef\xbb\xbf[upgrade]\n")


# -- keys ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("section", sorted(SCHEMA))
def test_an_unknown_key_is_refused_in_every_section(tmp_path: Path, section: str) -> None:
    msg = refused(tmp_path, f"[{section}]\nno_such_key = 1\n")
    assert f"unknown key [{section}] no_such_key" in msg


def test_an_unknown_section_is_refused(tmp_path: Path) -> None:
    msg = refused(tmp_path, "[ledgr]\nurl = 'sqlite:///x.db'\n")
    assert "unknown section [ledgr]" in msg


def test_a_key_with_a_newline_in_its_name_is_named_on_one_line(tmp_path: Path) -> None:
    msg = refused(tmp_path, '[backup]\n"evil\\nkey" = 1\n')
    assert 'unknown key [backup] "evil\\nkey"' in msg


@pytest.mark.parametrize(("body", "words"), [
    ("[deploy]\n", "[deploy] releases_dir is not set"),
    ('[deploy.hooks]\nx = 1\n', "unknown key [deploy] hooks"),
    ('[deploy]\nreleases_dir = "r"\nconfig_files = "a.env"\n',
     "[deploy] config_files must be an array, not string"),
])
def test_bad_deploy_is_refused(tmp_path: Path, body: str, words: str) -> None:
    assert words in refused(tmp_path, body)


def test_bad_deploy_is_exit_2_from_the_cli(tmp_path: Path) -> None:
    write(tmp_path, '[deploy]\nreleases = "releases"\n')
    p = cli(tmp_path, "--config", "statekeeper.toml", "history")
    assert p.returncode == 2, p.stderr
    assert p.stderr.count("\n") == 1 and "unknown key [deploy] releases" in p.stderr
    assert "Traceback" not in p.stderr


@pytest.mark.parametrize(("body", "words"), [
    ("[backup]\nenabled = 1\n", "must be a boolean, not integer"),
    ("[health]\nretries = true\n", "must be an integer, not boolean"),
    ("[health]\ninterval = [1]\n", "must be a number or string, not array"),
    ("[target]\nurl = 5\n", "must be a string, not integer"),
    ("[health]\nchecks = 'SELECT 1'\n", "must be an array, not string"),
    ("[backup]\ndir = 1979-05-27\n", "must be a string, not date"),
    ("ledger = 1\n", "[ledger] must be a table"),
])
def test_wrong_types_are_refused(tmp_path: Path, body: str, words: str) -> None:
    assert words in refused(tmp_path, body)


def test_health_accepts_its_four_keys(tmp_path: Path) -> None:
    cfg = load(tmp_path, "[health]\nchecks = []\nretries = 2\ninterval = 0.5\ntimeout = 3\n")
    assert cfg.raw["health"] == {"checks": [], "retries": 2, "interval": 0.5, "timeout": 3}


# -- ${ENV} -----------------------------------------------------------------------------------
def test_a_missing_variable_names_the_file_key_and_variable(tmp_path: Path) -> None:
    msg = refused(tmp_path, '[backup]\ndir = "${BACKUP_ROOT}/x"\n')
    assert "[backup] dir" in msg and "BACKUP_ROOT is not set" in msg


@pytest.mark.parametrize("value", ["${APP-PASSWORD}", "${}", "${1X}", "${X", "pre${ X}"])
def test_a_malformed_reference_is_refused_not_kept_literally(tmp_path: Path, value: str) -> None:
    msg = refused(tmp_path, f'[backup]\nstop_command = "{value}"\n', X="x")
    assert "malformed ${...} reference" in msg and "[backup] stop_command" in msg


def test_double_dollar_is_a_literal_reference_and_values_are_not_rescanned(
    tmp_path: Path,
) -> None:
    cfg = load(tmp_path, '[backup]\nstop_command = "stop $${UNIT:-pg} ${A} $B"\n', A="${B}")
    assert cfg.backup.stop_command == "stop ${UNIT:-pg} ${B} $B"


def test_a_password_inside_a_url_is_percent_encoded(tmp_path: Path) -> None:
    cfg = load(tmp_path,
               '[target]\nurl = "postgresql://app:${PW}@db.internal:6432/trading"\n'
               '[ledger]\nurl = "postgresql://${U}:${PW}@db.internal/audit?sslmode=${MODE}"\n',
               PW=NASTY, U="aud it@x", MODE="verify-full")
    t = Target.from_url(str(cfg.target_url))
    assert t.url.password == NASTY and t.url.username == "app"
    assert t.url.host == "db.internal" and t.url.port == 6432 and t.database == "trading"
    lg = Target.from_url(cfg.ledger.url)
    assert lg.url.password == NASTY and lg.url.username == "aud it@x"
    assert lg.url.host == "db.internal" and dict(lg.url.query) == {"sslmode": "verify-full"}
    for shown in (t.display, t.shown, lg.display):
        assert "Hunt3rZ" not in shown and quote(NASTY, safe="") not in shown


def test_variables_in_the_database_name_and_query_are_encoded(tmp_path: Path) -> None:
    cfg = load(tmp_path, '[target]\nurl = "postgresql://db/${DB}?application_name=${APP}"\n',
               DB="my db?#1", APP="a&b=c+d")
    t = Target.from_url(str(cfg.target_url))
    assert t.database == "my db?#1" and dict(t.url.query) == {"application_name": "a&b=c+d"}


def test_a_sqlite_path_from_the_environment_keeps_its_slashes(tmp_path: Path) -> None:
    data = tmp_path / "we?ird #dir"
    cfg = load(tmp_path, '[target]\nurl = "sqlite:///${DATA}/app.db"\n', DATA=str(data))
    assert Target.from_url(str(cfg.target_url)).sqlite_path == data / "app.db"


def test_a_sqlite_url_whose_path_starts_in_a_variable(tmp_path: Path) -> None:
    """Taken as it is (SQLAlchemy's rule applies: sqlite:// + /abs is relative, + //abs is not)."""
    cfg = load(tmp_path, '[target]\nurl = "sqlite://${DB_PATH}"\n', DB_PATH="//srv/a b.db")
    assert cfg.target_url == "sqlite:////srv/a b.db"
    assert Target.from_url(cfg.target_url).sqlite_path == Path("/srv/a b.db")


def test_a_whole_url_from_the_environment_is_taken_as_it_is(tmp_path: Path) -> None:
    url = "postgresql://app:p%40ss@db:5433/trading"
    cfg = load(tmp_path, '[target]\nurl = "${DATABASE_URL}"\n', DATABASE_URL=url)
    assert cfg.target_url == url
    assert Target.from_url(url).url.password == "p@ss"


@pytest.mark.parametrize("host", ["db/evil", "a@b", "db?x", "d b", "db#", "db%2F"])
def test_a_host_that_would_change_the_url_is_refused_without_showing_it(
    tmp_path: Path, host: str
) -> None:
    msg = refused(tmp_path, '[target]\nurl = "postgresql://app@${H}:5432/db"\n', H=host)
    assert "${H} is used in the URL's host or port" in msg
    assert host not in msg


def test_host_and_port_variables_work(tmp_path: Path) -> None:
    cfg = load(tmp_path, '[target]\nurl = "postgresql://app@${H}:${P}/db"\n', H="10.0.0.7",
               P="6543")
    t = Target.from_url(str(cfg.target_url))
    assert (t.url.host, t.url.port) == ("10.0.0.7", 6543)


# -- URLs checked at load, the password never shown ----------------------------------------
@pytest.mark.parametrize(("url", "words"), [
    ("mysql://u:${PW}@h/db", "unsupported scheme"),
    ("postgresql://u:${PW}@h", "names no database"),
    ("postgresql://u:${PW}@h:notaport/db", "is not a database URL"),
    ("sqlite://", "needs a file path"),
    ("postgresql://u:${PW}@h/db?sslmode=a&sslmode=b", "given more than once"),
])
def test_a_bad_url_is_refused_at_load_naming_file_and_key(
    tmp_path: Path, url: str, words: str
) -> None:
    msg = refused(tmp_path, f'[target]\nurl = "{url}"\n', PW=NASTY)
    assert "[target] url" in msg and words in msg
    assert "Hunt3rZ" not in msg and "Xs3crQ" not in msg and "Pw0rd" not in msg


def test_a_password_expanded_into_a_parameter_name_is_not_shown(tmp_path: Path) -> None:
    """Found by tests/test_config_fuzz.py: ${PW} written in the query string, where libpq
    names the unknown parameter (the password) in its error."""
    for pw in ("Zq9Secr3tW@/#%", 'Zq9"Secr3tW', "Zq9Secr3tW%41"):
        msg = refused(tmp_path, '[target]\nurl = "postgresql://audit@db/app?${PW}sslmode=require"\n',
                      PW=pw)
        assert "Secr3tW" not in msg, msg
        assert msg.endswith("invalid connection option "
                            "(a name taken from the environment, not shown)"), msg


def test_an_unknown_connection_parameter_is_a_config_error_without_the_password() -> None:
    with pytest.raises(ConfigError) as ei:
        Target.from_url(f"postgresql://u:{quote(NASTY, safe='')}@h/db?sslmod=require")
    assert 'invalid connection option "sslmod"' in str(ei.value)
    assert "Hunt3rZ" not in str(ei.value)


def test_a_query_password_is_redacted_too() -> None:
    t = Target.from_url("postgresql://u@h/db?password=Hunt3rZ&sslpassword=Pw0rd")
    assert "Hunt3rZ" not in t.display + t.shown and "Pw0rd" not in t.display + t.shown
    assert "Hunt3rZ" not in t.client_conninfo() and "Pw0rd" not in t.client_conninfo()
    assert t.libpq_env()["PGPASSWORD"] == "Hunt3rZ"


def test_a_url_without_host_or_port_leaves_them_to_libpq() -> None:
    t = Target.from_url("postgresql://app@/trading")
    params = t.conn_params()
    assert "host" not in params and "port" not in params
    assert params["dbname"] == "trading" and params["user"] == "app"
    env = t.libpq_env()
    # the child inherits our PG* variables unchanged: it resolves them as our libpq does
    assert {k: v for k, v in env.items() if k.startswith("PG")} == {
        k: v for k, v in os.environ.items() if k.startswith("PG")
    }


@pytest.mark.parametrize("url", ["postgresql://app:Tr0ub@dor-and-3@db1/trading",
                                 "postgresql://app@x:Tr0ub@dor-and-3@db1:5432/trading"])
def test_an_unencoded_at_sign_in_a_password_is_refused_without_showing_it(url: str) -> None:
    from ledger import redact

    assert redact(url) == "postgresql://***"
    with pytest.raises(ConfigError) as e:
        Target.from_url(url)
    assert "dor-and-3" not in str(e.value) and "Tr0ub" not in str(e.value)
    assert str(e.value) == (
        "target URL 'postgresql://***': an '@' in its user name or password must be written "
        "%40 (as written, part of the password would be taken for the host)")
