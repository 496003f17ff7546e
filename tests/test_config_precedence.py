"""Flags > environment (STATEKEEPER_*) > statekeeper.toml > defaults; ``config show`` says
where each value came from and never shows a secret; ``--target`` on the upgrade verbs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from cli.main import cli
from statekeeper.config import ENV_KEYS, load_config
from statekeeper.errors import ConfigError
from statekeeper.settings import Settings
from statekeeper.showconfig import mask, mask_url
from tests.upgrade_support import SCENARIOS, make_project, seed

CLEAN = {v: None for v in (*ENV_KEYS, "STATEKEEPER_CONFIG", "STATEKEEPER_FAILPOINT")}


def sk(cwd: Path, *args: str, env: dict[str, str] | None = None) -> Result:
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(cwd)
        r = CliRunner(env={**CLEAN, **(env or {})}).invoke(cli, list(args),
                                                           prog_name="statekeeper")
    if r.exception is not None and not isinstance(r.exception, SystemExit):
        raise AssertionError(f"statekeeper {' '.join(args)} raised") from r.exception
    return r


def one_error(r: Result) -> str:
    assert r.exit_code == 2, (r.exit_code, r.output)
    lines = r.stderr.splitlines()
    assert len(lines) == 1, r.stderr
    return lines[0]


@pytest.fixture
def proj_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for var in CLEAN:
        monkeypatch.delenv(var, raising=False)
    d = tmp_path / "p"
    d.mkdir()
    (d / "statekeeper.toml").write_text(
        '[ledger]\nurl = "sqlite:///file-ledger.db"\n'
        '[target]\nurl = "postgresql://app:${SK_T_PW}@db.example/app?sslpassword=lit3ral"\n'
        '[migrations]\ndir = "mig"\n'
        '[health]\nchecks = [{ name = "api", http = "http://u:t0ken@127.0.0.1:1/h" }]\n'
    )
    (d / "mig").mkdir()
    return d


def test_each_layer_overrides_the_one_below(proj_dir: Path, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    env = {"SK_T_PW": "pw"}
    cfg = load_config(cwd=proj_dir, env=env)
    assert cfg.target_url == "postgresql://app:pw@db.example/app?sslpassword=lit3ral"
    assert cfg.origins["target.url"] == ("file", str(proj_dir / "statekeeper.toml"))
    assert "ledger.key" not in cfg.origins  # the default
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    # the environment over the file; a relative SQLite path is relative to the working dir
    monkeypatch.chdir(elsewhere)
    toml = str(proj_dir / "statekeeper.toml")
    cfg = load_config(toml, cwd=elsewhere, env={**env, "STATEKEEPER_TARGET_URL": "sqlite:///t.db",
                                         "STATEKEEPER_MIGRATIONS_DIR": "m2"})
    assert cfg.target_url == f"sqlite:///{elsewhere / 't.db'}"
    assert cfg.origins["target.url"] == ("env", "STATEKEEPER_TARGET_URL")
    assert cfg.migrations_dir == elsewhere / "m2"
    # a key set from the environment is not interpolated from the file: its ${VAR} may be unset
    assert load_config(cwd=proj_dir, env={"STATEKEEPER_TARGET_URL": "sqlite:///t.db"})
    with pytest.raises(ConfigError, match="SK_T_PW is not set"):
        load_config(cwd=proj_dir, env={})
    # a flag over the environment
    monkeypatch.setenv("STATEKEEPER_TARGET_URL", "sqlite:///from-env.db")
    monkeypatch.setenv("STATEKEEPER_LEDGER_URL", "sqlite:///env-ledger.db")
    s = Settings.load(str(proj_dir / "statekeeper.toml"), key="k.pem",
                      target_url="sqlite:///from-flag.db")
    assert s.config.target_url == f"sqlite:///{elsewhere / 'from-flag.db'}"
    assert s.config.origins["target.url"] == ("flag", "--target")
    assert s.ledger_url == f"sqlite:///{elsewhere / 'env-ledger.db'}"
    assert s.config.origins["ledger.url"] == ("env", "STATEKEEPER_LEDGER_URL")
    assert s.key_path == elsewhere / "k.pem"


@pytest.mark.parametrize(("env", "args", "expected"), [
    ({"STATEKEEPER_TARGET_URL": ""}, [],
     "error: environment variable STATEKEEPER_TARGET_URL is empty (unset it to use [target] url)"),
    ({"STATEKEEPER_LEDGER_URL": "mysql://u:hunter2@h/x"}, [],
     "error: environment variable STATEKEEPER_LEDGER_URL 'mysql://u:***@h/x': unsupported "
     "scheme 'mysql'"),
    ({"STATEKEEPER_TARGET_URL": "postgresql://u:hunter2@h:notaport/x"}, [],
     "error: environment variable STATEKEEPER_TARGET_URL 'postgresql://***' is not a database "
     "URL"),
    ({}, ["--target", ""], "error: --target URL is empty (leave it out to use [target] url)"),
    ({}, ["--target", "nonsense"], "error: --target URL '***' is not a database URL"),
    ({"STATEKEEPER_LEDGER_KEY": " "}, [], "error: environment variable STATEKEEPER_LEDGER_KEY "
     "is empty (unset it to use [ledger] key)"),
])
def test_bad_flag_or_variable_is_one_line_naming_it(proj_dir: Path, env: dict[str, str],
                                                    args: list[str], expected: str) -> None:
    line = one_error(sk(proj_dir, "config", "show", *args, env={"SK_T_PW": "x", **env}))
    assert line.startswith(expected)
    assert "hunter2" not in line


def test_migrations_dir_from_the_environment_is_named_when_missing(tmp_path: Path) -> None:
    (tmp_path / "app.db").touch()
    url = f"sqlite:///{tmp_path / 'app.db'}"
    seed("sqlite", url)
    proj = make_project(tmp_path / "proj", "sqlite", url, SCENARIOS["forward"])
    r = sk(proj.dir, "plan", "--to", "v2.6", env={"STATEKEEPER_MIGRATIONS_DIR": "nope"})
    assert one_error(r) == (f"error: environment variable STATEKEEPER_MIGRATIONS_DIR "
                            f"{proj.dir / 'nope'} is not a directory")


def test_config_show_names_origins_and_masks_secrets(proj_dir: Path) -> None:
    env = {"SK_T_PW": "hunter2", "STATEKEEPER_LEDGER_URL": "postgresql://l:s3cr3t@lh/ledger"}
    r = sk(proj_dir, "--key", "flag.pem", "config", "show", "--json", env=env)
    assert r.exit_code == 0, r.output
    for secret in ("hunter2", "s3cr3t", "lit3ral", "t0ken"):
        assert secret not in r.output
    data = json.loads(r.stdout)
    v = data["values"]
    assert data["file"] == str(proj_dir / "statekeeper.toml")
    assert data["file_from"] == "the working directory"
    assert v["target.url"] == {
        "value": "postgresql://app:${SK_T_PW}@db.example/app?sslpassword=***",
        "origin": "file", "source": str(proj_dir / "statekeeper.toml"), "resolved": None}
    assert v["ledger.url"]["value"] == "postgresql://l:***@lh/ledger"
    assert (v["ledger.url"]["origin"], v["ledger.url"]["source"]) == (
        "env", "STATEKEEPER_LEDGER_URL")
    assert v["ledger.key"]["origin"] == "flag" and v["ledger.key"]["source"] == "--key"
    assert v["migrations.dir"]["value"] == "mig"
    assert v["migrations.dir"]["resolved"] == str(proj_dir / "mig")
    assert v["backup.method"] == {"value": "pg_dump", "origin": "default", "source": None,
                                  "resolved": None}
    assert v["health.checks"]["value"] == [{"name": "api", "http": "http://u:***@127.0.0.1:1/h"}]
    text = sk(proj_dir, "config", "show", env=env).stdout
    for secret in ("hunter2", "s3cr3t", "lit3ral", "t0ken"):
        assert secret not in text
    assert 'target.url               = "postgresql://app:${SK_T_PW}@db.example/app?' in text
    assert "# env STATEKEEPER_LEDGER_URL" in text
    assert "# -> " + str(proj_dir / "mig") in text
    toml = str(proj_dir / "statekeeper.toml")
    for args, e, found in ((["--config", toml], {}, "--config"),
                           ([], {"STATEKEEPER_CONFIG": toml}, "env STATEKEEPER_CONFIG")):
        first = sk(proj_dir, *args, "config", "show", env={**env, **e}).stdout.splitlines()[0]
        assert first == f"# configuration file: {toml} (from {found})"


def test_config_show_without_a_file_lists_the_defaults(tmp_path: Path) -> None:
    r = sk(tmp_path, "config", "show")
    assert r.exit_code == 0, r.output
    assert r.stdout.splitlines()[0] == "# configuration file: (none: defaults)"
    assert "target.url               = (not set)  # unset" in r.stdout
    assert 'ledger.url               = "sqlite:///.statekeeper/ledger.db"  # default' in r.stdout


@pytest.mark.parametrize(("url", "shown"), [
    ("postgresql://u:p@ss@h/db", "postgresql://u:***@h/db"),
    ("postgresql://u:${A}${B}@h/db", "postgresql://u:${A}${B}@h/db"),
    ("postgresql://u:x${A}@h/db", "postgresql://u:***@h/db"),
    ("postgresql://u@h/db?password=x&sslmode=require",
     "postgresql://u@h/db?password=***&sslmode=require"),
    ("postgresql://h/db?sslmode=require&PASSWORD=${P}",
     "postgresql://h/db?sslmode=require&PASSWORD=${P}"),
    ("sqlite:///rel/app.db", "sqlite:///rel/app.db"),
    ("postgresql+psycopg://u:pw@h/db", "postgresql+psycopg://u:***@h/db"),
])
def test_mask_url_keeps_the_url_as_written(url: str, shown: str) -> None:
    assert mask_url(url) == shown


def test_mask_secret_keys_at_any_depth() -> None:
    assert mask({"a": [{"token": "abc", "password": "${PW}", "name": "x"}]}) == {
        "a": [{"token": "***", "password": "${PW}", "name": "x"}]}


def _sqlite_project(tmp_path: Path, health: str | None = None):  # type: ignore[no-untyped-def]
    (tmp_path / "app.db").touch()
    url = f"sqlite:///{tmp_path / 'app.db'}"
    seed("sqlite", url)
    kw = {} if health is None else {"health": health}
    proj = make_project(tmp_path / "proj", "sqlite", url, SCENARIOS["forward"], **kw)
    return proj, url


def test_target_flag_on_plan_start_resume_rollback(tmp_path: Path) -> None:
    proj, url = _sqlite_project(tmp_path)
    # the file's target cannot even be interpolated: only --target makes these commands work
    text = proj.config.read_text().replace(f'url = "{url}"',
                                           'url = "postgresql://app@${SK_NO_SUCH_VAR}/app"')
    proj.config.write_text(text)
    assert "SK_NO_SUCH_VAR is not set" in one_error(sk(proj.dir, "plan", "--to", "v2.6"))
    r = sk(proj.dir, "plan", "--to", "v2.6", "--target", url)
    assert r.exit_code == 0, r.output
    assert f"on sqlite:///{tmp_path / 'app.db'}" in r.stdout.splitlines()[0]
    r = sk(proj.dir, "start", "--to", "v2.6", "--target", url)
    assert r.exit_code == 0, r.output
    run_id = r.stdout.splitlines()[-1].split()[1].rstrip(":")
    other = tmp_path / "other.db"
    other.touch()
    assert one_error(sk(proj.dir, "resume", "--target", f"sqlite:///{other}")) == (
        "error: no unfinished run on this target to resume")
    line = one_error(sk(proj.dir, "rollback", run_id, "--target", f"sqlite:///{other}",
                        "--reason", "test"))
    assert line.startswith(f"error: run {run_id} upgraded ") and str(other) in line
    r = sk(proj.dir, "rollback", run_id, "--target", url, "--reason", "test")
    assert r.exit_code == 0, r.output
    assert r.stdout.splitlines()[-1].endswith("rolled_back")


def test_plan_warns_when_there_are_no_health_checks(tmp_path: Path) -> None:
    proj, _ = _sqlite_project(tmp_path, health="")
    r = sk(proj.dir, "plan", "--to", "v2.6")
    assert r.exit_code == 0, r.output
    assert r.stderr.startswith("warning: no health checks: nothing verifies the new version")
    assert "health checks: none" in r.stdout
    r = sk(proj.dir, "start", "--to", "v2.6")
    assert "ok    health: no checks configured, nothing was checked" in r.stdout


def test_init_writes_toml_it_then_accepts(tmp_path: Path) -> None:
    r = sk(tmp_path, "init", "--migrations", "db\\migrations", "--target", 'sqlite:///a"b.db')
    assert r.exit_code == 0, r.output
    text = (tmp_path / "statekeeper.toml").read_text()
    assert "[upgrade]\n# application" in text and "# [health]\n# checks = [" in text
    cfg = load_config(cwd=tmp_path, env={})
    assert cfg.migrations_dir == tmp_path / "db\\migrations" and cfg.migrations_dir.is_dir()
    assert cfg.target_url == 'sqlite:///a"b.db'
    # the commented sections are valid TOML once uncommented
    import tomllib
    body = "\n".join(line[2:] if line.startswith("# ") and not line.startswith("# [") else line
                     for line in text.splitlines() if not line.startswith("# statekeeper")
                     and not line.startswith("# Precedence") and not line.startswith("# Health"))
    body = body.replace("# [health]", "[health]")
    assert tomllib.loads(body)["health"]["retries"] == 2


@pytest.mark.parametrize(("args", "expected"), [
    (["--target", "mysql://u:hunter2@h/db"], "error: --target URL 'mysql://u:***@h/db': "
     "unsupported scheme 'mysql'"),
    (["--target", " "], "error: --target URL is empty"),
    (["--migrations", ""], "error: --migrations is empty"),
])
def test_init_refuses_a_bad_flag_before_writing_anything(tmp_path: Path, args: list[str],
                                                         expected: str) -> None:
    assert one_error(sk(tmp_path, "init", *args)).startswith(expected)
    assert list(tmp_path.iterdir()) == []


def test_version_and_completion(tmp_path: Path) -> None:
    from statekeeper._version import __version__

    for flag in ("-V", "--version"):
        r = sk(tmp_path, flag)
        assert (r.exit_code, r.stdout) == (0, f"statekeeper, version {__version__}\n")
    for shell, marker in (("bash", "_STATEKEEPER_COMPLETE=bash_complete"),
                          ("zsh", "_STATEKEEPER_COMPLETE=zsh_complete"),
                          ("fish", "_STATEKEEPER_COMPLETE=fish_complete")):
        r = sk(tmp_path, "completion", shell)
        assert r.exit_code == 0 and marker in r.stdout, r.output
    r = sk(tmp_path, "completion", "tcsh")
    assert r.exit_code == 2 and "'tcsh' is not one of" in r.stderr


@pytest.mark.parametrize("argv", [["migrate", "status", "--dir", "mig"], ["backup", "list"]])
def test_an_empty_target_flag_is_refused_by_migrate_and_backup(proj_dir: Path,
                                                               argv: list[str]) -> None:
    r = sk(proj_dir, *argv, "--target", "", env={"SK_T_PW": "x"})
    assert one_error(r) == "error: --target URL is empty (leave it out to use [target] url)"
