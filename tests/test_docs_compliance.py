"""docs/compliance.md's worked example is true: every value it shows is recomputed from the
doc's own text with nothing but hashlib, base64 and an Ed25519 verifier (as an auditor would),
and the audit fixture it came from still verifies."""

from __future__ import annotations

import base64
import hashlib
import json
import re
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

import ledger
from tests.audit_fixture import make_audit_fixture

DOC = (Path(__file__).resolve().parent.parent / "docs" / "compliance.md").read_text()


def _block(name: str) -> str:
    m = re.search(rf"<!-- example: {name} -->\n```[a-z]*\n(.*?)\n```", DOC, re.S)
    assert m, name
    return m.group(1)


def test_worked_example_recomputes_from_the_doc() -> None:
    header, line, env = json.loads(_block("header")), _block("event"), _block("envelope")
    ev = json.loads(line)
    # the event line: the ten members canonical, then actor and payload spliced
    head = {k: v for k, v in ev.items() if k not in ("actor", "payload")}
    rebuilt = (json.dumps(head, sort_keys=True, separators=(",", ":"), ensure_ascii=False)[:-1]
               + ',"actor":' + json.dumps(ev["actor"], sort_keys=True, separators=(",", ":"))
               + ',"payload":' + json.dumps(ev["payload"], sort_keys=True, separators=(",", ":"))
               + "}")
    assert rebuilt == line
    hashed = {k: v for k, v in ev.items() if k not in ("hash", "seal")}
    assert json.dumps(hashed, sort_keys=True, separators=(",", ":")) == env
    assert len(env.encode()) == 572
    assert hashlib.sha256(env.encode()).hexdigest() == ev["hash"] == (
        "f22a846d39abc8cf26a10244285129cce193ca50165916a66035ff55efdd9ea2")
    raw = base64.b64decode(ev["payload"]["public_key"])
    assert hashlib.sha256(raw).hexdigest() == ev["payload"]["key_id"] == ev["seal"]["key_id"]
    assert header["keys"][0] == {"key_id": ev["payload"]["key_id"],
                                 "public_key": ev["payload"]["public_key"]}
    message = f"statekeeper-ledger-seal-v2\n1\n1\n{ev['hash']}\n".encode()
    assert len(message) == 96
    key = Ed25519PublicKey.from_public_bytes(raw)
    key.verify(base64.b64decode(ev["seal"]["signature"]), message)  # raises if it does not

    cp = _block("checkpoint") + "\n"
    body, sig = cp.split("\n\n")
    origin, size, root = body.split("\n")
    assert origin == f"statekeeper/{header['ledger_id']}" and size == "5"
    assert base64.b64decode(root).hex() == (
        "0c06f732505a233dc742173f7326b054591cc558075d9b05fc46374c803a93fb")
    name, blob_b64 = sig.rstrip("\n")[2:].split(" ")
    blob = base64.b64decode(blob_b64)
    assert blob[:4] == hashlib.sha256(name.encode() + b"\n\x01" + raw).digest()[:4]
    assert blob[:4].hex() == "108c1280"
    key.verify(blob[4:], (body + "\n").encode())


def test_audit_fixture_verifies(tmp_path: Path) -> None:
    fx = make_audit_fixture(tmp_path / "fx")
    trusted = [ledger.load_public_key(fx.key_a), ledger.load_public_key(fx.key_b)]
    r = ledger.verify_export(fx.export, against=ledger.parse_checkpoint(
        fx.checkpoint_5.read_text()), trusted=trusted)
    assert (r.events, r.head.seq, r.events_after, r.keys) == (7, 7, 2, (fx.key_id_a, fx.key_id_b))
    assert ledger.verify_export(fx.export, against=ledger.parse_checkpoint(
        fx.checkpoint_7.read_text())).events_after == 0
    s = ledger.verify_export(fx.stream_export)
    assert (s.events, s.position, s.head.seq) == (4, 4, 7)
