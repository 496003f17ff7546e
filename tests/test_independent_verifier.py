"""The independent verifier (tests/independent_verifier.py, written from docs/compliance.md
alone) against the reference `statekeeper ledger verify-export --json` on a real fixture and
tampered copies of it: both must accept the same files and reject the others with the same
first bad seq and the same reason."""

from __future__ import annotations

import ast
import base64
import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests import independent_verifier as iv
from tests.audit_fixture import UPGRADE, AuditFixture, make_audit_fixture

ROOT = Path(__file__).resolve().parent.parent
MODULE = Path(iv.__file__)


# --- tampers: each edits the real export (a list of its lines) ------------------------------

def _lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").split("\n")[:-1]


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def _seq_index(lines: list[str], seq: int) -> int:
    for i, line in enumerate(lines[1:], 1):
        if line.startswith("{\"closes\"") and json.loads(line)["seq"] == seq:
            return i
    raise LookupError(seq)


def _private(fx: AuditFixture, name: str) -> Ed25519PrivateKey:
    key = serialization.load_pem_private_key((fx.directory / name).read_bytes(), None)
    assert isinstance(key, Ed25519PrivateKey)
    return key


def _sign_checkpoint(key: Ed25519PrivateKey, origin: str, size: int, head_hex: str) -> str:
    raw = key.public_key().public_bytes(serialization.Encoding.Raw,
                                        serialization.PublicFormat.Raw)
    name = "statekeeper:" + hashlib.sha256(raw).hexdigest()
    body = f"{origin}\n{size}\n{base64.b64encode(bytes.fromhex(head_hex)).decode()}\n"
    key_hash = hashlib.sha256(name.encode() + b"\n\x01" + raw).digest()[:4]
    blob = base64.b64encode(key_hash + key.sign(body.encode())).decode()
    return body + f"\n\u2014 {name} {blob}\n"


def _closing(text: str) -> str:
    return json.dumps({"checkpoint": text}, ensure_ascii=False, separators=(",", ":"))


def t_payload_byte(fx: AuditFixture, lines: list[str]) -> list[str]:
    i = _seq_index(lines, 3)
    assert '"to":"preflight"' in lines[i]
    lines[i] = lines[i].replace('"to":"preflight"', '"to":"preflighT"')
    return lines


def t_swap(a: int, b: int) -> Callable[[AuditFixture, list[str]], list[str]]:
    def tamper(fx: AuditFixture, lines: list[str]) -> list[str]:
        i, j = _seq_index(lines, a), _seq_index(lines, b)
        lines[i], lines[j] = lines[j], lines[i]
        return lines
    return tamper


def t_delete(seq: int) -> Callable[[AuditFixture, list[str]], list[str]]:
    def tamper(fx: AuditFixture, lines: list[str]) -> list[str]:
        del lines[_seq_index(lines, seq)]
        return lines
    return tamper


def t_cut_after(seq: int) -> Callable[[AuditFixture, list[str]], list[str]]:
    def tamper(fx: AuditFixture, lines: list[str]) -> list[str]:
        return lines[:_seq_index(lines, seq) + 1]
    return tamper


