"""Hostile input to the ledger's parsers through the real command line (issue 7): export files,
checkpoints, key files and ``--payload``, random and mutated from genuine ones.

Each input gives a correct result or one clear ``error:`` line with a documented exit code
(0 fine, 2 unusable input, 4 integrity violation), never a traceback, and the ledger is
unchanged after every rejected input.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ledger
from cli.main import cli

FUZZ = settings(max_examples=60, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])


class World:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.url = f"sqlite:///{root / 'ledger.db'}"
        ledger.generate_key_file(root / "k.pem")
        for i in range(3):
            assert self.sk("ledger", "append", "--stream", f"s{i % 2}", "--type", "t",
                           "--payload", f'{{"i":{i},"name":"é"}}').exit_code == 0
        assert self.sk("ledger", "checkpoint", "--out", str(root / "cp.txt")).exit_code == 0
        assert self.sk("ledger", "export", "--out", str(root / "e.jsonl")).exit_code == 0
        self.checkpoint = (root / "cp.txt").read_text()
        self.export = (root / "e.jsonl").read_text()
        self.pem = (root / "k.pem").read_bytes()
        self.n = 0

    def run(self, *args: str) -> Result:
        r = CliRunner(env={"STATEKEEPER_CONFIG": None}).invoke(
            cli, list(args), prog_name="statekeeper"
        )
        if r.exception is not None and not isinstance(r.exception, SystemExit):
            raise AssertionError(f"statekeeper {' '.join(args)} raised") from r.exception
        assert "Traceback" not in r.output
        return r

    def sk(self, *args: str, key: str = "k.pem") -> Result:
        return self.run("--ledger", self.url, "--key", str(self.root / key), *args)

    def head(self) -> tuple[int, str]:
        with ledger.Ledger(self.url, create=False) as lg:
            h = lg.head()
        return h.seq, h.hash

    def file(self, data: bytes | str, name: str = "input") -> Path:
        self.n += 1
        p = self.root / f"{name}-{self.n}"
        if isinstance(data, str):
            p.write_text(data, encoding="utf-8", errors="surrogatepass")
        else:
            p.write_bytes(data)
        os.chmod(p, 0o600)
        return p


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    yield World(tmp_path_factory.mktemp("fuzz"))


def one_error_line(r: Result, codes: set[int]) -> None:
    assert r.exit_code in codes, (r.exit_code, r.output)
    if r.exit_code != 0:
        lines = r.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr


def mutated(text: str) -> st.SearchStrategy[str]:
    """``text`` with a few characters replaced, inserted or deleted, or lines dropped/doubled."""
    def apply(ops: list[tuple[int, int, str]]) -> str:
        s = text
        for kind, pos, ch in ops:
            i = pos % (len(s) + 1)
            if kind == 0:
                s = s[:i] + ch + s[i + 1:]
            elif kind == 1:
                s = s[:i] + ch + s[i:]
            elif kind == 2:
                s = s[:i] + s[i + 1:]
            else:
                lines = s.split("\n")
                j = pos % len(lines)
                lines[j:j + 1] = [] if ch < "m" else [lines[j], lines[j]]
                s = "\n".join(lines)
        return s

    op = st.tuples(st.integers(0, 3), st.integers(0, 10**6),
                   st.sampled_from([*'0aZ"{}[],:\\\n é\x00', "\ud800", "\ufeff"]))
    return st.lists(op, min_size=1, max_size=4).map(apply)


@FUZZ
@given(data=st.one_of(st.binary(max_size=400).map(lambda b: b.decode("latin-1")),
                      st.just("")))
def test_verify_export_random(world: World, data: str) -> None:
    one_error_line(world.run("ledger", "verify-export", str(world.file(data))), {2, 4})


@FUZZ
@given(data=st.data())
def test_verify_export_mutated(world: World, data: st.DataObject) -> None:
    text = data.draw(mutated(world.export))
    r = world.run("ledger", "verify-export", str(world.file(text)))
    one_error_line(r, {0, 2, 4})
    if r.exit_code == 0:  # only a change that leaves the very same export may pass
        assert text.rstrip("\n") == world.export.rstrip("\n")


@pytest.mark.parametrize("respell", [
    lambda lines: [" " + lines[0], *lines[1:]],  # found by the fuzzer above
    lambda lines: [lines[0].replace('":', '": ', 1), *lines[1:]],
    lambda lines: [*lines[:-1], lines[-1].replace('{"checkpoint":', '{ "checkpoint":')],
], ids=["header-leading-space", "header-spaced", "checkpoint-spaced"])
def test_a_respelled_header_or_checkpoint_line_is_refused(world: World, respell: Any) -> None:
    """The same JSON spelled otherwise is not the export: every line must be canonical."""
    lines = world.export.rstrip("\n").split("\n")
    r = world.run("ledger", "verify-export", str(world.file("\n".join(respell(lines)) + "\n")))
    assert r.exit_code == 4, r.output
    assert "not the canonical text of the" in r.stderr


def _sibling(b64: str) -> str:
    """The same bytes spelled otherwise: the last character before the padding, with other
    unused bits."""
    import base64
    import string

    alphabet = string.ascii_letters + string.digits + "+/"
    body = b64.rstrip("=")
    pad = b64[len(body):]
    for c in alphabet:
        other = body[:-1] + c + pad
        if c != body[-1] and base64.b64decode(other) == base64.b64decode(b64):
            return other
    raise AssertionError("no sibling spelling")


def _sig(line: str) -> str:
    return line.rsplit(" ", 1)[1].split("\\n", 1)[0]


@pytest.mark.parametrize("edit", [
    # the 4-byte key hash that starts the signature blob (was not checked)
    lambda last: last.replace(" " + _sig(last), " " + ("B" if _sig(last)[0] != "B" else "C")
                              + _sig(last)[1:]),
    # the same signature bytes, another base64 spelling
    lambda last: last.replace(_sig(last), _sibling(_sig(last))),
    # text after the signature line, inside the note
    lambda last: last.replace('\\n"}', '\\nextra\\n"}'),
    # a blank line between the note's blank line and its signature
    lambda last: last.replace("\\n\\n\u2014", "\\n\\n\\n\u2014"),
], ids=["key-hash", "base64-spelling", "text-after-signature", "extra-blank-line"])
def test_every_byte_of_the_closing_checkpoint_counts(world: World, edit: Any) -> None:
    lines = world.export.rstrip("\n").split("\n")
    changed = edit(lines[-1])
    assert changed != lines[-1]
    r = world.run("ledger", "verify-export", str(world.file("\n".join([*lines[:-1], changed])
                                                          + "\n")))
    assert r.exit_code in (2, 4), r.output
    assert len(r.stderr.splitlines()) == 1


@pytest.mark.parametrize("escape", ["\\f", "\\u001b[31m", "\\u2028", "\\u0085"])
def test_a_control_character_from_the_export_never_splits_the_error_line(
        world: World, escape: str) -> None:
    """Found by the fuzzer above: a key id that decodes to a form feed ended up in the message
    and split it in two lines. Control characters from the file are escaped or joined."""
    lines = world.export.rstrip("\n").split("\n")
    at = lines[1].index('"key_id":"') + len('"key_id":"') + 6
    lines[1] = lines[1][:at] + escape + lines[1][at:]
    r = world.run("ledger", "verify-export", str(world.file("\n".join(lines) + "\n")))
    assert r.exit_code == 4, r.output
    assert len(r.stderr.splitlines()) == 1, repr(r.stderr)
    assert "\x1b" not in r.stderr


@FUZZ
@given(data=st.data())
def test_checkpoint_files(world: World, data: st.DataObject) -> None:
    text = data.draw(st.one_of(mutated(world.checkpoint), st.text(max_size=200)))
    head = world.head()
    path = world.file(text)
    r = world.sk("ledger", "verify", "--against", str(path))
    one_error_line(r, {0, 2, 4})
    if r.exit_code == 0:
        assert ledger.parse_checkpoint(text).head_hash == ledger.parse_checkpoint(
            world.checkpoint).head_hash
    one_error_line(world.run("ledger", "verify-export", str(world.root / "e.jsonl"),
                             "--against", str(path)), {0, 2, 4})
    assert world.head() == head


@FUZZ
@given(data=st.data())
def test_key_files(world: World, data: st.DataObject) -> None:
    raw = data.draw(st.one_of(
        st.binary(max_size=300),
        mutated(world.pem.decode()).map(lambda s: s.encode("utf-8", "surrogatepass")),
    ))
    head = world.head()
    path = world.file(raw, "key")
    r = world.sk("ledger", "append", "--stream", "s0", "--type", "t", key=path.name)
    one_error_line(r, {0, 2})
    if r.exit_code != 0:
        assert world.head() == head
    one_error_line(world.run("--ledger", world.url, "ledger", "verify", "--trusted-key",
                             str(path)), {0, 2, 4})


@FUZZ
@given(payload=st.one_of(
    st.text(max_size=80),
    st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
                 lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=4), c,
                                                                     max_size=3),
                 max_leaves=8).map(repr),
))
def test_payloads(world: World, payload: str) -> None:
    head = world.head()
    r = world.sk("ledger", "append", "--stream", "s1", "--type", "t", "--payload", payload)
    one_error_line(r, {0, 2})
    if r.exit_code != 0:
        assert world.head() == head
    else:
        assert world.head()[0] == head[0] + 1
