"""An independent verifier of statekeeper ledger exports, written from docs/compliance.md alone.

It follows the section "Specification: verifying an export" (header checks, L1..L4, E1..E12,
F1..F12, A1..A6) and nothing else: it imports only the standard library and ``cryptography``
(for Ed25519), never ``ledger`` or ``statekeeper``.

    verify(export_path, *, against=None, trusted_keys=None) -> (ok, seq, reason)

``reason`` is one of the strings of the specification's "Reasons" table; ``seq`` is the event
the fault is reported at (None when no single event is at fault). Usage errors (exit 2 of
``statekeeper ledger verify-export``: not an export, an unsupported version, a malformed
``--against`` checkpoint or trusted key, ``--against`` with a stream export) raise
``UsageError``. ``verify_detailed`` also returns the free-text detail.

Command line (exit 0 verified, 2 usage error, 4 integrity violation):

    python tests/independent_verifier.py EXPORT [--against CHECKPOINT]
        [--trusted-key PUBKEY.pem ...] [--json]
"""

from __future__ import annotations

import argparse
import base64
import binascii
import hashlib
import json
import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

ZERO_HASH = "0" * 64
MAX_INT = 2**53 - 1
HEX64 = re.compile(r"[0-9a-f]{64}")
TIMESTAMP = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{6}Z")
EXPORT_FORMAT = "statekeeper-ledger-export"
EXPORT_VERSION = 2
SEAL_DOMAIN = "statekeeper-ledger-seal-v2"
EM_DASH = "\u2014"
EVENT_MEMBERS = ("seq", "stream", "stream_seq", "type", "recorded_at", "actor", "payload",
                 "closes", "prev_hash", "stream_prev_hash", "hash", "seal")


class UsageError(Exception):
    """Exit 2: not an export, unsupported version, bad --against / --trusted-key, ..."""


class Fault(Exception):
    """An integrity violation (exit 4): the first fault found."""

    def __init__(self, reason: str, seq: int | None, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.seq = seq
        self.detail = detail


class NotCanonical(Exception):
    """A value outside canonical JSON's domain (float, integer out of range, lone surrogate)."""


# --- canonical JSON (RFC 8785 restricted) ---------------------------------------------------

def _reject_float(text: str) -> object:
    raise ValueError(f"not an integer: {text}")


def _reject_constant(text: str) -> object:
    raise ValueError(f"not JSON: {text}")


def _no_repeats(pairs: list[tuple[str, object]]) -> dict[str, object]:
    out: dict[str, object] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"repeated key {key!r}")
        out[key] = value
    return out


def loads(text: str) -> object:
    """Parse JSON, refusing floats, NaN/Infinity and repeated keys (raises ValueError)."""
    return json.loads(text, parse_float=_reject_float, parse_constant=_reject_constant,
                      object_pairs_hook=_no_repeats)


_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f",
            "\r": "\\r"}


def _string(s: str) -> str:
    out = ['"']
    for ch in s:
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif ord(ch) < 0x20:
            out.append(f"\\u{ord(ch):04x}")
        elif 0xD800 <= ord(ch) <= 0xDFFF:
            raise NotCanonical("lone surrogate in a string")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def _utf16_key(key: str) -> bytes:
    return key.encode("utf-16-be", "surrogatepass")


def canonical(value: object) -> str:
    """The canonical text of a value (raises NotCanonical outside the domain)."""
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if type(value) is int:
        if not -MAX_INT <= value <= MAX_INT:
            raise NotCanonical(f"integer out of range: {value}")
        return str(value)
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, list):
        return "[" + ",".join(canonical(v) for v in value) + "]"
    if isinstance(value, dict):
        for key in value:
            if not isinstance(key, str):
                raise NotCanonical("object key is not a string")
        keys = sorted(value, key=_utf16_key)
        return "{" + ",".join(_string(k) + ":" + canonical(value[k]) for k in keys) + "}"
    raise NotCanonical(f"not a canonical JSON value: {type(value).__name__}")


def is_canonical_value(value: object) -> bool:
    try:
        canonical(value)
    except NotCanonical:
        return False
    return True


# --- small helpers ---------------------------------------------------------------------------

