"""[deploy] is validated up front: every bad value is one line naming the file and the key
(exit 2 from the CLI), and nothing is created."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from cli.main import cli
from statekeeper.config import load_config
from statekeeper.errors import ConfigError

GOOD = '[deploy]\nreleases_dir = "releases"\n'


def _load(tmp_path: Path, body: str) -> object:
    f = tmp_path / "statekeeper.toml"
    f.write_text(body)
    return load_config(str(f))


@pytest.mark.parametrize(("body", "message"), [
    ("[deploy]\n", '[deploy] releases_dir is not set (the directory holding one directory per '
                   'version, e.g. releases_dir = "releases")'),
    ('[deploy]\nreleases_dir = ""\n', "[deploy] releases_dir must be a non-empty string"),
    ("[deploy]\nreleases_dir = 3\n", "[deploy] releases_dir must be a string, not integer"),
    ('[deploy]\nreleases_dir = "~nosuchuser9/rel"\n', "[deploy] releases_dir: Could not "
     "determine home directory."),
    (GOOD + "release_dir = 'x'\n", "unknown key [deploy] release_dir (known: releases_dir, "
     "current_link, config_files, config_from, stop, start, timeout, command, rehearsal_stop, "
     "rehearsal_start)"),
    (GOOD + 'config_files = ["a.env", "a.env"]\n', "[deploy] config_files[1] 'a.env' is "
     "listed twice"),
    (GOOD + 'config_files = ["a/app.env", "b/app.env"]\nconfig_from = "releases/{version}"\n',
     "[deploy] config_files has two files named 'app.env': with config_from, each file's "
     "source is found by its name"),
    (GOOD + 'config_files = ["a.env"]\nconfig_from = "releases/config"\n',
     "[deploy] config_from must contain {version} once and no other braces (e.g. "
     "\"releases/{version}/config\"), not 'releases/config'"),
    (GOOD + 'config_from = "releases/{version}/config"\n',
     "[deploy] config_from is set but config_files is empty"),
    (GOOD + 'stop = "systemctl stop app"\n', "[deploy] start is not set: stop and start go "
     "together (the rollback stops the new release and starts the old one)"),
    (GOOD + 'stop = "x"\nstart = "sh -c \'unclosed"\n',
     "[deploy] start: cannot split the command: No closing quotation"),
    (GOOD + 'stop = "  "\nstart = "x"\n', "[deploy] stop: the command is empty"),
    (GOOD + 'timeout = "2 days"\n', '[deploy] timeout must be a duration such as "500ms", '
     '"2s" or "1m" (or a number of seconds), not \'2 days\''),
    (GOOD + '[[deploy.command]]\nrun = "x"\n', '[[deploy.command]] #1 needs undo = "..." '
     '(undo = "true" when nothing needs undoing)'),
    (GOOD + '[[deploy.command]]\nundo = "x"\n', '[[deploy.command]] #1 needs run = "..."'),
    (GOOD + '[[deploy.command]]\nrun = "x"\nundo = "y"\nretry = 1\n',
     "[[deploy.command]] #1 has unknown key retry (known: name, run, undo, timeout, "
     "rehearsal_run, rehearsal_undo)"),
    (GOOD + '[[deploy.command]]\nname = "a"\nrun = "x"\nundo = "y"\n'
     '[[deploy.command]]\nname = "a"\nrun = "x"\nundo = "y"\n',
     "[[deploy.command]] name 'a' is used twice"),
])
def test_bad_deploy_is_one_line_naming_file_and_key(tmp_path: Path, body: str,
                                                    message: str) -> None:
    with pytest.raises(ConfigError) as e:
        _load(tmp_path, body)
    assert str(e.value) == f"{tmp_path / 'statekeeper.toml'}: {message}"


def test_a_good_deploy_section_resolves_paths_and_keeps_commands_as_written(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOKEN", "s3cret")
    cfg = _load(tmp_path, GOOD + 'config_files = ["config/app.env"]\n'
                'config_from = "releases/{version}/config"\nstop = "bin/appctl stop"\n'
                'start = "bin/appctl start"\n[[deploy.command]]\nname = "warm"\n'
                'run = "curl -H \'X-Token: ${TOKEN}\' http://x"\nundo = "true"\ntimeout = 5\n')
    rc = cfg.release  # type: ignore[attr-defined]
    assert rc.releases_dir == tmp_path / "releases"
    assert rc.current_link == tmp_path / "current"
    assert rc.config_source("v2.6", rc.config_files[0]) == (
        tmp_path / "releases/v2.6/config/app.env")
    assert rc.link_target("v2.6") == "releases/v2.6"
    [c] = rc.commands
    assert c.run.argv == ("curl", "-H", "X-Token: s3cret", "http://x")
    assert c.run.text == "curl -H 'X-Token: ${TOKEN}' http://x"  # what the ledger records
    assert c.timeout_ms == 5000
    assert rc.timeout_ms == 60_000


def test_bad_deploy_exits_2_from_the_cli(tmp_path: Path) -> None:
    (tmp_path / "statekeeper.toml").write_text("[deploy]\n")
    r = CliRunner().invoke(cli, ["--config", str(tmp_path / "statekeeper.toml"), "status"])
    assert r.exit_code == 2
    assert "[deploy] releases_dir is not set" in r.output
    assert not (tmp_path / ".statekeeper").exists()
