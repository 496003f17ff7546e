"""Export to JSON Lines and offline verification of an export (no database needed).

Line 1, the header: ``{"format": "statekeeper-ledger-export", "version": 2, "ledger_id": ...,
"stream": null | "<stream>", "keys": [{"key_id", "public_key"}...]}``.
Then one line per event: its stored fields, ``actor`` and ``payload`` as JSON objects (their
canonical text is restored by re-encoding, which canonical form makes exact), and ``seal``
(``{"first", "key_id", "signature"}`` or null: ``first`` is the first seq of the append the
seal closes; version 1 exports, whose seals had no extent, are not read). The last line:
``{"checkpoint": "<signed note>"}`` vouching for the last exported event.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from .canonical import CanonicalError, dumps, loads
from .chain import ChainVerifier, Head, KeyRecord, Seal, StoredEvent, check_extends
from .checkpoint import Checkpoint, origin_for, parse_checkpoint, sign_checkpoint
from .errors import ConfigurationError, IntegrityViolation
from .keys import PublicKey
from .store import Ledger, _check_checkpoint, _verifies

FORMAT = "statekeeper-ledger-export"
VERSION = 2


@dataclass(frozen=True)
class ExportResult:
    events: int
    head: Head
    checkpoint: str


def export(ledger: Ledger, out: IO[str], stream: str | None = None) -> ExportResult:
    """Write the ledger (or one stream) to ``out``, verifying while writing.

    The export is only closed with a checkpoint if everything written verified, so a broken
    ledger never yields an export that looks good.
    """
    signer = ledger._need_signer()
    ledger_id = ledger.ledger_id()
    if ledger_id is None:
        raise ConfigurationError("the ledger is empty: nothing to export")
    ledger.require_active(signer)
    keys = ledger.keys()
    header = {
        "format": FORMAT, "version": VERSION, "ledger_id": ledger_id, "stream": stream,
        "keys": [{"key_id": k.key_id, "public_key": k.public_key} for k in keys],
    }
    out.write(dumps(header) + "\n")
    v = ChainVerifier(keys, mode="stream" if stream else "ledger", stream=stream)
    it = ledger.recorder.iter_events(stream=stream, with_seals=True)
    for ev, seal in it:
        v.feed(ev, seal)
        out.write(_event_line(ev, seal) + "\n")
    head = v.finish()
    if v.count == 0:
        raise ConfigurationError(f"stream {stream!r} has no events")
    if stream is None:  # the chain's word on the active key, not only the key table's
        ledger.require_active(signer, v.active_key)
    count = head.seq if stream is None else v._streams[stream][0]
    cp = sign_checkpoint(signer, origin_for(ledger_id, stream), count, head.hash)
    out.write(dumps({"checkpoint": cp}) + "\n")
    return ExportResult(v.count, head, cp)


def _event_line(ev: StoredEvent, seal: Seal | None) -> str:
    # Splice stored canonical text rather than parse and re-encode it.
    s = None if seal is None else {
        "first": seal.first, "key_id": seal.key_id,
        "signature": base64.b64encode(seal.signature).decode("ascii"),
    }
    head = dumps({
        "seq": ev.seq, "stream": ev.stream, "stream_seq": ev.stream_seq, "type": ev.type,
        "recorded_at": ev.recorded_at, "closes": ev.closes, "prev_hash": ev.prev_hash,
        "stream_prev_hash": ev.stream_prev_hash, "hash": ev.hash, "seal": s,
    })
    return head[:-1] + ',"actor":' + ev.actor + ',"payload":' + ev.payload + "}"


@dataclass(frozen=True)
class ExportVerifyResult:
    """What :func:`verify_export` verified. :meth:`proved` and :meth:`not_proved` say it in
    words (the CLI prints them; docs/compliance.md explains each)."""

    events: int
    head: Head
    ledger_id: str
    stream: str | None
    checkpoint: Checkpoint
    #: the key ids the header lists (a full export: each introduced by the chain, in order)
    keys: tuple[str, ...] = ()
    #: the ``--against`` checkpoint the export was proved to extend
    against: Checkpoint | None = None
    #: the pinned key ids (``--trusted-key``), empty when none were given
    trusted: tuple[str, ...] = ()
    #: a stream export: the stream's last position (its events are numbered 1..position)
    position: int = 0

    @property
    def events_after(self) -> int | None:
        """Events after the ``--against`` checkpoint's seq (None without one)."""
        return None if self.against is None else self.head.seq - self.against.seq

    def proved(self) -> list[str]:
        keys = ", ".join(k[:16] + "..." for k in self.keys)
        cp = self.checkpoint
        out: list[str] = []
        if self.against is not None:
            n, m = self.against.seq, self.events_after
            out.append(
                f"extends the checkpoint at seq {n} (hash {self.against.head_hash}): the "
                f"export's first {n} events are the checkpointed history, unchanged; {m} "
                f"{'event' if m == 1 else 'events'} after it {'verifies' if m == 1 else 'verify'}"
            )
        if self.stream is None:
            out.append(
                f"the export is internally consistent: events 1..{self.head.seq} are all "
                "there, each hash matches its event, each links to the one before (globally "
                "and in its stream), and every append is sealed by the key the chain had "
                f"active then (keys introduced by the chain: {keys})"
            )
        else:
            out.append(
                f"stream {self.stream} is internally consistent: positions "
                f"1..{self.position} are all there, each hash matches its event, each links "
                f"to the stream's one before, and every append is sealed by a key the export "
                f"lists ({keys})"
            )
        out.append(
            f"the closing checkpoint (size {cp.seq}, hash {cp.head_hash}) is signed by key "
            f"{cp.key_id[:16]}... and vouches for the last event"
        )
        if self.trusted:
            out.append("every seal and the closing checkpoint are by a key given with "
                       "--trusted-key")
        return out

    def not_proved(self) -> list[str]:
        out: list[str] = []
        if self.stream is not None:
            out.append(
                "that the stream has no events after its last position, or that the rest "
                "of the ledger is intact: a stream export is not checked against the global "
                "chain, and --against needs a full export"
            )
            out.append(
                "when each key was active: a stream export does not carry the rotation "
                "events, so a seal by a key rotated out is accepted (pin only the keys of the "
                "period with --trusted-key, or verify a full export)"
            )
        elif self.against is None:
            out.append(
                "that nothing was cut or rewritten: without --against, only internal "
                "consistency and the signatures of the keys in the export are proved; "
                "deletion of a whole tail after the last checkpoint you hold cannot be detected, "
                "nor a rewrite by the holder of the signing key"
            )
        else:
            out.append(
                f"anything after seq {self.against.seq}: those events are vouched for only by "
                "the export's own seals, so a whole tail deleted after the checkpoint, or "
                "rewritten there by the holder of the signing key, cannot be detected without "
                "a later checkpoint"
            )
        if not self.trusted:
            out.append(
                "who signed: the keys are the export's own (its genesis event names the "
                "first), so a ledger rebuilt under another key verifies too; pin the keys "
                "you received out of band with --trusted-key"
            )
        out.append(
            "when: recorded_at is the appending host's clock, sealed with the event but "
            "attested by no one else"
        )
        return out


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    try:
        with path.open("r", encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                yield n, line.rstrip("\n")
    except FileNotFoundError as e:
        raise ConfigurationError(f"{path}: no such export file") from e
    except UnicodeDecodeError as e:
        raise ConfigurationError(f"{path}: not UTF-8 text") from e
    except OSError as e:
        raise ConfigurationError(f"{path}: cannot read: {e.strerror}") from e


_HEADER_KEYS = {"format", "version", "ledger_id", "stream", "keys"}


def _spells(line: str, build: Callable[..., str], *values: Any) -> bool:
    """Is ``line`` the canonical text ``build(*values)``? A value with no canonical form (an
    integer beyond 2**53 read from the file) has none, so no line spells it."""
    try:
        return build(*values) == line
    except CanonicalError:
        return False


def verify_export(
    path: Path, against: Checkpoint | None = None, trusted: Sequence[PublicKey] = ()
) -> ExportVerifyResult:
    """Verify an export file offline. Raises :class:`IntegrityViolation` at the first fault."""
    lines = _lines(path)
    first = next(lines, None)
    if first is None:
        raise ConfigurationError(f"{path}: empty file, not a ledger export")
    try:
        header = loads(first[1])
        if header.get("format") != FORMAT:
            raise ValueError
    except (ValueError, AttributeError, RecursionError) as e:
        raise ConfigurationError(f"{path}: line 1 is not a statekeeper ledger export header") from e
    if header.get("version") != VERSION:
        raise ConfigurationError(f"{path}: export version {header.get('version')} is not supported")
    if set(header) != _HEADER_KEYS:
        # a header field misspelled is a field missing (a "stream" renamed would turn a
        # one-stream export into a whole-ledger one)
        raise IntegrityViolation(None, "malformed event",
                                 f"{path}:1: the export header must have exactly the fields "
                                 f"{', '.join(sorted(_HEADER_KEYS))}")
    if not _spells(first[1], dumps, header):
        # the header's keys decide what verifies: no other spelling of it is the export's
        raise IntegrityViolation(None, "malformed event",
                                 f"{path}:1: not the canonical text of the export header")
    stream = header["stream"]
    ledger_id = header["ledger_id"]
    # Read as they are, never coerced: a number for the ledger id would otherwise match a
    # genesis and a checkpoint holding its decimal text, and a falsy stream read as none.
    if not isinstance(ledger_id, str):
        raise IntegrityViolation(None, "malformed event",
                                 f"{path}:1: the header's ledger_id is not a string")
    if stream is not None and not (isinstance(stream, str) and stream):
        raise IntegrityViolation(None, "malformed event",
                                 f"{path}:1: the header's stream is neither null nor a name")
    try:
        if not isinstance(header["keys"], list):
            raise TypeError("keys is not an array")
        listed = [KeyRecord(k["key_id"], k["public_key"]) for k in header["keys"]]
        if not all(isinstance(k.key_id, str) and isinstance(k.public_key, str) for k in listed):
            raise TypeError("key ids and public keys must be strings")
    except (KeyError, TypeError) as e:
        raise IntegrityViolation(
            None, "malformed event", f"{path}: header's key list is malformed: {e}"
        ) from e
    ids = [k.key_id for k in listed]
    if len(set(ids)) != len(ids):
        dup = next(k for k in ids if ids.count(k) > 1)
        raise IntegrityViolation(
            None, "key mismatch", f"{path}: header lists key {dup[:16]}... twice"
        )
    v = ChainVerifier(
        listed, mode="ledger" if stream is None else "stream", stream=stream,
        trusted={k.key_id for k in trusted} or None,
        watch=against.seq if against and stream is None else None,
    )
    closing: str | None = None
    respelled: IntegrityViolation | None = None
    last_line = 1
    for n, line in lines:
        last_line = n
        if closing is not None:
            raise IntegrityViolation(
                None, "malformed event", f"{path}:{n}: data after the closing checkpoint"
            )
        try:
            obj = loads(line)
        except (ValueError, RecursionError) as e:  # RecursionError: nested absurdly deep
            # In a full export, a line's place says which event it should hold.
            at = (v.last.seq + 1 if v.last else 1) if stream is None else None
            raise IntegrityViolation(at, "malformed event", f"{path}:{n}: not a JSON object") from e
        if isinstance(obj, dict) and set(obj) == {"checkpoint"}:
            if respelled is None and not _spells(line, dumps, obj):
                # after the checkpoint's own checks, which name the sharper reason
                respelled = IntegrityViolation(
                    None, "malformed event", f"{path}:{n}: not the canonical text of the "
                    "checkpoint")
            closing = obj["checkpoint"]
            continue
        ev, seal = _parse_event(obj, path, n)
        v.feed(ev, seal)
        # The values verified; the text must be theirs too, exactly as exported: no other
        # spelling of the same JSON, and no "false" read as a boolean or "3" as a number.
        # Reported after the chain's own checks, which name the sharper reason when both fail.
        if respelled is None and not _spells(line, _event_line, ev, seal):
            respelled = IntegrityViolation(
                ev.seq, "malformed event", f"{path}:{n}: not the canonical text of its event"
            )
    if closing is None:
        nxt = (v.last.seq + 1) if v.last else 1
        raise IntegrityViolation(
            nxt, "truncated", f"{path}: the closing checkpoint is missing (file cut short)"
        )
    head = v.finish()
    try:
        cp = parse_checkpoint(str(closing), f"{path}:{last_line}")
    except ConfigurationError as e:  # the export's own seal was damaged: that is tampering
        raise IntegrityViolation(
            head.seq or None, "bad seal", f"closing checkpoint is damaged: {e}"
        ) from e
    if stream is None and v.count == 0:
        raise IntegrityViolation(1, "truncated", f"{path}: the export holds no events")
    if stream is None and v.ledger_id != ledger_id:
        raise IntegrityViolation(
            1, "checkpoint mismatch", "header's ledger id differs from the genesis event"
        )
    if cp.ledger_id != ledger_id or cp.stream != stream:
        raise IntegrityViolation(
            None, "checkpoint mismatch", "closing checkpoint is for another ledger or stream"
        )
    keymap = {k.key_id: k for k in listed}
    if v.count and stream is None:
        _check_checkpoint(cp, v, keymap, stream=None)
        if cp.seq > head.seq:  # the first missing event is the one after the last present
            raise IntegrityViolation(
                head.seq + 1, "truncated",
                f"export ends at seq {head.seq}, its checkpoint vouches for seq {cp.seq}",
            )
        if (cp.seq, cp.head_hash) != (head.seq, head.hash):
            raise IntegrityViolation(
                cp.seq, "checkpoint mismatch", "export does not end where its checkpoint says"
            )
    elif stream is not None:
        v.ledger_id = ledger_id
        _check_checkpoint(cp, v, keymap, stream=stream)
        pos = v._streams[stream][0] if v.count else 0
        if (cp.seq, cp.head_hash) != (pos, head.hash):
            # Positions count the stream's events; the global seq of a missing one is unknown.
            raise IntegrityViolation(
                None, "truncated" if cp.seq > pos else "checkpoint mismatch",
                f"stream export ends at position {pos}, its checkpoint vouches for position "
                f"{cp.seq}",
            )
    if trusted and cp.key_id not in {k.key_id for k in trusted}:
        raise IntegrityViolation(
            None, "unknown key", "closing checkpoint is not signed by a trusted key"
        )
    if against is not None:
        if stream is not None:
            raise ConfigurationError("--against needs a full-ledger export, not a stream export")
        if against.stream is not None:
            raise IntegrityViolation(
                None, "checkpoint mismatch", f"--against checkpoint is one of stream "
                f"{against.stream}, not of the whole ledger (its size counts the stream's "
                "positions)",
            )
        if against.ledger_id != ledger_id:
            raise IntegrityViolation(
                None, "checkpoint mismatch", "--against checkpoint is for another ledger"
            )
        rec = keymap.get(against.key_id)
        if rec is None or not _verifies(against, rec):
            raise IntegrityViolation(
                against.seq, "bad seal", "--against checkpoint signature does not verify"
            )
        check_extends(v, against.seq, against.head_hash)
    if respelled is not None:
        raise respelled
    return ExportVerifyResult(
        v.count, head, ledger_id, stream, cp, keys=tuple(ids), against=against,
        trusted=tuple(k.key_id for k in trusted),
        position=v._streams[stream][0] if stream is not None and v.count else 0,
    )


def _scalar_values(name: str, text: str) -> None:
    """Refuse a string holding a lone surrogate (JSON text may spell one, ``"\\ud800"``):
    UTF-8 cannot encode it, so no envelope holds it."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(f"{name} holds a lone surrogate, not valid UTF-8") from e


_INTS = ("seq", "stream_seq")
_STRS = ("stream", "type", "recorded_at", "prev_hash", "stream_prev_hash", "hash")


def _parse_event(obj: Any, path: Path, n: int) -> tuple[StoredEvent, Seal | None]:
    # Each field is read with its type checked, never converted: a "3" or a true taken for
    # seq 3 or 1, or a 5 for the stream "5", would be another event's text that verifies as
    # this one's values (docs/compliance.md, L4).
    try:
        for name in _INTS:
            if type(obj[name]) is not int:  # not a bool either
                raise TypeError(f"{name} is not an integer")
        for name in _STRS:
            text = obj[name]
            if type(text) is not str:
                raise TypeError(f"{name} is not a string")
            if not text.isascii():
                _scalar_values(name, text)
        closes = obj["closes"]
        if type(closes) is not bool:
            raise TypeError("closes is not a boolean")
        ev = StoredEvent(
            obj["seq"], obj["stream"], obj["stream_seq"], obj["type"], obj["recorded_at"],
            dumps(obj["actor"]), dumps(obj["payload"]), closes, obj["prev_hash"],
            obj["stream_prev_hash"], obj["hash"],
        )
        s = obj["seal"]
        seal = None
        if s is not None:
            if type(s) is not dict:
                raise TypeError("seal is neither null nor an object")
            first, key_id, signature = s["first"], s["key_id"], s["signature"]
            if type(first) is not int:
                raise TypeError("seal's first seq must be an integer")
            if type(key_id) is not str or type(signature) is not str:
                raise TypeError("seal's key_id and signature must be strings")
            if not key_id.isascii():
                _scalar_values("seal's key_id", key_id)
            seal = Seal(ev.seq, key_id, base64.b64decode(signature, validate=True), first)
    except (KeyError, TypeError, ValueError, RecursionError, binascii.Error) as e:
        seq = obj.get("seq") if isinstance(obj, dict) else None
        raise IntegrityViolation(
            seq if type(seq) is int else None, "malformed event", f"{path}:{n}: {e}"
        ) from e
    return ev, seal