def b64decode(text: object) -> bytes | None:
    """RFC 4648 section 4 base64 with validation (alphabet, padding); None if it fails."""
    if not isinstance(text, str):
        return None
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, ValueError, UnicodeEncodeError):
        return None


def b64canonical(text: object, length: int) -> bytes | None:
    """Decode base64 that MUST be the canonical spelling of `length` bytes."""
    raw = b64decode(text)
    if raw is None or len(raw) != length or base64.b64encode(raw).decode() != text:
        return None
    return raw


def _scalar_values(text: str) -> bool:
    """Does the string hold Unicode scalar values only (no lone surrogate)?"""
    return not any(0xD800 <= ord(ch) <= 0xDFFF for ch in text)


def key_id_of(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()


def ed25519_verify(raw_key: bytes, signature: bytes, message: bytes) -> bool:
    try:
        Ed25519PublicKey.from_public_bytes(raw_key).verify(signature, message)
    except (InvalidSignature, ValueError):
        return False
    return True


def seal_message(first: int, last: int, last_hash: str) -> bytes:
    return f"{SEAL_DOMAIN}\n{first}\n{last}\n{last_hash}\n".encode("ascii")


def event_line(ev: dict) -> str:
    """The export line of an event rebuilt from its parsed values (The export file)."""
    head = {k: ev[k] for k in ("closes", "hash", "prev_hash", "recorded_at", "seal", "seq",
                               "stream", "stream_prev_hash", "stream_seq", "type")}
    seal = ev["seal"]
    if seal is not None:
        # The export file: the rebuild takes the seal's three members and re-encodes the
        # signature from its decoded bytes (another spelling is not the rebuilt line).
        raw = b64decode(seal["signature"])
        head["seal"] = {"first": seal["first"], "key_id": seal["key_id"],
                        "signature": base64.b64encode(raw).decode() if raw is not None
                        else seal["signature"]}
    return (canonical(head)[:-1] + ',"actor":' + canonical(ev["actor"]) + ',"payload":'
            + canonical(ev["payload"]) + "}")


def envelope(ev: dict) -> str:
    return canonical({k: ev[k] for k in ("actor", "closes", "payload", "prev_hash",
                                         "recorded_at", "seq", "stream", "stream_prev_hash",
                                         "stream_seq", "type")})


# --- checkpoints ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Checkpoint:
    origin: str
    ledger_id: str
    stream: str | None
    size: int
    root_hex: str
    body: bytes
    key_name: str
    key_id: str
    key_hash: bytes
    signature: bytes

    def verifies_with(self, key_id: str, public_key_text: object) -> bool:
        """Checkpoints: K's id is the name's, the key hash matches K, the signature verifies."""
        raw = b64decode(public_key_text)
        if raw is None or len(raw) != 32 or key_id != self.key_id or key_id_of(raw) != key_id:
            return False
        expect = hashlib.sha256(self.key_name.encode() + b"\n\x01" + raw).digest()[:4]
        return expect == self.key_hash and ed25519_verify(raw, self.signature, self.body)


_SIZE = re.compile(r"0|[1-9][0-9]*")


def parse_checkpoint(text: object) -> Checkpoint:
    """Parse a signed-note checkpoint; raises ValueError on any fault."""
    if not isinstance(text, str):
        raise ValueError("checkpoint is not a string")
    stripped = text.rstrip("\n")
    lines = stripped.split("\n")
    if len(lines) < 5:
        raise ValueError("too few lines")
    origin, size_text, root_text, blank = lines[:4]
    if not origin or blank != "":
        raise ValueError("bad body or missing blank line")
    if not _SIZE.fullmatch(size_text):
        raise ValueError("bad size")
    root = b64canonical(root_text, 32)
    if root is None:
        raise ValueError("bad root")
    chosen: tuple[str, bytes] | None = None
    for line in lines[4:]:
        if not line.startswith(EM_DASH + " "):
            raise ValueError("not a signature line")
        # Checkpoints: a signature line that is not well-formed (exactly two fields after the
        # dash and space, either possibly empty) is ignored; the first well-formed
        # statekeeper: line is used and checked (an empty blob is not 68 bytes).
        parts = line[2:].split(" ")
        if len(parts) != 2:
            continue
        name, blob_text = parts
        if chosen is None and name.startswith("statekeeper:"):
            blob = b64canonical(blob_text, 68)
            if blob is None:
                raise ValueError("statekeeper signature is not 68 bytes of canonical base64")
            chosen = (name, blob)
    if chosen is None:
        raise ValueError("no statekeeper signature line")
    name, blob = chosen
    if not origin.startswith("statekeeper/"):
        raise ValueError(f"origin {origin!r} is not a statekeeper ledger")
    ledger_id, sep, tail = origin[len("statekeeper/"):].partition("/")
    stream = tail if sep else None
    body = (origin + "\n" + size_text + "\n" + root_text + "\n").encode("utf-8")
    return Checkpoint(origin, ledger_id, stream, int(size_text), root.hex(), body, name,
                      name[len("statekeeper:"):], blob[:4], blob[4:])


def read_checkpoint_file(path: str | os.PathLike[str]) -> Checkpoint:
    try:
        data = open(path, "rb").read().decode("utf-8")  # noqa: SIM115
        # Checkpoints: the file is read as UTF-8 with universal newlines (a BOM is kept).
        return parse_checkpoint(data.replace("\r\n", "\n").replace("\r", "\n"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise UsageError(f"--against {os.fspath(path)}: not a checkpoint: {exc}") from exc


def read_trusted_key(item: object) -> str:
    """A pinned key: a PEM public key file (path), PEM bytes, raw 32 bytes, an Ed25519PublicKey,
    or a key id (64 hex). Returns the key id."""
    if isinstance(item, Ed25519PublicKey):
        return key_id_of(item.public_bytes(serialization.Encoding.Raw,
                                           serialization.PublicFormat.Raw))
    if isinstance(item, bytes) and len(item) == 32:
        return key_id_of(item)
    if isinstance(item, str) and HEX64.fullmatch(item) and not os.path.exists(item):
        return item
    try:
        data = item if isinstance(item, bytes) else open(item, "rb").read()  # noqa: SIM115
        if b"PRIVATE KEY" in data:  # Keys: statekeeper also takes one (no mode check here)
            key = serialization.load_pem_private_key(data, None).public_key()
        else:
            key = serialization.load_pem_public_key(data)
    except (OSError, TypeError, ValueError) as exc:
        raise UsageError(f"--trusted-key {item!r}: not a public key: {exc}") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise UsageError(f"--trusted-key {item!r}: not an Ed25519 public key")
    return read_trusted_key(key)


# --- the algorithm --------------------------------------------------------------------------

@dataclass
class Result:
    ok: bool
    seq: int | None = None
    reason: str | None = None
    detail: str | None = None
    events: int = 0
    head_seq: int | None = None
    head_hash: str | None = None
    ledger_id: str | None = None
    stream: str | None = None
    keys: list[str] = field(default_factory=list)
    trusted_keys: list[str] = field(default_factory=list)
    checkpoint: dict | None = None
    against: dict | None = None

    def as_json(self) -> dict:
        if not self.ok:
            return {"ok": False, "seq": self.seq, "reason": self.reason, "detail": self.detail}
        return {"ok": True, "events": self.events, "head_seq": self.head_seq,
                "head_hash": self.head_hash, "ledger_id": self.ledger_id,
                "stream": self.stream, "keys": self.keys, "trusted_keys": self.trusted_keys,
                "checkpoint": self.checkpoint, "against": self.against}


def _split_lines(text: str) -> list[str]:
    """Lines at \\n, \\r\\n or a lone \\r (universal newlines); the last MAY lack one."""
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return lines


def _read_header(line: str) -> dict:
    try:
        header = loads(line)
    except ValueError as exc:
        raise UsageError(f"not an export: line 1 is not JSON ({exc})") from exc
    if not isinstance(header, dict) or header.get("format") != EXPORT_FORMAT:
        raise UsageError("not an export: line 1 is not an export header")
    version = header.get("version")
    if type(version) is not int or version != EXPORT_VERSION:
        raise UsageError(f"export version {version!r} is not supported (only 2)")
    if set(header) != {"format", "keys", "ledger_id", "stream", "version"}:
        raise Fault("malformed event", None, "the header does not have exactly its five members")
    try:
        rebuilt = canonical(header)
    except NotCanonical:
        rebuilt = None
    if rebuilt != line:
        raise Fault("malformed event", None, "the header is not canonical JSON")
    if not isinstance(header["ledger_id"], str):
        raise Fault("malformed event", None, "the header's ledger_id is not a string")
    stream = header["stream"]
    if stream is not None and (not isinstance(stream, str) or stream == ""):
        raise Fault("malformed event", None, "the header's stream is not null or a name")
    keys = header["keys"]
    if not isinstance(keys, list) or not all(
            isinstance(k, dict) and isinstance(k.get("key_id"), str)
            and isinstance(k.get("public_key"), str) for k in keys):
        raise Fault("malformed event", None, "the header's keys are malformed")
    seen: set[str] = set()
    for k in keys:
        if k["key_id"] in seen:
            raise Fault("key mismatch", None, f"key {k['key_id']} is listed twice")
        seen.add(k["key_id"])
    return header


class _Verifier:
    def __init__(self, header: dict, pinned: set[str] | None) -> None:
        self.header = header
        self.stream_mode = header["stream"] is not None
        self.keys: dict[str, str] = {k["key_id"]: k["public_key"] for k in header["keys"]}
        self.pinned = pinned
        self.last_seq: int | None = None
        self.last_hash = ZERO_HASH
        self.streams: dict[str, tuple[int, str]] = {}
        self.open_first: int | None = None
        self.open_stream: str | None = None
        self.active: str | None = None
        self.pending: str | None = None
        self.introduced: set[str] = set()
        self.genesis_ledger_id: object = None
        self.count = 0
        self.checkpoint_line: object = None
        self.checkpoint_read = False
        self.deferred: Fault | None = None
        self.hashes: dict[int, str] = {}

    # L1..L4
    def line(self, text: str) -> None:
        if self.checkpoint_read:
            raise Fault("malformed event", None, "data after the closing checkpoint")
        try:
            obj = loads(text)
        except ValueError as exc:
            seq = None if self.stream_mode else (self.last_seq or 0) + 1
            raise Fault("malformed event", seq, f"not JSON: {exc}") from exc
        if isinstance(obj, dict) and set(obj) == {"checkpoint"}:
            self.checkpoint_read = True
            self.checkpoint_line = obj["checkpoint"]
            try:
                ok = canonical(obj) == text
            except NotCanonical:
                ok = False
            if not ok:
                self._defer(Fault("malformed event", None,
                                  "the closing checkpoint line is not canonical"))
            return
        self.event(obj, text)

    def _defer(self, fault: Fault) -> None:
        if self.deferred is None:
            self.deferred = fault

    def _check_members(self, obj: object) -> dict:
        seq = obj.get("seq") if isinstance(obj, dict) else None
        at = seq if type(seq) is int else None

        def bad(why: str) -> Fault:
            return Fault("malformed event", at, why)

        if not isinstance(obj, dict):
            raise bad("an event line is not an object")
        missing = [m for m in EVENT_MEMBERS if m not in obj]
        if missing:
            raise bad(f"missing members {missing}")
        # L4: the JSON types, never converted.
        if type(obj["seq"]) is not int or type(obj["stream_seq"]) is not int:
            raise bad("seq and stream_seq must be integers")
        for m in ("stream", "type", "recorded_at", "prev_hash", "stream_prev_hash", "hash"):
            if not isinstance(obj[m], str):
                raise bad(f"{m} is not a string")
            if not _scalar_values(obj[m]):
                raise bad(f"{m} holds a lone surrogate")
        if not isinstance(obj["closes"], bool):
            raise bad("closes is not a boolean")
        seal = obj["seal"]
        if seal is not None and (
                not isinstance(seal, dict) or type(seal.get("first")) is not int
                or not isinstance(seal.get("key_id"), str)
                or not _scalar_values(seal["key_id"])
                or b64decode(seal.get("signature")) is None):
            raise bad("malformed seal")
        if not is_canonical_value(obj["actor"]) or not is_canonical_value(obj["payload"]):
            raise bad("actor or payload has no canonical encoding")
        return obj

    def event(self, obj: object, text: str) -> None:
        ev = self._check_members(obj)
        seq: int = ev["seq"]
        ledger_mode = not self.stream_mode
        # E1
        if self.last_seq is not None:
            if seq <= self.last_seq:
                raise Fault("reorder", seq, f"seq {seq} after seq {self.last_seq}")
            if ledger_mode and seq != self.last_seq + 1:
                raise Fault("gap", self.last_seq + 1, f"seq {seq} follows {self.last_seq}")
        elif ledger_mode and seq != 1:
            raise Fault("gap", 1, f"the first event has seq {seq}")
        # E2
        if not HEX64.fullmatch(ev["prev_hash"]) or not HEX64.fullmatch(ev["stream_prev_hash"]):
            raise Fault("malformed event", seq, "prev_hash / stream_prev_hash not 64 hex")
        if not TIMESTAMP.fullmatch(ev["recorded_at"]):
            raise Fault("malformed event", seq, "recorded_at does not match the format")
        # E3
        if not isinstance(ev["actor"], dict):
            raise Fault("malformed event", seq, "actor is not an object")
        # E4
        computed = hashlib.sha256(envelope(ev).encode("utf-8")).hexdigest()
        if computed != ev["hash"]:
            raise Fault("hash mismatch", seq, f"envelope hashes to {computed}")
        # E5
        if ledger_mode and ev["prev_hash"] != self.last_hash:
            raise Fault("broken link", seq, "prev_hash is not the previous event's hash")
        # E6
        stream = ev["stream"]
        if self.stream_mode and stream != self.header["stream"]:
            raise Fault("reorder", seq, f"event of stream {stream!r} in a stream export")
        # E7
        p, p_hash = self.streams.get(stream, (0, ZERO_HASH))
        if ev["stream_seq"] < p + 1:
            raise Fault("reorder", seq, f"stream_seq {ev['stream_seq']} after {p}")
        if ev["stream_seq"] > p + 1:
            raise Fault("gap", seq, f"stream_seq {ev['stream_seq']} after {p}")
        # E8
        if ev["stream_prev_hash"] != p_hash:
            raise Fault("broken stream link", seq, "stream_prev_hash is not the stream's last")
        self.streams[stream] = (ev["stream_seq"], ev["hash"])
        # E9
        if ledger_mode:
            self._key_events(ev)
        # E10
        if self.open_first is None:
            self.open_first, self.open_stream = seq, stream
        elif stream != self.open_stream or seq != (self.last_seq or 0) + 1:
            raise Fault("unsealed events", self.open_first, "the open append never closed")
        first_open = self.open_first
        # E11
        seal = ev["seal"]
        if ev["closes"]:
            if seal is None:
                raise Fault("missing seal", first_open, "the append has no seal")
            first = seal["first"]
            if first > first_open:
                raise Fault("unsealed events", first_open,
                            f"the seal covers {first}..{seq}, the append began at {first_open}")
            if first < first_open:
                if ledger_mode or first < 1:
                    raise Fault("bad seal", seq, "the seal overlaps the previous append")
                raise Fault("gap", first, "the append's earlier events are missing")
            key_id = seal["key_id"]
            if self.pinned is not None and key_id not in self.pinned:
                raise Fault("unknown key", seq, f"seal by {key_id}, not a pinned key")
            if ledger_mode and key_id != self.active:
                if key_id in self.keys and key_id in self.introduced:
                    raise Fault("bad seal", seq, f"seal by {key_id}, not the active key")
                raise Fault("unknown key", seq, f"seal by {key_id}, not the active key")
            if key_id not in self.keys:
                raise Fault("unknown key", seq, f"seal by {key_id}, not listed")
            raw = b64decode(self.keys[key_id])
            if raw is None or len(raw) != 32 or key_id_of(raw) != key_id:
                raise Fault("key mismatch", seq, f"listed key {key_id} does not match its id")
            signature = b64decode(seal["signature"]) or b""
            if not ed25519_verify(raw, signature, seal_message(first, seq, ev["hash"])):
                raise Fault("bad seal", seq, "the seal's signature does not verify")
            if ledger_mode:
                self.active = self.pending
            self.open_first = self.open_stream = None
        elif seal is not None:
            raise Fault("bad seal", seq, "a seal on an event that does not close its append")
        self.last_seq, self.last_hash = seq, ev["hash"]
        self.hashes[seq] = ev["hash"]
        self.count += 1
        # E12
        try:
            same = event_line(ev) == text
        except NotCanonical:
            same = False
        if not same:
            self._defer(Fault("malformed event", seq, "not the canonical text of its event"))

    def _key_events(self, ev: dict) -> None:
        seq, typ, payload = ev["seq"], ev["type"], ev["payload"]

        def get(member: str) -> object:
            # E9: members are read in the order the text lists them (a genesis without
            # ledger_id but with a bad key is a key mismatch).
            if not isinstance(payload, dict) or member not in payload:
                raise Fault("malformed event", seq, f"{typ} payload lacks {member}")
            return payload[member]

        if seq == 1:
            if typ != "ledger.genesis":
                raise Fault("malformed event", seq, "seq 1 is not a ledger.genesis event")
            fmt = get("format")
            if type(fmt) is not int or fmt != 2:
                raise Fault("malformed event", seq, f"ledger format {fmt!r}, not 2")
            key_id = self._introduce(seq, get)
            self.genesis_ledger_id = get("ledger_id")
            self.active = self.pending = key_id
        elif typ == "ledger.genesis":
            raise Fault("malformed event", seq, "second genesis event")
        elif typ == "ledger.key_rotated" and ev["stream"] == "ledger":
            if get("previous_key_id") != self.active:
                raise Fault("key mismatch", seq, "previous_key_id is not the active key")
            self.pending = self._introduce(seq, get)

    def _introduce(self, seq: int, get: Callable[[str], object]) -> object:
        key_id, public_key = get("key_id"), get("public_key")
        raw = b64decode(public_key)
        if raw is None or len(raw) != 32:
            raise Fault("malformed event", seq, "public_key is not base64 of 32 bytes")
        if key_id_of(raw) != key_id:
            raise Fault("key mismatch", seq, "public_key does not hash to key_id")
        if not isinstance(key_id, str) or key_id not in self.keys:
            raise Fault("unknown key", seq, f"key {key_id} is not listed in the header")
        if self.keys[key_id] != public_key:
            raise Fault("key mismatch", seq, f"the header lists key {key_id} with other text")
        self.introduced.add(key_id)
        return key_id

    # F1..F12
    def finish(self, against: Checkpoint | None) -> Result:
        last_seq = self.last_seq
        nxt = (last_seq or 0) + 1
        full = not self.stream_mode
        if not self.checkpoint_read:
            raise Fault("truncated", nxt, "file cut short")
        if self.open_first is not None:
            raise Fault("unsealed events", self.open_first, "the last append is not sealed")
        if full:
            for key_id in self.keys:
                if key_id not in self.introduced:
                    raise Fault("unknown key", None, f"key {key_id} introduced by no key event")
        try:
            cp = parse_checkpoint(self.checkpoint_line)
        except ValueError as exc:
            raise Fault("bad seal", last_seq, f"closing checkpoint is damaged: {exc}") from exc
        if full and last_seq is None:
            raise Fault("truncated", 1, "a full export with no event")
        if full and self.genesis_ledger_id != self.header["ledger_id"]:
            raise Fault("checkpoint mismatch", 1, "the genesis ledger_id is not the header's")
        if cp.ledger_id != self.header["ledger_id"] or cp.stream != self.header["stream"]:
            raise Fault("checkpoint mismatch", None, f"closing checkpoint origin {cp.origin!r}")
        if cp.key_id not in self.keys:
            raise Fault("unknown key", cp.size, f"closing checkpoint by unlisted {cp.key_id}")
        if not cp.verifies_with(cp.key_id, self.keys[cp.key_id]):
            raise Fault("bad seal", cp.size, "the closing checkpoint does not verify")
        if full:
            assert last_seq is not None
            if cp.size > last_seq:
                raise Fault("truncated", last_seq + 1, f"checkpoint vouches for seq {cp.size}")
            if (cp.size, cp.root_hex) != (last_seq, self.last_hash):
                raise Fault("checkpoint mismatch", cp.size,
                            "the closing checkpoint is not the export's head")
        else:
            position = self.streams.get(self.header["stream"], (0, ZERO_HASH))[0]
            if (cp.size, cp.root_hex) != (position, self.last_hash):
                if cp.size > position:
                    raise Fault("truncated", None, f"checkpoint vouches for position {cp.size}")
                raise Fault("checkpoint mismatch", None,
                            "the closing checkpoint is not the stream's head")
        if self.pinned is not None and cp.key_id not in self.pinned:
            raise Fault("unknown key", None, f"closing checkpoint by {cp.key_id}, not pinned")
        against_out = None
        if against is not None:
            against_out = self._against(against)
        if self.deferred is not None:
            raise self.deferred
        return Result(
            ok=True, events=self.count, head_seq=last_seq, head_hash=self.last_hash,
            ledger_id=self.header["ledger_id"], stream=self.header["stream"],
            keys=list(self.keys), trusted_keys=sorted(self.pinned or ()),
            checkpoint={"seq": cp.size, "hash": cp.root_hex, "key_id": cp.key_id},
            against=against_out)

    # A1..A6, after F10
    def _against(self, cp: Checkpoint) -> dict:
        last_seq = self.last_seq or 0
        if self.stream_mode:
            raise UsageError("--against needs a full export, not a stream export")
        if cp.stream is not None:
            raise Fault("checkpoint mismatch", None, f"--against origin {cp.origin!r} "
                        "is not a full-ledger checkpoint")
        if cp.ledger_id != self.header["ledger_id"]:
            raise Fault("checkpoint mismatch", None, "--against is of another ledger")
        if cp.key_id not in self.keys or not cp.verifies_with(cp.key_id, self.keys[cp.key_id]):
            raise Fault("bad seal", cp.size, "--against does not verify with a listed key")
        if last_seq < cp.size:
            raise Fault("truncated", last_seq + 1,
                        f"log ends at seq {last_seq}, checkpoint vouches for seq {cp.size}")
        if self.hashes.get(cp.size) != cp.root_hex:
            raise Fault("checkpoint mismatch", cp.size, "history was rewritten")
        return {"seq": cp.size, "hash": cp.root_hex, "key_id": cp.key_id,
                "events_after": last_seq - cp.size}


def verify_detailed(export_path: str | os.PathLike[str], *, against: object = None,
                    trusted_keys: object = None) -> Result:
    """Verify an export; raises UsageError for exit-2 conditions."""
    cp = read_checkpoint_file(against) if against is not None else None  # type: ignore[arg-type]
    pinned = None
    if trusted_keys is not None:
        items = [trusted_keys] if isinstance(trusted_keys, str | bytes | os.PathLike) \
            else list(trusted_keys)  # type: ignore[call-overload]
        pinned = {read_trusted_key(item) for item in items} if items else None
    try:
        data = open(export_path, "rb").read()  # noqa: SIM115
    except OSError as exc:
        raise UsageError(f"not an export: {exc}") from exc
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UsageError("not an export: not UTF-8") from exc
    lines = _split_lines(text)
    if not lines:
        raise UsageError("not an export: empty")
    try:
        v = _Verifier(_read_header(lines[0]), pinned)
        for line in lines[1:]:
            v.line(line)
        return v.finish(cp)
    except Fault as fault:
        return Result(ok=False, seq=fault.seq, reason=fault.reason, detail=fault.detail)


def verify(export_path: str | os.PathLike[str], *, against: object = None,
           trusted_keys: object = None) -> tuple[bool, int | None, str | None]:
    """(ok, seq, reason) of docs/compliance.md's algorithm; raises UsageError on exit-2 input."""
    r = verify_detailed(export_path, against=against, trusted_keys=trusted_keys)
    return r.ok, r.seq, r.reason


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Verify a statekeeper ledger export offline "
                                 "(independent implementation of docs/compliance.md).")
    ap.add_argument("export")
    ap.add_argument("--against", metavar="CHECKPOINT")
    ap.add_argument("--trusted-key", metavar="PUBKEY", action="append")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    try:
        r = verify_detailed(args.export, against=args.against, trusted_keys=args.trusted_key)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(r.as_json(), indent=2, sort_keys=True, ensure_ascii=False))
    elif r.ok:
        print(f"verified: {r.events} events, head seq {r.head_seq} ({r.head_hash}), "
              f"ledger {r.ledger_id}" + (f", stream {r.stream}" if r.stream else ""))
        if r.against:
            print(f"extends the checkpoint at seq {r.against['seq']} "
                  f"({r.against['events_after']} events after it)")
    else:
        where = f"seq {r.seq}" if r.seq is not None else "ledger"
        print(f"error: {where}: {r.reason}: {r.detail}", file=sys.stderr)
    return 0 if r.ok else 4


if __name__ == "__main__":
    sys.exit(main())
