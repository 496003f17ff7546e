"""The command-line documentation is complete and current.

Every command in the click tree must be documented in some docs/*.md (a heading or a line
that names ``statekeeper <command path>``); every ``--help`` block embedded between
``<!-- help: PATH -->`` markers must match the code (regenerate them with
``python scripts/cli_docs.py``); docs/cli.md documents every exit code and every reason
verification can report.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import pkgutil
import re
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import click
import pytest

import ledger.chain
from cli.main import cli
from statekeeper import errors

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"


def _load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("cli_docs", ROOT / "scripts" / "cli_docs.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


cli_docs = _load_script()


def command_paths(
    cmd: click.Command = cli, path: tuple[str, ...] = ()
) -> Iterator[tuple[str, ...]]:
    if path and not cmd.hidden:
        yield path
    if isinstance(cmd, click.Group):
        for name, sub in sorted(cmd.commands.items()):
            yield from command_paths(sub, (*path, name))


def docs_text() -> dict[str, str]:
    return {p.name: p.read_text(encoding="utf-8") for p in sorted(DOCS.glob("*.md"))}


def mentions(text: str, path: tuple[str, ...]) -> bool:
    """``statekeeper ledger verify`` is mentioned; ``statekeeper ledger verify-export`` is not
    a mention of it."""
    pattern = r"statekeeper\s+" + r"\s+".join(map(re.escape, path)) + r"(?![\w-])"
    return re.search(pattern, text) is not None


def test_the_tree_is_walked() -> None:
    paths = set(command_paths())
    assert {("keys", "generate"), ("ledger", "verify"), ("ledger", "verify-export")} <= paths
    assert not mentions("statekeeper ledger verify-export FILE", ("ledger", "verify"))
    assert mentions("### statekeeper ledger verify\n", ("ledger", "verify"))
    assert mentions("`statekeeper  ledger verify --against X`", ("ledger", "verify"))


def test_every_command_is_documented() -> None:
    docs = docs_text()
    missing = [
        " ".join(p) for p in command_paths() if not any(mentions(t, p) for t in docs.values())
    ]
    assert not missing, (
        "commands not documented in any docs/*.md (add a section or a line naming "
        f"`statekeeper <command>`): {', '.join(missing)}"
    )


def test_embedded_help_is_current() -> None:
    stale = []
    for name, text in docs_text().items():
        for path in cli_docs.blocks(text):
            # render_help raises for a block naming a command that does not exist
            want = cli_docs.help_block(path.split())
            block = re.search(
                rf"<!-- help: {re.escape(path)} -->\n(.*?)<!-- /help -->", text, re.S
            )
            assert block is not None
            if block[1] != want:
                stale.append(f"{name}: statekeeper {path}")
    assert not stale, "stale --help in docs, run `python scripts/cli_docs.py`:\n" + "\n".join(
        stale
    )


def test_the_script_checks_and_regenerates(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    doc = tmp_path / "x.md"
    doc.write_text("# x\n<!-- help: ledger append -->\nold text\n<!-- /help -->\ntail\n")
    monkeypatch.setattr(cli_docs, "DOCS", tmp_path)
    monkeypatch.setattr(cli_docs, "ROOT", tmp_path)
    assert cli_docs.main(["--check"]) == 1
    assert "old text" in doc.read_text()
    assert cli_docs.main([]) == 0
    text = doc.read_text()
    assert "old text" not in text and text.endswith("<!-- /help -->\ntail\n")
    assert "$ statekeeper ledger append --help\nUsage: statekeeper ledger append [OPTIONS]" in text
    assert cli_docs.main(["--check"]) == 0
    doc.write_text("<!-- help: ledger nosuch -->\n<!-- /help -->\n")
    with pytest.raises(ValueError, match="ledger nosuch --help failed"):
        cli_docs.main([])


OWN_COMMANDS = [p for p in command_paths() if p[0] in {"keys", "ledger"}]


@pytest.mark.parametrize("path", OWN_COMMANDS, ids=[" ".join(p) for p in OWN_COMMANDS])
def test_cli_md_embeds_help_for_keys_and_ledger(path: tuple[str, ...]) -> None:
    text = (DOCS / "cli.md").read_text(encoding="utf-8")
    assert " ".join(path) in cli_docs.blocks(text)
    assert re.search(rf"^#+ statekeeper {re.escape(' '.join(path))}$", text, re.M)


def exit_code_table(text: str) -> dict[int, tuple[set[str], set[str]]]:
    """docs/cli.md's exit-code table: code -> (error classes, run states) of its third column
    (`ErrorClass` and run `state` in backticks)."""
    table: dict[int, tuple[set[str], set[str]]] = {}
    for code, cell in re.findall(r"^\| (\d+) \| [^|]* \| ([^|]*) \|", text, re.M):
        names = re.findall(r"`([A-Za-z_]+)`", cell)
        assert int(code) not in table, f"exit code {code} documented twice"
        table[int(code)] = ({n for n in names if n[0].isupper()},
                            {n for n in names if n[0].islower()})
    return table


def test_cli_md_documents_every_exit_code() -> None:
    """The docs' one table of exit codes is the code's: statekeeper.errors.EXIT_CODES (error
    class -> code) and EXIT_FOR_STATE (run state -> code)."""
    text = (DOCS / "cli.md").read_text(encoding="utf-8")
    codes = {v for k, v in vars(errors).items() if k.startswith("EXIT_") and isinstance(v, int)}
    assert codes == {0, 1, 2, 3, 4, 5, 6, 130, 137, 143}  # the last three: ended by a signal
    want = {c: ({cls.__name__ for cls, code in errors.EXIT_CODES.items() if code == c},
                {s for s, code in errors.EXIT_FOR_STATE.items() if code == c}) for c in codes}
    assert exit_code_table(text) == want


def test_exit_codes_are_tabled_once() -> None:
    """No other page keeps a table of exit codes of its own, to drift from the one."""
    others = [name for name, text in docs_text().items()
              if name != "cli.md" and exit_code_table(text)]
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert not others and not exit_code_table(readme), others


def test_every_error_class_has_its_exit_code() -> None:
    """Every class of statekeeper's tree has its row: a new error decides its exit code."""
    for info in pkgutil.walk_packages([str(ROOT / "statekeeper")], "statekeeper."):
        importlib.import_module(info.name)  # the tree's classes wherever they are defined

    def tree(cls: type[errors.StatekeeperError]) -> set[type[errors.StatekeeperError]]:
        return {cls}.union(*(tree(sub) for sub in cls.__subclasses__()))

    mine = {c for c in tree(errors.StatekeeperError) if c.__module__.startswith("statekeeper")}
    unlisted = sorted(f"{c.__module__}.{c.__name__}" for c in mine - set(errors.EXIT_CODES))
    assert not unlisted, (f"{unlisted}: define the class in statekeeper/errors.py (its tree), "
                          "with its row in EXIT_CODES and in docs/cli.md")
    assert mine == set(errors.EXIT_CODES)
    for cls, code in errors.EXIT_CODES.items():
        assert errors.exit_code_for(cls.__new__(cls)) == code


