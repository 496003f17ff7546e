"""Signed checkpoints in the C2SP signed-note / tlog-checkpoint text format.

::

    statekeeper/<ledger id>            origin (for a stream: statekeeper/<ledger id>/<stream>)
    <seq>                              tree size: the number of events vouched for
    <base64 of the head hash>          root hash: the chain head (not a Merkle root)

    — statekeeper:<key id> <base64(4-byte key hash || Ed25519 signature)>

The signature covers the note text (the three lines and their newlines) exactly as C2SP
signed-note specifies for Ed25519 (key hash = SHA-256(name || 0x0A || 0x01 || public key)[:4]),
so transparency-log tooling can parse and check it with the public key.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from dataclasses import dataclass

from .errors import ConfigurationError
from .keys import PublicKey, Signer

_DASH = "\u2014"
ORIGIN_PREFIX = "statekeeper/"


@dataclass(frozen=True)
class Checkpoint:
    origin: str
    seq: int
    head_hash: str  # hex
    key_id: str
    signature: bytes
    #: the signed note's 4-byte key hash (C2SP): checked too, so that no byte of the note's
    #: signature line can change without the verification failing
    key_hash: bytes | None = None

    @property
    def ledger_id(self) -> str:
        return self.origin[len(ORIGIN_PREFIX):].split("/", 1)[0]

    @property
    def stream(self) -> str | None:
        rest = self.origin[len(ORIGIN_PREFIX):].split("/", 1)
        return rest[1] if len(rest) == 2 else None

    def body(self) -> str:
        return note_body(self.origin, self.seq, self.head_hash)

    def verify(self, public: PublicKey) -> bool:
        if public.key_id != self.key_id:
            return False
        if self.key_hash is not None and self.key_hash != _key_hash(key_name(self.key_id),
                                                                     public.raw):
            return False
        return public.verify(self.signature, self.body().encode("utf-8"))


def origin_for(ledger_id: str, stream: str | None = None) -> str:
    return f"{ORIGIN_PREFIX}{ledger_id}" + (f"/{stream}" if stream else "")


def key_name(key_id: str) -> str:
    return f"statekeeper:{key_id}"


def _key_hash(name: str, raw_public: bytes) -> bytes:
    return hashlib.sha256(name.encode("utf-8") + b"\n\x01" + raw_public).digest()[:4]


def note_body(origin: str, seq: int, head_hash: str) -> str:
    root = base64.b64encode(bytes.fromhex(head_hash)).decode("ascii")
    return f"{origin}\n{seq}\n{root}\n"


def sign_checkpoint(signer: Signer, origin: str, seq: int, head_hash: str) -> str:
    """Return the checkpoint text for ``seq``/``head_hash`` signed by ``signer``."""
    body = note_body(origin, seq, head_hash)
    name = key_name(signer.key_id)
    sig = signer.sign(body.encode("utf-8"))
    line = base64.b64encode(_key_hash(name, signer.public.raw) + sig).decode("ascii")
    return f"{body}\n{_DASH} {name} {line}\n"


def parse_checkpoint(text: str, source: str = "checkpoint") -> Checkpoint:
    """Parse checkpoint text; ``source`` names the file in error messages."""
    bad = ConfigurationError
    if "\n\n" not in text:
        raise bad(f"{source}: not a signed note (no blank line before the signature)")
    body, sigs = text.split("\n\n", 1)
    lines = body.split("\n")
    if len(lines) < 3:
        raise bad(f"{source}: checkpoint needs origin, size and hash lines")
    origin, size, root = lines[0], lines[1], lines[2]
    if not origin.startswith(ORIGIN_PREFIX):
        raise bad(f"{source}: origin {origin!r} is not a statekeeper ledger")
    if not (size.isascii() and size.isdigit()):
        raise bad(f"{source}: tree size {size!r} is not a number")
    try:
        raw_root = base64.b64decode(root, validate=True)
    except (binascii.Error, ValueError) as e:
        raise bad(f"{source}: root hash is not base64") from e
    if len(raw_root) != 32:
        raise bad(f"{source}: root hash is not 32 bytes")
    if base64.b64encode(raw_root).decode("ascii") != root:
        raise bad(f"{source}: root hash is not canonical base64")
    found: Checkpoint | None = None
    # only signature lines follow the blank line (trailing newlines of a file aside)
    for line in sigs.rstrip("\n").split("\n"):
        if not line.startswith(_DASH + " "):
            # a signed note holds nothing after its text but signature lines: text there
            # would be taken for part of a checkpoint that no signature covers
            raise bad(f"{source}: line {line[:20]!r} after the note is not a signature line")
        parts = line[2:].split(" ")
        if len(parts) != 2 or not parts[0].startswith("statekeeper:") or found is not None:
            continue
        try:
            blob = base64.b64decode(parts[1], validate=True)
        except (binascii.Error, ValueError) as e:
            raise bad(f"{source}: signature line is not base64") from e
        if len(blob) != 68:
            raise bad(f"{source}: signature line has the wrong length")
        if base64.b64encode(blob).decode("ascii") != parts[1]:
            # the unused bits of the last character: another spelling of the same bytes
            raise bad(f"{source}: signature line is not canonical base64")
        found = Checkpoint(origin, int(size), raw_root.hex(), parts[0][len("statekeeper:"):],
                           blob[4:], blob[:4])
        if found.body() != body + "\n":
            raise bad(f"{source}: checkpoint has extension lines this version does not know")
    if found is None:
        raise bad(f"{source}: no statekeeper signature line")
    return found
