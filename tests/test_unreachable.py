"""An unreachable ledger, for every command that opens it: exactly one line
``error: ledger unreachable: <where>: <reason>`` and exit 6 (nothing was done), never a
driver's multi-line dump or a traceback, never the password, and nothing done to the target.

Real subprocess runs of ``python -m cli`` against a closed port, a host that does not resolve,
a SQLite file in a missing directory and in one that cannot be written."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.pgcluster import free_port
from tests.upgrade_support import GOOD, ROOT, Project, make_project, seed

PASSWORD = "pw-s3cr3t"

# Every command that opens the ledger (reading, writing, signing, and the upgrade verbs).
READING = [["status"], ["history"], ["ledger", "verify"], ["keys", "list"]]
WRITING = [
    ["ledger", "append", "--stream", "s", "--type", "t"],
    ["ledger", "checkpoint", "--out", "cp.txt"],
    ["ledger", "export", "--out", "export.jsonl"],
    ["start", "--to", "v2.6"],
    ["resume"],
    ["rollback", "20260101-000000-abcdef"],
]


def cli(proj: Project, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STATEKEEPER_", "PG"))}
    env["PYTHONPATH"] = str(ROOT)
    return subprocess.run(
        [sys.executable, "-m", "cli", "--config", str(proj.config), *args],
        cwd=proj.dir, env=env, capture_output=True, text=True, timeout=120,
    )


def one_error(p: subprocess.CompletedProcess[str], code: int) -> str:
    assert p.returncode == code, (p.returncode, p.stdout, p.stderr)
    assert "Traceback" not in p.stderr and PASSWORD not in p.stdout + p.stderr
    lines = p.stderr.splitlines()
    assert len(lines) == 1, p.stderr
    return lines[0]


@pytest.fixture(scope="module")
def proj(tmp_path_factory: pytest.TempPathFactory) -> Project:
    """A SQLite target with a tagged schema and a working project (its own ledger is fine:
    the commands below point --ledger elsewhere)."""
    base = tmp_path_factory.mktemp("unreachable")
    (base / "app.db").touch()
    url = f"sqlite:///{base / 'app.db'}"
    seed("sqlite", url)
    return make_project(base / "proj", "sqlite", url, GOOD)


def _untouched(proj: Project, before: str) -> None:
    """Nothing ran: the target's fingerprint is the same, no backup, no checkpoint, no file."""
    assert proj.fingerprint().digest == before
    assert not (proj.dir / "backups").exists()
    assert not (proj.dir / ".statekeeper" / "checkpoints").exists()
    assert not (proj.dir / "cp.txt").exists() and not (proj.dir / "export.jsonl").exists()


@pytest.mark.parametrize("args", READING + WRITING, ids=" ".join)
def test_closed_port(proj: Project, args: list[str]) -> None:
    port = free_port()
    before = proj.fingerprint().digest
    p = cli(proj, "--ledger", f"postgresql://app:{PASSWORD}@127.0.0.1:{port}/ledger", *args)
    assert one_error(p, 6) == (
        f"error: ledger unreachable: postgresql://app:***@127.0.0.1:{port}/ledger: "
        f'connection to server at "127.0.0.1", port {port} failed: Connection refused'
    )
    _untouched(proj, before)


@pytest.mark.parametrize("args", [["status"], ["start", "--to", "v2.6"]], ids=" ".join)
def test_host_that_does_not_resolve(proj: Project, args: list[str]) -> None:
    before = proj.fingerprint().digest
    p = cli(proj, "--ledger", f"postgresql://app:{PASSWORD}@no-such-host.invalid/ledger", *args)
    line = one_error(p, 6)
    assert line.startswith(
        "error: ledger unreachable: postgresql://app:***@no-such-host.invalid/ledger: "
        "failed to resolve host 'no-such-host.invalid'"
    ), line
    _untouched(proj, before)


def test_password_in_the_query_is_not_shown_either(proj: Project) -> None:
    port = free_port()
    p = cli(proj, "--ledger", f"postgresql://app@127.0.0.1:{port}/ledger?password={PASSWORD}",
            "status")
    assert one_error(p, 6).startswith("error: ledger unreachable: postgresql://app@")


@pytest.mark.parametrize("args", READING + WRITING, ids=" ".join)
def test_sqlite_file_in_a_missing_directory(proj: Project, args: list[str]) -> None:
    before = proj.fingerprint().digest
    missing = proj.dir / "no" / "such"
    p = cli(proj, "--ledger", f"sqlite:///{missing}/ledger.db", *args)
    assert one_error(p, 6) == (
        f"error: ledger unreachable: sqlite:///{missing}/ledger.db: "
        f"directory {missing} does not exist"
    )
    assert not (proj.dir / "no").exists()  # nothing was created on the way
    _untouched(proj, before)


def _unwritable_dir(tmp_path: Path) -> Path:
    if os.geteuid() != 0:
        d = tmp_path / "ro"
        d.mkdir()
        d.chmod(0o500)
        return d
    # root writes anywhere a mode allows; sysfs refuses new files even to root
    d = Path("/sys/kernel")
    if not d.is_dir():
        pytest.skip("no directory that root cannot write to")
    return d


@pytest.mark.parametrize(
    "args", [["ledger", "append", "--stream", "s", "--type", "t"], ["start", "--to", "v2.6"]],
    ids=" ".join,
)
def test_sqlite_file_in_an_unwritable_directory(
    proj: Project, tmp_path: Path, args: list[str]
) -> None:
    before = proj.fingerprint().digest
    d = _unwritable_dir(tmp_path)
    p = cli(proj, "--ledger", f"sqlite:///{d}/ledger.db", *args)
    assert one_error(p, 6) == (
        f"error: ledger unreachable: sqlite:///{d}/ledger.db: "
        f"cannot create {d}/ledger.db: Permission denied"
    )
    assert not (d / "ledger.db").exists()
    _untouched(proj, before)


def test_the_library_raises_one_typed_error(tmp_path: Path) -> None:
    """The translation is in the ledger itself (where it connects), not in the CLI."""
    import ledger
    from ledger.errors import LedgerUnreachable, OperationalError

    port = free_port()
    with pytest.raises(LedgerUnreachable) as ei:
        ledger.Ledger(f"postgresql://app:{PASSWORD}@127.0.0.1:{port}/ledger", create=False)
    assert isinstance(ei.value, OperationalError)  # older `except OperationalError` still hold
    assert PASSWORD not in str(ei.value) and "\n" not in str(ei.value)
    assert ei.value.where == f"postgresql://app:***@127.0.0.1:{port}/ledger"
    with pytest.raises(LedgerUnreachable, match="does not exist"):
        ledger.Ledger(f"sqlite:///{tmp_path}/none/ledger.db")
