"""Start-up cost of the command line: ``statekeeper --help`` (and any command's ``--help``)
must not import the heavy dependencies. SQLAlchemy, psycopg, cryptography and transitions
cost ~250 ms together; a command imports them when it runs (see cli/main.py).
benchmarks/upgrade_bench.py measures the cold start itself."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import click
import pytest

from tests.upgrade_support import ROOT

HEAVY = ("sqlalchemy", "psycopg", "cryptography", "transitions", "ledger",
         "statekeeper.migrations", "statekeeper.replay", "statekeeper.upgrade")

# Runs the real entry point, then lists every module that was imported, on stderr.
PROBE = (
    "import atexit, sys\n"
    "atexit.register(lambda: sys.stderr.write('\\n'.join(sorted(sys.modules)) + '\\n'))\n"
    "sys.argv = ['statekeeper', *sys.argv[1:]]\n"
    "from cli.main import main\n"
    "main()\n"
)


def heavy_modules(args: list[str]) -> list[str]:
    p = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True,
                       cwd=ROOT, timeout=60)
    assert p.returncode == 0, p.stdout + p.stderr
    loaded = p.stderr.split()
    return [m for m in loaded if any(m == h or m.startswith(h + ".") for h in HEAVY)]


def command_paths() -> list[list[str]]:
    from cli.main import cli

    paths: list[list[str]] = []

    def walk(cmd: click.Command, path: list[str]) -> None:
        paths.append(path)
        if isinstance(cmd, click.Group):
            for name, sub in sorted(cmd.commands.items()):
                walk(sub, [*path, name])

    walk(cli, [])
    return paths


def test_help_of_the_root_imports_nothing_heavy() -> None:
    assert heavy_modules(["--help"]) == []
    assert heavy_modules(["--version"]) == []


@pytest.mark.parametrize("path", command_paths(), ids=lambda p: " ".join(p) or "statekeeper")
def test_help_of_every_command_imports_nothing_heavy(path: list[str]) -> None:
    assert heavy_modules([*path, "--help"]) == []


def test_a_command_that_runs_still_maps_ledger_errors(tmp_path: Any) -> None:
    """Errors of the lazily imported ledger still become their documented exit codes."""
    bad = tmp_path / "bad.jsonl"
    bad.write_text("not json\n")
    p = subprocess.run([sys.executable, "-m", "cli", "ledger", "verify-export", str(bad)],
                       capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert p.returncode in (2, 4), p.stdout + p.stderr
    assert p.stderr.startswith("error: "), p.stderr
    assert "Traceback" not in p.stderr


def test_command_module_keeps_the_migration_types() -> None:
    from statekeeper import command, migrations

    for name in ("AppliedMigration", "Migration", "MigrationStatus", "Migrator", "Tag"):
        assert getattr(command, name) is getattr(migrations, name)
    with pytest.raises(AttributeError):
        _ = command.no_such_name  # type: ignore[attr-defined]


def test_main_keeps_exit_codes_and_output(tmp_path: Any) -> None:
    """main() freezes the heap at exit (skips the last garbage collection): the exit code and
    everything printed survive, for success, usage errors and library errors alike."""
    main = [sys.executable, "-c", "from cli.main import main; main()"]
    p = subprocess.run([*main, "--version"], capture_output=True, text=True, cwd=ROOT)
    assert p.returncode == 0 and p.stdout.startswith("statekeeper, version"), p
    p = subprocess.run([*main, "--config", str(tmp_path / "none.toml"), "status"],
                       capture_output=True, text=True, cwd=ROOT)
    assert p.returncode == 2 and p.stderr.startswith("error: "), p
    p = subprocess.run([*main, "start"], capture_output=True, text=True, cwd=ROOT)
    assert p.returncode == 2 and "--to" in p.stderr, p
