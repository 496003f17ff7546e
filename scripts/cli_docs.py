#!/usr/bin/env python3
"""Regenerate the ``--help`` output embedded in docs/*.md.

A block is whatever sits between two marker comments naming the command path::

    <!-- help: ledger verify -->
    ```text
    $ statekeeper ledger verify --help
    Usage: statekeeper ledger verify [OPTIONS]
    ...
    ```
    <!-- /help -->

Run ``python scripts/cli_docs.py`` after changing a command's options or help text;
``--check`` only reports stale blocks (exit 1), which is what tests/test_docs_cli.py does.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
WIDTH = 80  # help is rendered for an 80-column terminal, whatever the one running this
# A block never spans another block's opening marker or a heading: a marker left unclosed
# matches nothing (and is reported) instead of swallowing the text up to the next block's end.
BLOCK = re.compile(
    r"(?P<open><!-- help: (?P<path>[A-Za-z0-9_ -]*?) -->\n)"
    r"(?:(?!<!-- help:|^#{1,6} ).)*?(?P<close><!-- /help -->)", re.S | re.M
)
OPEN = re.compile(r"<!-- help: ")


def render_help(path: list[str]) -> str:
    """The ``--help`` text of ``statekeeper <path>``, as a user sees it."""
    from click.testing import CliRunner

    from cli.main import cli

    result = CliRunner().invoke(
        cli, [*path, "--help"], prog_name="statekeeper", terminal_width=WIDTH
    )
    if result.exit_code != 0 or not result.stdout.startswith("Usage: "):
        raise ValueError(f"statekeeper {' '.join(path)} --help failed: {result.output.strip()}")
    return result.stdout


def help_block(path: list[str]) -> str:
    command = " ".join(["statekeeper", *path, "--help"])
    return f"```text\n$ {command}\n{render_help(path)}```\n"


def update(text: str) -> str:
    """``text`` with every marked help block regenerated; ValueError for a marker left
    unclosed."""
    if len(OPEN.findall(text)) != len(BLOCK.findall(text)):
        raise ValueError("a '<!-- help: ... -->' marker has no '<!-- /help -->' before the next "
                         "heading or marker")
    return BLOCK.sub(
        lambda m: m["open"] + help_block(m["path"].split()) + m["close"], text
    )


def blocks(text: str) -> list[str]:
    """The command paths of the marked blocks in ``text``."""
    return [m["path"] for m in BLOCK.finditer(text)]


def main(argv: list[str]) -> int:
    check = "--check" in argv
    stale = []
    for md in sorted(DOCS.glob("*.md")):
        text = md.read_text(encoding="utf-8")
        new = update(text)
        if new != text:
            stale.append(md.relative_to(ROOT))
            if not check:
                md.write_text(new, encoding="utf-8")
    verb = "stale" if check else "updated"
    for p in stale:
        sys.stderr.write(f"{verb}: {p}\n")
    return 1 if check and stale else 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main(sys.argv[1:]))
