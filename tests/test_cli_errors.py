"""The one error boundary: statekeeper's verbs raise only statekeeper's tree (ledger's errors
and stray OSErrors translated once, chained), and the CLI maps only that tree."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

import ledger.errors as le
from statekeeper import command, errors
from statekeeper.errors import error_boundary

ROOT = Path(__file__).resolve().parent.parent

LEDGER_ERRORS = [
    (le.IntegrityViolation(7, "hash mismatch", "stored hash does not match the event"),
     errors.IntegrityError, errors.EXIT_INTEGRITY,
     {"seq": 7, "reason": "hash mismatch", "detail": "stored hash does not match the event"}),
    (le.ConfigurationError("--ledger URL: not a URL"), errors.ConfigError, errors.EXIT_USAGE, {}),
    (le.KeyFileError("key.pem: mode 0644"), errors.ConfigError, errors.EXIT_USAGE, {}),
    (le.StreamConflict("s", 2, 3), errors.StreamConflict, errors.EXIT_LOCKED,
     {"stream": "s", "expected": 2, "actual": 3}),
    (le.LedgerUnreachable("sqlite:///x/l.db", "directory x does not exist"),
     errors.LedgerUnreachable, errors.EXIT_UNREACHABLE,
     {"where": "sqlite:///x/l.db", "reason": "directory x does not exist"}),
    (le.OperationalError("server closed the connection"), errors.LedgerUnavailable,
     errors.EXIT_ATTENTION, {}),
    (le.LedgerError("something else"), errors.NeedsAttention, errors.EXIT_ATTENTION, {}),
]


@pytest.mark.parametrize("original, cls, code, attrs", LEDGER_ERRORS,
                         ids=[type(e[0]).__name__ for e in LEDGER_ERRORS])
def test_ledger_errors_are_translated_chained(
    original: le.LedgerError, cls: type[errors.StatekeeperError], code: int,
    attrs: dict[str, object],
) -> None:
    with pytest.raises(errors.StatekeeperError) as ei, error_boundary():
        raise original
    assert type(ei.value) is cls
    assert str(ei.value) == str(original)
    assert ei.value.__cause__ is original
    assert errors.exit_code_for(ei.value) == ei.value.exit_code == code
    for k, v in attrs.items():
        assert getattr(ei.value, k) == v


def test_a_stray_os_error_names_its_file(tmp_path: Path) -> None:
    with pytest.raises(errors.OSFailure) as ei, error_boundary():
        (tmp_path / "none" / "x").read_text()
    assert str(ei.value) == f"{tmp_path / 'none' / 'x'}: No such file or directory"
    assert isinstance(ei.value.__cause__, FileNotFoundError)
    assert (ei.value.filename, ei.value.exit_code) == (str(tmp_path / "none" / "x"), 3)
    with pytest.raises(errors.OSFailure, match=r"^Broken pipe$"), error_boundary():
        raise BrokenPipeError(32, "Broken pipe")


def test_statekeeper_errors_and_bugs_pass_unchanged() -> None:
    own = errors.BackupCorrupt("artifact differs")
    with pytest.raises(errors.BackupCorrupt) as ei, error_boundary():
        raise own
    assert ei.value is own and ei.value.__cause__ is None
    with pytest.raises(KeyError), error_boundary():
        raise KeyError("a bug stays a bug (the CLI calls it unexpected)")


def test_the_decorator_keeps_the_signature_and_translates() -> None:
    @errors.boundary
    def verb(seq: int, *, why: str = "gap") -> int:
        """doc"""
        raise le.IntegrityViolation(seq, why, "a seq is missing")

    assert verb.__name__ == "verb" and verb.__doc__ == "doc"
    assert str(inspect.signature(verb)) == "(seq: 'int', *, why: 'str' = 'gap') -> 'int'"
    with pytest.raises(errors.IntegrityError) as ei:
        verb(3)
    assert (ei.value.seq, ei.value.reason) == (3, "gap")


def _boundary_code() -> object:
    return errors.boundary(lambda: None).__code__


def test_every_public_verb_is_behind_the_boundary() -> None:
    verbs = [f for name, f in vars(command).items()
             if inspect.isfunction(f) and f.__module__ == command.__name__
             and not name.startswith("_")]
    assert len(verbs) > 20
    missing = [f.__name__ for f in verbs if f.__code__ is not _boundary_code()]
    assert not missing, f"add @boundary to statekeeper.command: {missing}"
    load = inspect.getattr_static(command.Settings, "load").__func__
    assert load.__code__ is _boundary_code()


def test_the_cli_maps_only_statekeepers_tree() -> None:
    """No sniffing of sys.modules, no ledger errors caught: the verbs translated them."""
    for path in sorted((ROOT / "cli").glob("*.py")):
        tree = ast.parse(path.read_text())
        names = {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
        names |= {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
        assert "modules" not in names, path
        assert not names & {"LedgerError", "IntegrityViolation", "LedgerUnreachable",
                            "ConfigurationError", "StreamConflict", "OperationalError"}, path