def verification_reasons() -> set[str]:
    """Every reason the ledger package can put in an IntegrityViolation, read from its source:
    literal reasons, ledger.chain's constants, and local variables assigned from them."""
    reasons: set[str] = set()

    def collect(expr: ast.AST, assigned: dict[str, list[ast.AST]]) -> None:
        if isinstance(expr, ast.Constant) and isinstance(expr.value, str):
            reasons.add(expr.value)
        elif isinstance(expr, ast.IfExp):
            collect(expr.body, assigned)
            collect(expr.orelse, assigned)
        elif isinstance(expr, ast.Name) and isinstance(getattr(ledger.chain, expr.id, None), str):
            reasons.add(getattr(ledger.chain, expr.id))
        elif isinstance(expr, ast.Name) and expr.id in assigned:
            for value in assigned.pop(expr.id):
                collect(value, assigned)
        else:
            raise AssertionError(f"cannot tell which reason {ast.unparse(expr)} is")

    for path in sorted((ROOT / "ledger").glob("*.py")):
        tree = ast.parse(path.read_text())
        assigned: dict[str, list[ast.AST]] = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.Assign):
                for t in node.targets:
                    if isinstance(t, ast.Name):
                        assigned.setdefault(t.id, []).append(node.value)
        for node in ast.walk(tree):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                    and node.func.id == "IntegrityViolation"):
                args = [*node.args, *(k.value for k in node.keywords if k.arg == "reason")]
                assert len(args) >= 2 or any(k.arg == "reason" for k in node.keywords), path
                collect(args[1] if len(node.args) >= 2 else args[-1], dict(assigned))
    return reasons


def test_cli_md_documents_every_verification_reason() -> None:
    reasons = verification_reasons()
    assert {"hash mismatch", "gap", "truncated", "unknown key"} <= reasons
    table = (DOCS / "cli.md").read_text(encoding="utf-8").split("## Verification reasons")[1]
    documented = set(re.findall(r"^\| `([a-z ]+)` \|", table, re.M))
    assert reasons <= documented, f"undocumented reasons: {sorted(reasons - documented)}"
