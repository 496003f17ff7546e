"""The dependency direction of DESIGN.md, checked on the source (ast), not by importing it:
``cli -> statekeeper -> ledger``, never back; library code never prints or exits; no import
cycle inside a package (every import counts, function-level ones too, except the type
checker's under ``if TYPE_CHECKING:``)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

FORBIDDEN_IMPORTS = {
    "ledger": {"statekeeper", "cli", "click", "transitions"},
    "statekeeper": {"cli", "click"},
}
LIBRARIES = ("ledger", "statekeeper")

# Violations found and reported, not yet fixed by the owner of the file: (module, import). The
# test fails on any other violation, and on an entry here that is no longer true (remove it).
KNOWN_VIOLATIONS: set[tuple[str, str]] = set()


def modules(package: str) -> list[Path]:
    found = sorted((ROOT / package).rglob("*.py"))
    assert found, f"no modules in {package}/"
    return found


def imported(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, top-level package) of every absolute import, wherever it sits (functions too)."""
    out: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name.split(".")[0]) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.append((node.lineno, node.module.split(".")[0]))
        elif (isinstance(node, ast.Call) and _dotted(node.func) in {"__import__",
              "importlib.import_module"} and node.args
              and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            out.append((node.lineno, node.args[0].value.split(".")[0]))
    return out


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return ""


def exits_and_prints(tree: ast.AST) -> list[tuple[int, str]]:
    """Calls to print(), sys.exit() (however imported), exit(), quit(), and raise SystemExit."""
    exit_aliases = {"sys.exit"}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "sys":
            exit_aliases |= {a.asname or a.name for a in node.names if a.name == "exit"}
        elif isinstance(node, ast.Import):
            exit_aliases |= {f"{a.asname}.exit" for a in node.names if a.name == "sys" and a.asname}
    out: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            name = _dotted(node.func)
            if name in {"print", "exit", "quit"} | exit_aliases:
                out.append((node.lineno, f"{name}()"))
        elif isinstance(node, ast.Raise) and node.exc is not None:
            exc = node.exc.func if isinstance(node.exc, ast.Call) else node.exc
            if _dotted(exc) == "SystemExit":
                out.append((node.lineno, "raise SystemExit"))
    return out


def test_the_checker_sees_what_it_must() -> None:
    src = (
        "import click\nfrom cli.main import cli\nimport statekeeper.config as c\n"
        "def f():\n    import transitions\n    from . import sibling\n"
        "    importlib.import_module('cli.x')\n"
        "from sys import exit as bye\nimport sys as system\n"
        "print('x')\nsys.exit(1)\nbye(2)\nsystem.exit(3)\nraise SystemExit(4)\n"
        "log.print('fine')\nos._exit(5)\n"
    )
    tree = ast.parse(src)
    assert sorted(m for _, m in imported(tree)) == sorted(
        ["click", "cli", "statekeeper", "transitions", "sys", "sys", "cli"]
    )
    assert sorted(what for _, what in exits_and_prints(tree)) == sorted(
        ["print()", "sys.exit()", "bye()", "system.exit()", "raise SystemExit"]
    )


@pytest.mark.parametrize("package", sorted(FORBIDDEN_IMPORTS))
def test_imports_point_down_only(package: str) -> None:
    bad, known = [], set()
    for path in modules(package):
        rel = str(path.relative_to(ROOT))
        for line, top in imported(ast.parse(path.read_text(), str(path))):
            if top in FORBIDDEN_IMPORTS[package]:
                if (rel, top) in KNOWN_VIOLATIONS:
                    known.add((rel, top))
                else:
                    bad.append(f"{rel}:{line} imports {top}")
    assert not bad, f"{package} must not import {sorted(FORBIDDEN_IMPORTS[package])}:\n" + \
        "\n".join(bad)
    stale = {v for v in KNOWN_VIOLATIONS if v[0].startswith(f"{package}/")} - known
    assert not stale, f"fixed, remove from KNOWN_VIOLATIONS: {sorted(stale)}"


@pytest.mark.parametrize("package", LIBRARIES)
def test_library_code_never_prints_or_exits(package: str) -> None:
    bad = []
    for path in modules(package):
        for line, what in exits_and_prints(ast.parse(path.read_text(), str(path))):
            bad.append(f"{path.relative_to(ROOT)}:{line} {what}")
    assert not bad, (
        f"{package} returns values or raises typed errors; the CLI prints and exits:\n"
        + "\n".join(bad)
    )


# -- import cycles inside a package -------------------------------------------------------------
PACKAGES = ("ledger", "statekeeper", "cli")

# Cycles being removed by their owners (issue 8), each as its modules, sorted. The test fails on
# any other cycle, and on an entry here that is no longer a cycle (remove it).
KNOWN_CYCLES: set[tuple[str, ...]] = set()


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _type_checking_only(tree: ast.AST) -> set[int]:
    """ids of the nodes inside ``if TYPE_CHECKING:`` blocks: imports for the type checker."""
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and _dotted(node.test) in {"TYPE_CHECKING",
                                                                "typing.TYPE_CHECKING"}:
            for child in node.body:
                skip |= {id(n) for n in ast.walk(child)}
    return skip


def module_imports(tree: ast.AST, name: str, is_package: bool) -> set[str]:
    """Every module ``name`` imports, wherever the import sits (functions too), except under
    ``if TYPE_CHECKING:``: ``from . import x`` counts as the package and as its module x."""
    skip = _type_checking_only(tree)
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            found |= {mod} | {f"{mod}.{a.name}" for a in node.names}
    return found


def import_graph(package: str) -> dict[str, set[str]]:
    files = {module_name(p): p for p in modules(package)}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        deps = module_imports(ast.parse(path.read_text(), str(path)), name,
                              path.name == "__init__.py")
        graph[name] = {d for d in deps if d in files and d != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> set[tuple[str, ...]]:
    """The strongly connected groups of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: set[tuple[str, ...]] = set()

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.add(tuple(sorted(group)))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_cycle_finder_sees_what_it_must() -> None:
    src = ("from . import b\nimport pkg.c\nif TYPE_CHECKING:\n    from .d import X\n"
           "def f():\n    from .e import y\n")
    assert module_imports(ast.parse(src), "pkg.a", False) == {"pkg", "pkg.b", "pkg.c",
                                                              "pkg.e", "pkg.e.y"}
    assert module_imports(ast.parse("from .x import y\n"), "pkg", True) == {"pkg.x", "pkg.x.y"}
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": {"f"}, "f": {"e"}, "g": set()}
    assert cycles(graph) == {("a", "b", "c"), ("e", "f")}


@pytest.mark.parametrize("package", PACKAGES)
def test_no_import_cycles_inside_a_package(package: str) -> None:
    found = cycles(import_graph(package))
    mine = {c for c in KNOWN_CYCLES if c[0].split(".")[0] == package}
    new = found - mine
    assert not new, f"import cycles in {package}:\n" + "\n".join(
        " <-> ".join(c) for c in sorted(new))
    stale = mine - found
    assert not stale, f"gone, remove from KNOWN_CYCLES: {sorted(stale)}"