def t_cut_mid_line(fx: AuditFixture, lines: list[str]) -> list[str]:
    lines[-1] = lines[-1][: len(lines[-1]) // 2]  # the closing checkpoint line, cut in two
    return lines


def t_cut_resigned(fx: AuditFixture, lines: list[str]) -> list[str]:
    """The key holder cuts the tail at an append boundary (after seq 5, before the rotation),
    drops the rotated key from the header and re-signs a closing checkpoint: verifies alone."""
    i = _seq_index(lines, 5)
    header = json.loads(lines[0])
    header["keys"] = [k for k in header["keys"] if k["key_id"] == fx.key_id_a]
    head = json.loads(lines[i])["hash"]
    cp = _sign_checkpoint(_private(fx, "a.pem"), f"statekeeper/{header['ledger_id']}", 5, head)
    return [iv.canonical(header), *lines[1:i + 1], _closing(cp)]


def t_rewrite_head(fx: AuditFixture, lines: list[str]) -> list[str]:
    """The key holder rewrites the last event (seq 7), re-hashes, re-seals with key B and
    re-signs the closing checkpoint: verifies alone, not against checkpoint-7."""
    i = _seq_index(lines, 7)
    ev = json.loads(lines[i])
    ev["payload"]["duration_ms"] = 1
    ev["hash"] = hashlib.sha256(iv.envelope(ev).encode()).hexdigest()
    b = _private(fx, "b.pem")
    ev["seal"]["signature"] = base64.b64encode(b.sign(iv.seal_message(7, 7, ev["hash"]))).decode()
    ledger_id = json.loads(lines[0])["ledger_id"]
    return [*lines[:i], iv.event_line(ev),
            _closing(_sign_checkpoint(b, f"statekeeper/{ledger_id}", 7, ev["hash"]))]


def t_seal_signature(fx: AuditFixture, lines: list[str]) -> list[str]:
    i = _seq_index(lines, 4)
    ev = json.loads(lines[i])
    sig = ev["seal"]["signature"]
    ev["seal"]["signature"] = sig[:10] + ("A" if sig[10] != "A" else "B") + sig[11:]
    lines[i] = iv.event_line(ev)
    return lines


def t_checkpoint_signature(fx: AuditFixture, lines: list[str]) -> list[str]:
    text = json.loads(lines[-1])["checkpoint"]
    at = text.rindex(" ") + 20
    lines[-1] = _closing(text[:at] + ("A" if text[at] != "A" else "B") + text[at + 1:])
    return lines


def t_header_public_key(fx: AuditFixture, lines: list[str]) -> list[str]:
    header = json.loads(lines[0])
    other = Ed25519PrivateKey.generate().public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    header["keys"][0]["public_key"] = base64.b64encode(other).decode()
    lines[0] = iv.canonical(header)
    return lines


def t_header_key_id(fx: AuditFixture, lines: list[str]) -> list[str]:
    header = json.loads(lines[0])
    kid = header["keys"][0]["key_id"]
    header["keys"][0]["key_id"] = ("0" if kid[0] != "0" else "1") + kid[1:]
    lines[0] = iv.canonical(header)
    return lines


def t_seal_extra_member(fx: AuditFixture, lines: list[str]) -> list[str]:
    i = _seq_index(lines, 4)
    lines[i] = lines[i].replace('"seal":{"first":2,', '"seal":{"extra":1,"first":2,')
    return lines


def t_signature_pad_bits(fx: AuditFixture, lines: list[str]) -> list[str]:
    """The seal's signature spelled with non-zero unused bits: decodes to the same bytes."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    i = _seq_index(lines, 4)
    sig = json.loads(lines[i])["seal"]["signature"]
    j = len(sig.rstrip("=")) - 1
    lines[i] = lines[i].replace(sig, sig[:j] + alphabet[alphabet.index(sig[j]) ^ 1] + sig[j + 1:])
    return lines


def t_checkpoint_foreign_origin(fx: AuditFixture, lines: list[str]) -> list[str]:
    text = json.loads(lines[-1])["checkpoint"]
    lines[-1] = _closing("x" + text)  # origin "xstatekeeper/...": the checkpoint is damaged
    return lines


def t_edit(seq: int, old: str, new: str) -> Callable[[AuditFixture, list[str]], list[str]]:
    """Replace text in the line of event ``seq`` (the event's JSON left as it is otherwise)."""
    def tamper(fx: AuditFixture, lines: list[str]) -> list[str]:
        i = _seq_index(lines, seq)
        assert old in lines[i]
        lines[i] = lines[i].replace(old, new, 1)
        return lines
    return tamper


def t_header(member: str, value: object) -> Callable[[AuditFixture, list[str]], list[str]]:
    def tamper(fx: AuditFixture, lines: list[str]) -> list[str]:
        header = json.loads(lines[0])
        header[member] = value
        lines[0] = iv.canonical(header)
        return lines
    return tamper


def t_rotation_without_previous(fx: AuditFixture, lines: list[str]) -> list[str]:
    """The rotation (seq 6) without previous_key_id, re-hashed: E9 comes before its seal."""
    i = _seq_index(lines, 6)
    ev = json.loads(lines[i])
    del ev["payload"]["previous_key_id"]
    ev["hash"] = hashlib.sha256(iv.envelope(ev).encode()).hexdigest()
    lines[i] = iv.event_line(ev)
    return lines


def t_signature_lines(extra: str) -> Callable[[AuditFixture, list[str]], list[str]]:
    """Lines inserted after the closing checkpoint's blank line, before its signature."""
    def tamper(fx: AuditFixture, lines: list[str]) -> list[str]:
        text = json.loads(lines[-1])["checkpoint"]
        lines[-1] = _closing(text.replace("\n\n", "\n\n" + extra, 1))
        return lines
    return tamper


def t_stream_checkpoint_by_undecodable_key(fx: AuditFixture, lines: list[str]) -> list[str]:
    """A stream export's header lists a key whose public_key does not decode, and the closing
    checkpoint names it (no key event checks a stream export's keys)."""
    header = json.loads(lines[0])
    other = Ed25519PrivateKey.generate()
    raw = other.public_key().public_bytes(serialization.Encoding.Raw,
                                          serialization.PublicFormat.Raw)
    header["keys"].append({"key_id": hashlib.sha256(raw).hexdigest(), "public_key": "x"})
    head = json.loads(lines[-2])["hash"]
    note = _sign_checkpoint(other, f"statekeeper/{header['ledger_id']}/{header['stream']}", 4,
                            head)
    return [iv.canonical(header), *lines[1:-1], _closing(note)]


def t_extra_line(fx: AuditFixture, lines: list[str]) -> list[str]:
    return [*lines, ""]  # a file ending in two line breaks


def t_none(fx: AuditFixture, lines: list[str]) -> list[str]:
    return lines


CP5, CP7 = "checkpoint-5.txt", "checkpoint-7.txt"
CP6 = "checkpoint-6.txt"  # made here: the officer's checkpoint at seq 6, signed by key A
CP5_CRLF = "checkpoint-5-crlf.txt"  # made here: checkpoint-5.txt with CRLF line ends (mailed)
CP0 = "checkpoint-0.txt"  # made here: a checkpoint of size 0 (root zeros), signed by key A

# id: (which export, tamper, --against, --trusted-key files)
CASES: dict[str, tuple[str, Callable, str | None, tuple[str, ...]]] = {
    "real": ("export.jsonl", t_none, None, ()),
    "real-against-5": ("export.jsonl", t_none, CP5, ()),
    "real-against-7": ("export.jsonl", t_none, CP7, ()),
    "real-pinned-a-b": ("export.jsonl", t_none, CP5, ("a.pem.pub", "b.pem.pub")),
    "real-pinned-a-only": ("export.jsonl", t_none, None, ("a.pem.pub",)),
    "real-stream": ("stream.jsonl", t_none, None, ()),
    "payload-byte": ("export.jsonl", t_payload_byte, None, ()),
    "payload-byte-against-5": ("export.jsonl", t_payload_byte, CP5, ()),
    "swap-3-4": ("export.jsonl", t_swap(3, 4), None, ()),
    "swap-5-6": ("export.jsonl", t_swap(5, 6), None, ()),
    "delete-3": ("export.jsonl", t_delete(3), None, ()),
    "delete-5": ("export.jsonl", t_delete(5), CP5, ()),
    "truncate-tail": ("export.jsonl", t_cut_after(5), None, ()),
    "truncate-tail-against-7": ("export.jsonl", t_cut_after(5), CP7, ()),
    "truncate-mid-line": ("export.jsonl", t_cut_mid_line, None, ()),
    "truncate-resigned": ("export.jsonl", t_cut_resigned, None, ()),
    "truncate-resigned-against-5": ("export.jsonl", t_cut_resigned, CP5, ()),
    "truncate-resigned-against-6": ("export.jsonl", t_cut_resigned, CP6, ()),
    "truncate-resigned-against-7": ("export.jsonl", t_cut_resigned, CP7, ()),
    "rewrite-head": ("export.jsonl", t_rewrite_head, None, ()),
    "rewrite-head-against-7": ("export.jsonl", t_rewrite_head, CP7, ()),
    "seal-signature": ("export.jsonl", t_seal_signature, None, ()),
    "checkpoint-signature": ("export.jsonl", t_checkpoint_signature, None, ()),
    "header-public-key": ("export.jsonl", t_header_public_key, None, ()),
    "header-key-id": ("export.jsonl", t_header_key_id, None, ()),
    "extra-blank-line": ("export.jsonl", t_extra_line, None, ()),
    "seal-extra-member": ("export.jsonl", t_seal_extra_member, None, ()),
    "signature-pad-bits": ("export.jsonl", t_signature_pad_bits, None, ()),
    "checkpoint-foreign-origin": ("export.jsonl", t_checkpoint_foreign_origin, None, ()),
    "stream-delete-position-2": ("stream.jsonl", t_delete(3), None, ()),
    "stream-payload-byte": ("stream.jsonl", t_payload_byte, None, ()),
    # formerly different (docs/compliance.md now says what both do)
    "seq-as-string": ("export.jsonl", t_edit(3, '"seq":3', '"seq":"3"'), None, ()),
    "seq-as-boolean": ("export.jsonl", t_edit(1, '"seq":1', '"seq":true'), None, ()),
    "stream-as-number": ("export.jsonl", t_edit(3, f'"stream":"{UPGRADE}"', '"stream":5'),
                         None, ()),
    "type-as-number": ("export.jsonl", t_edit(3, '"type":"state.changed"', '"type":5'),
                       None, ()),
    "closes-as-string": ("export.jsonl", t_edit(2, '"closes":false', '"closes":"false"'),
                         None, ()),
    "type-lone-surrogate": ("export.jsonl",
                            t_edit(3, '"type":"state.changed"', '"type":"\\ud800"'), None, ()),
    "rotation-without-previous-key-id": ("export.jsonl", t_rotation_without_previous, None,
                                         ()),
    "header-ledger-id-number": ("export.jsonl", t_header("ledger_id", 5), None, ()),
    "header-stream-number": ("export.jsonl", t_header("stream", 5), None, ()),
    "header-stream-false": ("export.jsonl", t_header("stream", False), None, ()),
    "header-stream-empty": ("export.jsonl", t_header("stream", ""), None, ()),
    "header-keys-object": ("export.jsonl", t_header("keys", {}), None, ()),
    "checkpoint-ignored-signature-lines": (
        "export.jsonl", t_signature_lines("\u2014 other\n\u2014 \n\u2014 other ***\n"
                                          "\u2014 statekeeper:zz AAAA BBBB\n"), None, ()),
    "checkpoint-empty-statekeeper-blob": (
        "export.jsonl", t_signature_lines("\u2014 statekeeper:zz \n"), None, ()),
    "checkpoint-not-a-signature-line": (
        "export.jsonl", t_signature_lines("\u2014x\n"), None, ()),
    "real-against-5-crlf": ("export.jsonl", t_none, CP5_CRLF, ()),
    "real-against-size-0": ("export.jsonl", t_none, CP0, ()),
    "stream-payload-byte-against-5": ("stream.jsonl", t_payload_byte, CP5, ()),
    "stream-checkpoint-key-undecodable": ("stream.jsonl", t_stream_checkpoint_by_undecodable_key,
                                          None, ()),
}

# What each case must give (ok, seq, reason): pinned here too, so that a change in either
# implementation shows, not only a disagreement between them.
EXPECTED: dict[str, tuple[bool, int | None, str | None]] = {
    "real": (True, None, None),
    "real-against-5": (True, None, None),
    "real-against-7": (True, None, None),
    "real-pinned-a-b": (True, None, None),
    "real-pinned-a-only": (False, 7, "unknown key"),
    "real-stream": (True, None, None),
    "payload-byte": (False, 3, "hash mismatch"),
    "payload-byte-against-5": (False, 3, "hash mismatch"),
    "swap-3-4": (False, 3, "gap"),
    "swap-5-6": (False, 5, "gap"),
    "delete-3": (False, 3, "gap"),
    "delete-5": (False, 5, "gap"),
    "truncate-tail": (False, 6, "truncated"),
    "truncate-tail-against-7": (False, 6, "truncated"),
    "truncate-mid-line": (False, 8, "malformed event"),
    "truncate-resigned": (True, None, None),
    "truncate-resigned-against-5": (True, None, None),
    "truncate-resigned-against-6": (False, 6, "truncated"),
    "truncate-resigned-against-7": (False, 7, "bad seal"),
    "rewrite-head": (True, None, None),
    "rewrite-head-against-7": (False, 7, "checkpoint mismatch"),
    "seal-signature": (False, 4, "bad seal"),
    "checkpoint-signature": (False, 7, "bad seal"),
    "header-public-key": (False, 1, "key mismatch"),
    "header-key-id": (False, 1, "unknown key"),
    "extra-blank-line": (False, None, "malformed event"),
    "seal-extra-member": (False, 4, "malformed event"),
    "signature-pad-bits": (False, 4, "malformed event"),
    "checkpoint-foreign-origin": (False, 7, "bad seal"),
    "stream-delete-position-2": (False, 4, "gap"),
    "stream-payload-byte": (False, 3, "hash mismatch"),
    "seq-as-string": (False, None, "malformed event"),
    "seq-as-boolean": (False, None, "malformed event"),
    "stream-as-number": (False, 3, "malformed event"),
    "type-as-number": (False, 3, "malformed event"),
    "closes-as-string": (False, 2, "malformed event"),
    "type-lone-surrogate": (False, 3, "malformed event"),
    "rotation-without-previous-key-id": (False, 6, "malformed event"),
    "header-ledger-id-number": (False, None, "malformed event"),
    "header-stream-number": (False, None, "malformed event"),
    "header-stream-false": (False, None, "malformed event"),
    "header-stream-empty": (False, None, "malformed event"),
    "header-keys-object": (False, None, "malformed event"),
    "checkpoint-ignored-signature-lines": (True, None, None),
    "checkpoint-empty-statekeeper-blob": (False, 7, "bad seal"),
    "checkpoint-not-a-signature-line": (False, 7, "bad seal"),
    "real-against-5-crlf": (True, None, None),
    "real-against-size-0": (False, 0, "checkpoint mismatch"),
    "stream-payload-byte-against-5": (False, 3, "hash mismatch"),
    "stream-checkpoint-key-undecodable": (False, 4, "bad seal"),
}


# The reference, `statekeeper ledger verify-export --json ...`, run in a subprocess through the
# console-script entry point (pyproject: statekeeper = "cli.main:main"). One interpreter runs
# every case in turn: starting one per case costs about a second each on a small machine.
DRIVER = """
import contextlib, io, json, sys
from cli.main import main
results = []
for argv in json.load(sys.stdin):
    sys.argv = ["statekeeper", *argv]
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main()
        except SystemExit as exc:
            rc = exc.code
    results.append([rc, out.getvalue(), err.getvalue()])
json.dump(results, sys.stdout)
"""


def _argv(export: Path, against: Path | None, keys: list[Path]) -> list[str]:
    argv = ["ledger", "verify-export", "--json", str(export)]
    if against is not None:
        argv += ["--against", str(against)]
    for k in keys:
        argv += ["--trusted-key", str(k)]
    return argv


def _reference_all(argvs: list[list[str]]) -> list[tuple]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", DRIVER], cwd=ROOT, env=env,
                          input=json.dumps(argvs), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    results = []
    for rc, out, err in json.loads(proc.stdout):
        if rc in (0, None):
            assert json.loads(out)["ok"] is True
            results.append((True, None, None))
        else:
            assert rc == 4, (rc, out, err)
            doc = json.loads(out)
            results.append((doc["ok"], doc["seq"], doc["reason"]))
    return results


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple]:
    """Make the fixture, write every tampered copy, and run the reference on all of them."""
    base = tmp_path_factory.mktemp("audit")
    fx = make_audit_fixture(base / "fixture")
    lines = _lines(fx.export)
    ledger_id, head6 = json.loads(lines[0])["ledger_id"], json.loads(lines[6])["hash"]
    (fx.directory / CP6).write_text(_sign_checkpoint(
        _private(fx, "a.pem"), f"statekeeper/{ledger_id}", 6, head6), encoding="utf-8")
    (fx.directory / CP5_CRLF).write_bytes(fx.checkpoint_5.read_bytes().replace(b"\n", b"\r\n"))
    (fx.directory / CP0).write_text(_sign_checkpoint(
        _private(fx, "a.pem"), f"statekeeper/{ledger_id}", 0, "0" * 64), encoding="utf-8")
    jobs = {}
    for name, (source, tamper, against, keys) in CASES.items():
        lines = tamper(fx, _lines(fx.directory / source))
        export = _write(base / f"{name}.jsonl", lines)
        jobs[name] = (export, fx.directory / against if against else None,
                      [fx.directory / k for k in keys])
    results = _reference_all([_argv(*job) for job in jobs.values()])
    return {name: (job, result) for (name, job), result in zip(jobs.items(), results,
                                                                  strict=True)}


@pytest.mark.parametrize("case", list(CASES))
def test_agrees_with_reference(prepared: dict[str, tuple], case: str) -> None:
    (export, against, keys), reference = prepared[case]
    mine = iv.verify(export, against=against, trusted_keys=keys or None)
    assert mine == reference
    assert mine == EXPECTED[case]


def test_stream_export_against_is_a_usage_error(prepared: dict[str, tuple]) -> None:
    (export, _, _), _ = prepared["real"]
    stream = export.parent / "real-stream.jsonl"
    with pytest.raises(iv.UsageError):
        iv.verify(stream, against=export.parent / "fixture" / CP5)


def test_command_line(prepared: dict[str, tuple], capsys: pytest.CaptureFixture) -> None:
    """The auditor's command; its exit codes and --json are those of `python3 -m cli` (run
    once here, as the officer would)."""
    (export, against, _), _ = prepared["real-against-5"]
    assert iv.main([str(export), "--against", str(against)]) == 0
    (bad, _, _), _ = prepared["payload-byte"]
    capsys.readouterr()
    assert iv.main([str(bad), "--json"]) == 4
    mine = json.loads(capsys.readouterr().out)
    proc = subprocess.run([sys.executable, "-m", "cli", *_argv(bad, None, [])], cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 4
    reference = json.loads(proc.stdout)
    assert {k: mine[k] for k in ("ok", "seq", "reason")} == {
        k: reference[k] for k in ("ok", "seq", "reason")}
    assert iv.main([str(bad.parent / "missing.jsonl")]) == 2


def test_canonical_json_of_the_worked_example() -> None:
    """docs/compliance.md's envelope example: UTF-16 key order, escapes, and its hash."""
    text = (ROOT / "docs" / "compliance.md").read_text(encoding="utf-8")
    envelope = text.split("<!-- example: envelope -->\n```json\n")[1].split("\n```")[0]
    assert iv.canonical(iv.loads(envelope)) == envelope
    assert hashlib.sha256(envelope.encode()).hexdigest() == (
        "f22a846d39abc8cf26a10244285129cce193ca50165916a66035ff55efdd9ea2")
    assert iv.canonical({"\U0001f600": 1, "\ufb33": 2, "a": "\x01\u2028/"}) == (
        '{"a":"\\u0001\u2028/","\U0001f600":1,"\ufb33":2}')
    for bad in ("1.0", "1e3", '{"a":1,"a":2}', "NaN"):
        with pytest.raises(ValueError):
            iv.loads(bad)
    with pytest.raises(iv.NotCanonical):
        iv.canonical(2**53)


def test_imports_only_stdlib_and_cryptography() -> None:
    tree = ast.parse(MODULE.read_text(encoding="utf-8"))
    roots = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "no relative imports"
            roots.add(node.module.split(".")[0])
    assert not roots & {"ledger", "statekeeper", "cli", "tests"}
    assert roots - {"cryptography"} <= set(sys.stdlib_module_names), roots
    # and it runs as a script from outside the repository, with nothing on the path
    proc = subprocess.run([sys.executable, "-I", str(MODULE), "--help"], cwd="/",
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
