"""The hash chain, seals and their verification: pure functions over stored values.

Nothing here touches a database or a file. The same :class:`ChainVerifier` checks events read
from SQLite, PostgreSQL or an export file, which is why those three cannot disagree.

An event's hash is SHA-256 over its *envelope*: canonical JSON of all its stored fields except
the hash itself. Payload and actor are stored as canonical text and spliced into the envelope
verbatim, so verification hashes exactly what is stored and never re-encodes a payload.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from json.encoder import encode_basestring

from .canonical import is_canonical, loads
from .errors import IntegrityViolation, LedgerError
from .keys import PublicKey, key_id_of

ZERO_HASH = "0" * 64
GENESIS_TYPE = "ledger.genesis"
ROTATION_TYPE = "ledger.key_rotated"
LEDGER_STREAM = "ledger"
_KEY_EVENT_TYPES = frozenset((GENESIS_TYPE, ROTATION_TYPE))
SEAL_CONTEXT = b"statekeeper-ledger-seal-v2\n"
#: The on-disk format, recorded in the genesis payload. 2: a seal signs the extent of its
#: append (first and last seq), and consecutive seals tile the chain.
FORMAT_VERSION = 2
# ASCII digits only: a str pattern's \d matches every Unicode decimal digit ("٢٠٢٦").
_TIMESTAMP = re.compile(r"\A[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{6}Z\Z")
_HEX64 = re.compile(r"\A[0-9a-f]{64}\Z")
_sha256 = hashlib.sha256

# Reasons reported by verification; stable strings, documented in docs/cli.md.
HASH_MISMATCH = "hash mismatch"
BROKEN_LINK = "broken link"
STREAM_LINK = "broken stream link"
GAP = "gap"
REORDER = "reorder"
MISSING_SEAL = "missing seal"
BAD_SEAL = "bad seal"
UNKNOWN_KEY = "unknown key"
KEY_MISMATCH = "key mismatch"
UNSEALED = "unsealed events"
MALFORMED = "malformed event"
TRUNCATED = "truncated"
CHECKPOINT_MISMATCH = "checkpoint mismatch"


@dataclass(frozen=True, slots=True)
class StoredEvent:
    """An event exactly as stored: ``actor`` and ``payload`` are canonical JSON text."""

    seq: int
    stream: str
    stream_seq: int
    type: str
    recorded_at: str
    actor: str
    payload: str
    closes: bool
    prev_hash: str
    stream_prev_hash: str
    hash: str


def _event_maker() -> Callable[
    [int, str, int, str, str, str, str, bool, str, str, str], StoredEvent
]:
    # The frozen dataclass __init__ sets each field through object.__setattr__; setting the
    # slots directly gives the same object at half the cost, which counts once per event
    # read or appended.
    new = object.__new__
    (s_seq, s_stream, s_stream_seq, s_type, s_recorded_at, s_actor, s_payload, s_closes,
     s_prev_hash, s_stream_prev_hash, s_hash) = (
        StoredEvent.__dict__[name].__set__ for name in StoredEvent.__slots__
    )

    def stored_event(
        seq: int, stream: str, stream_seq: int, type_: str, recorded_at: str, actor: str,
        payload: str, closes: bool, prev_hash: str, stream_prev_hash: str, hash_: str,
    ) -> StoredEvent:
        ev: StoredEvent = new(StoredEvent)
        s_seq(ev, seq)
        s_stream(ev, stream)
        s_stream_seq(ev, stream_seq)
        s_type(ev, type_)
        s_recorded_at(ev, recorded_at)
        s_actor(ev, actor)
        s_payload(ev, payload)
        s_closes(ev, closes)
        s_prev_hash(ev, prev_hash)
        s_stream_prev_hash(ev, stream_prev_hash)
        s_hash(ev, hash_)
        return ev

    return stored_event


#: ``StoredEvent(...)`` with the fields in the same order, faster (for the hot loops).
stored_event = _event_maker()


@dataclass(frozen=True, slots=True)
class Seal:
    """The signature closing one append: it vouches for events ``first`` .. ``seq``, and for
    nothing before them (so an event slipped in at the head is never adopted)."""

    seq: int
    key_id: str
    signature: bytes
    first: int


@dataclass(frozen=True, slots=True)
class Head:
    seq: int
    hash: str


def envelope(
    seq: int,
    stream: str,
    stream_seq: int,
    type_: str,
    recorded_at: str,
    actor: str,
    payload: str,
    closes: bool,
    prev_hash: str,
    stream_prev_hash: str,
) -> str:
    """Canonical JSON of the hashed fields (keys in sorted order, built by concatenation)."""
    enc = encode_basestring
    return _envelope(
        actor, closes, payload, enc(prev_hash), enc(recorded_at), seq, enc(stream),
        enc(stream_prev_hash), stream_seq, enc(type_),
    )


def _envelope(
    actor: str, closes: bool, payload: str, q_prev_hash: str, q_recorded_at: str, seq: int,
    q_stream: str, q_stream_prev_hash: str, stream_seq: int, q_type: str,
) -> str:
    """The one place the envelope's layout is written. ``q_*``: values already JSON-encoded
    (the hot loops encode a stream or a timestamp once for many events)."""
    return (
        f'{{"actor":{actor},"closes":{"true" if closes else "false"},"payload":{payload}'
        f',"prev_hash":{q_prev_hash},"recorded_at":{q_recorded_at},"seq":{seq}'
        f',"stream":{q_stream},"stream_prev_hash":{q_stream_prev_hash}'
        f',"stream_seq":{stream_seq},"type":{q_type}}}'
    )


def chain_run(
    seq: int,
    stream: str,
    stream_seq: int,
    recorded_at: str,
    actor: str,
    items: Sequence[tuple[str, str]],
    prev_hash: str,
    stream_prev_hash: str,
) -> list[StoredEvent]:
    """The events of one append to ``stream``: (type, canonical payload) ``items`` after
    ``seq`` and ``stream_seq``, each linked to the one before; the last one closes the append.
    Each hash is ``event_hash`` of the event (the envelope built once per event, with stream,
    timestamp and actor encoded once per run)."""
    enc = encode_basestring
    q_stream, q_at = enc(stream), enc(recorded_at)
    q_types: dict[str, str] = {}
    make = stored_event
    out: list[StoredEvent] = []
    last = len(items) - 1
    prev, sprev = prev_hash, stream_prev_hash
    for i, (type_, payload) in enumerate(items):
        q_type = q_types.get(type_)
        if q_type is None:
            q_type = q_types[type_] = enc(type_)
        seq += 1
        stream_seq += 1
        closes = i == last
        text = _envelope(
            actor, closes, payload, enc(prev), q_at, seq, q_stream, enc(sprev), stream_seq,
            q_type,
        )
        h = _sha256(text.encode("utf-8")).hexdigest()
        out.append(make(
            seq, stream, stream_seq, type_, recorded_at, actor, payload, closes, prev, sprev, h
        ))
        prev = sprev = h
    return out


def event_hash(
    seq: int,
    stream: str,
    stream_seq: int,
    type_: str,
    recorded_at: str,
    actor: str,
    payload: str,
    closes: bool,
    prev_hash: str,
    stream_prev_hash: str,
) -> str:
    text = envelope(
        seq, stream, stream_seq, type_, recorded_at, actor, payload, closes, prev_hash,
        stream_prev_hash,
    )
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def seal_message(first: int, seq: int, hash_: str) -> bytes:
    """What a seal signs: the extent of the append (its first and last seq) and the hash of its
    last event, domain-separated."""
    return SEAL_CONTEXT + f"{first}\n{seq}\n{hash_}\n".encode("ascii")


@dataclass
class KeyRecord:
    """A public key as listed beside the chain (ledger keys table or export header)."""

    key_id: str
    public_key: str  # base64 of the raw 32 bytes


class ChainVerifier:
    """Fold over events in ``seq`` order; raise :class:`IntegrityViolation` at the first fault.

    ``mode="ledger"`` checks the global chain from seq 1, including the genesis event and key
    rotations (the key a seal must use is whatever the chain says is active). ``mode="stream"``
    checks one stream's events: stream links, hashes and seals; keys come from the listing
    (an export header), optionally restricted to ``trusted`` key ids.

    Seals tile the chain: each names the first and last seq of its append, and the events of
    an append are consecutive and of one stream. An event that no seal's extent covers (one
    INSERTed at the head without the key, adopted by the next genuine append's hash link) is
    ``unsealed events`` at its seq. :meth:`start_after` begins the fold after a head verified
    earlier (a signed checkpoint) instead of at seq 1.
    """

    def __init__(
        self,
        listed_keys: Iterable[KeyRecord],
        *,
        mode: str = "ledger",
        stream: str | None = None,
        trusted: set[str] | None = None,
        watch: int | None = None,
        schedule: Sequence[tuple[int, str]] = (),
    ) -> None:
        self.mode = mode
        # Stream mode: (first seq it seals, key id) for each key, from the chain's own key
        # events; a seal by any other key than the one active at its seq is refused.
        self.schedule = list(schedule)
        self.watch = watch
        self.watched_hash: str | None = None
        self.stream = stream
        self.trusted = trusted
        self.listed: dict[str, KeyRecord] = {k.key_id: k for k in listed_keys}
        self._verifiers: dict[str, PublicKey] = {}
        self.count = 0
        # The last event fed: its seq (0 before the first) and hash. ``last`` builds the Head.
        self._last_seq = 0
        self._last_hash = ZERO_HASH
        self._fed = False
        self._last_ts: str | None = None  # the last recorded_at that passed the format check
        self._last_actor: str | None = None  # the last actor text that passed its check
        self._q_stream_of: str | None = None  # the last stream and type, and their JSON form
        self._q_stream = ""
        self._q_type_of: str | None = None
        self._q_type = ""
        self.last_closed: Head | None = None
        # The open append: the seq and stream of its first event, None between appends.
        self._open_first: int | None = None
        self._open_stream = ""
        self._streams: dict[str, tuple[int, str]] = {}
        # Where a stream's last event before the fold began is looked up (start_after).
        self._stream_base: Callable[[str], tuple[int, str] | None] | None = None
        self._active_key: str | None = None
        self._pending_key: str | None = None
        self.ledger_id: str | None = None
        self.keys_seen: list[str] = []
        #: Set: each seal's signature check is handed to it (seq, raw key, signature, message)
        #: instead of made here; the caller then owns reporting a bad one (ledger.sigpool).
        self.defer: Callable[[int, bytes, bytes, bytes], None] | None = None

    @property
    def active_key(self) -> str | None:
        """Ledger mode: the key the chain says seals the next append."""
        return self._active_key

    @property
    def last(self) -> Head | None:
        """The last event fed (seq and hash), or None before the first."""
        return Head(self._last_seq, self._last_hash) if self._fed else None

    @last.setter
    def last(self, head: Head | None) -> None:
        self._fed = head is not None
        self._last_seq, self._last_hash = (head.seq, head.hash) if head else (0, ZERO_HASH)

    def start_after(
        self,
        head: Head,
        *,
        active_key: str,
        ledger_id: str,
        stream_base: Callable[[str], tuple[int, str] | None],
        introduced: Sequence[str],
    ) -> None:
        """Continue a ledger-mode fold after ``head``, a closed head verified earlier (events
        up to it are taken as verified then). ``stream_base(stream)`` gives a stream's last
        (stream_seq, hash) at or before ``head``, or None. ``introduced``: the keys the chain
        introduced up to ``head`` (a listed key that neither they nor the rest of the fold
        introduce is reported)."""
        self.last = head
        self.last_closed = head
        self._active_key = self._pending_key = active_key
        self.ledger_id = ledger_id
        self.keys_seen = list(introduced)
        self._stream_base = stream_base

    # -- helpers -----------------------------------------------------------------------------
    def _public(self, seq: int, key_id: str) -> PublicKey:
        pk = self._verifiers.get(key_id)
        if pk is not None:
            return pk
        rec = self.listed.get(key_id)
        if rec is None:
            raise IntegrityViolation(seq, UNKNOWN_KEY, f"seal key {key_id[:16]}... is not listed")
        try:
            pk = PublicKey.from_b64(rec.public_key)
        except Exception as e:
            raise IntegrityViolation(
                seq, KEY_MISMATCH, f"public key {key_id[:16]}... is malformed"
            ) from e
        if pk.key_id != key_id:
            raise IntegrityViolation(
                seq, KEY_MISMATCH, f"listed public key does not match its id {key_id[:16]}..."
            )
        self._verifiers[key_id] = pk
        return pk

    def _introduce(self, ev: StoredEvent, payload_key: str, payload_pub: str) -> None:
        if key_id_of(PublicKey.from_b64(payload_pub).raw) != payload_key:
            raise IntegrityViolation(
                ev.seq, KEY_MISMATCH, "key event's public key does not match its id"
            )
        rec = self.listed.get(payload_key)
        if rec is None:
            raise IntegrityViolation(
                ev.seq, UNKNOWN_KEY, f"key {payload_key[:16]}... introduced here is not listed"
            )
        if rec.public_key != payload_pub:
            raise IntegrityViolation(
                ev.seq, KEY_MISMATCH, f"listed public key for {payload_key[:16]}... was replaced"
            )
        self.keys_seen.append(payload_key)

    # -- the fold ----------------------------------------------------------------------------
    def feed(self, ev: StoredEvent, seal: Seal | None) -> None:
        # The hot loop of verification (one call per event): the checks and their order are
        # the specification; the shortcuts below only skip work whose outcome is known, e.g. a
        # regex match on a value equal to one that already passed it.
        seq = ev.seq
        ledger_mode = self.mode == "ledger"
        if self._fed:
            last_seq = self._last_seq
            if seq <= last_seq:
                raise IntegrityViolation(seq, REORDER, f"seq {seq} follows seq {last_seq}")
            if ledger_mode and seq != last_seq + 1:
                expected = last_seq + 1
                raise IntegrityViolation(
                    expected, GAP, f"seq {expected} is missing (next is {seq})"
                )
        elif ledger_mode and seq != 1:
            raise IntegrityViolation(1, GAP, f"ledger starts at seq {seq}, not 1")

        stream = ev.stream
        prev_hash = ev.prev_hash
        sprev_hash = ev.stream_prev_hash
        recorded_at = ev.recorded_at
        prev = self._streams.get(stream)
        if prev is None and self._stream_base is not None:
            prev = self._stream_base(stream)
        want_sph = ZERO_HASH if prev is None else prev[1]
        # _last_hash and want_sph are ZERO_HASH or hashes recomputed here: valid hex already.
        if not (
            (prev_hash == self._last_hash or _HEX64.match(prev_hash))
            and (sprev_hash == want_sph or _HEX64.match(sprev_hash))
            and (recorded_at == self._last_ts or _TIMESTAMP.match(recorded_at))
        ):
            raise IntegrityViolation(seq, MALFORMED, "hash or timestamp field is malformed")
        self._last_ts = recorded_at
        # Actor and payload are spliced into the envelope as stored. The actor must be exactly
        # one canonical JSON object, or text could be moved between actor, closes and payload
        # without changing the hashed text; with it fixed, every later boundary is fixed by
        # fields of checked format. Actor text repeats, so the check runs once per change.
        actor = ev.actor
        if actor != self._last_actor:
            if not (actor.startswith("{") and is_canonical(actor)):
                raise IntegrityViolation(seq, MALFORMED, "actor is not one canonical JSON object")
            self._last_actor = actor
        # The envelope of ``envelope()``, built from fields whose JSON form is known: the two
        # hashes and the timestamp just passed their format checks (nothing in them needs
        # escaping), stream and type are encoded once per run of equal values.
        if stream != self._q_stream_of:
            self._q_stream = encode_basestring(stream)
            self._q_stream_of = stream
        type_ = ev.type
        if type_ != self._q_type_of:
            self._q_type = encode_basestring(type_)
            self._q_type_of = type_
        stream_seq = ev.stream_seq
        text = _envelope(
            ev.actor, ev.closes, ev.payload, '"' + prev_hash + '"', '"' + recorded_at + '"', seq,
            self._q_stream, '"' + sprev_hash + '"', stream_seq, self._q_type,
        )
        hash_ = ev.hash
        if _sha256(text.encode("utf-8")).hexdigest() != hash_:
            raise IntegrityViolation(seq, HASH_MISMATCH, "stored hash does not match the event")

        if ledger_mode and prev_hash != self._last_hash:
            raise IntegrityViolation(
                seq, BROKEN_LINK, "prev_hash does not match the previous event"
            )
        if self.stream is not None and stream != self.stream:
            raise IntegrityViolation(
                seq, REORDER, f"event of stream {stream!r} in an export of {self.stream!r}"
            )
        want_sseq = 1 if prev is None else prev[0] + 1
        if stream_seq != want_sseq:
            reason = REORDER if stream_seq < want_sseq else GAP
            raise IntegrityViolation(
                seq, reason, f"stream {stream!r} position {stream_seq}, expected {want_sseq}"
            )
        if sprev_hash != want_sph:
            raise IntegrityViolation(
                seq, STREAM_LINK, "stream_prev_hash does not match the stream's previous event"
            )
        self._streams[stream] = (stream_seq, hash_)

        if ledger_mode and (seq == 1 or type_ in _KEY_EVENT_TYPES):
            self._key_events(ev)

        # An append is a run of consecutive events of one stream; one that never closed
        # (no genuine appender builds on an open head) is outside every sealed extent.
        open_first = self._open_first
        if open_first is None:
            self._open_first = seq
            self._open_stream = stream
        elif stream != self._open_stream or seq != self._last_seq + 1:
            raise IntegrityViolation(
                open_first, UNSEALED,
                f"seq {open_first} is outside every sealed extent (its append never closed)",
            )
        if ev.closes:
            if seal is None:  # the whole append is unvouched: name its first event
                first = seq if open_first is None else open_first
                raise IntegrityViolation(
                    first, MISSING_SEAL, "event closes an append but has no seal" if first == seq
                    else f"the append {first}..{seq} closes without a seal",
                )
            self._check_extent(ev, seal, seq if open_first is None else open_first)
            self._check_seal(ev, seal)
            self.last_closed = Head(seq, hash_)
            self._open_first = None
        elif seal is not None:
            raise IntegrityViolation(
                seq, BAD_SEAL, "seal on an event that does not close its append"
            )
        if seq == self.watch:
            self.watched_hash = hash_
        self._last_seq = seq
        self._last_hash = hash_
        self._fed = True
        self.count += 1

    def _key_events(self, ev: StoredEvent) -> None:
        try:
            self._key_event(ev)
        except (KeyError, TypeError, ValueError, AttributeError, LedgerError) as e:
            if isinstance(e, IntegrityViolation):
                raise
            raise IntegrityViolation(ev.seq, MALFORMED, f"key event is malformed: {e}") from e

    def _key_event(self, ev: StoredEvent) -> None:
        # Only called for seq 1 and events of the types below (see feed).
        if ev.seq == 1:
            if ev.type != GENESIS_TYPE:
                raise IntegrityViolation(
                    1, MALFORMED, f"first event is {ev.type!r}, not {GENESIS_TYPE}"
                )
            p = loads(ev.payload)
            if p.get("format") != FORMAT_VERSION:
                raise IntegrityViolation(
                    1, MALFORMED, f"ledger format {p.get('format', 1)} is not supported "
                    f"(this version reads format {FORMAT_VERSION}: see docs/architecture.md)",
                )
            self._introduce(ev, p["key_id"], p["public_key"])
            self.ledger_id = p["ledger_id"]
            self._pending_key = p["key_id"]
            self._active_key = p["key_id"]  # genesis is sealed by the key it introduces
        elif ev.type == GENESIS_TYPE:
            raise IntegrityViolation(ev.seq, MALFORMED, "second genesis event")
        elif ev.type == ROTATION_TYPE and ev.stream == LEDGER_STREAM:
            p = loads(ev.payload)
            # absent is malformed (KeyError), not a key other than the active one
            if p["previous_key_id"] != self._active_key:
                raise IntegrityViolation(
                    ev.seq, KEY_MISMATCH, "rotation does not name the active key"
                )
            self._introduce(ev, p["key_id"], p["public_key"])
            self._pending_key = p["key_id"]

    def _check_extent(self, ev: StoredEvent, seal: Seal, first: int) -> None:
        if seal.first == first:
            return
        if seal.first > first:
            raise IntegrityViolation(
                first, UNSEALED,
                f"seq {first} is outside every sealed extent (the seal at seq {ev.seq} "
                f"covers {seal.first}..{ev.seq})",
            )
        if self.mode == "ledger" or seal.first < 1:
            raise IntegrityViolation(
                ev.seq, BAD_SEAL,
                f"seal extent {seal.first}..{ev.seq} overlaps the previous append",
            )
        raise IntegrityViolation(
            seal.first, GAP, f"seq {seal.first} of this append is missing (its seal covers "
            f"{seal.first}..{ev.seq})",
        )

    def _check_seal(self, ev: StoredEvent, seal: Seal) -> None:
        if seal.seq != ev.seq:
            raise IntegrityViolation(
                ev.seq, BAD_SEAL, f"seal for seq {seal.seq} stored at seq {ev.seq}"
            )
        if self.trusted is not None and seal.key_id not in self.trusted:
            raise IntegrityViolation(
                ev.seq, UNKNOWN_KEY, f"seal key {seal.key_id[:16]}... is not trusted"
            )
        if self.mode == "ledger" and seal.key_id != self._active_key:
            if seal.key_id in self.listed and seal.key_id in self.keys_seen:
                raise IntegrityViolation(
                    ev.seq, BAD_SEAL, "seal made with a key that is not the active one"
                )
            raise IntegrityViolation(
                ev.seq, UNKNOWN_KEY, f"seal key {seal.key_id[:16]}... is not in the ledger"
            )
        if self.schedule:
            due = None
            for start, key in self.schedule:
                if start > ev.seq:
                    break
                due = key
            if seal.key_id != due:
                raise IntegrityViolation(
                    ev.seq, BAD_SEAL, "seal made with a key that was not the active one then"
                )
        pk = self._public(ev.seq, seal.key_id)
        message = seal_message(seal.first, ev.seq, ev.hash)
        if self.defer is not None:  # verified elsewhere, in seq order (ledger.sigpool)
            self.defer(ev.seq, pk.raw, seal.signature, message)
        elif not pk.verify(seal.signature, message):
            raise IntegrityViolation(ev.seq, BAD_SEAL, "signature does not verify")
        if self.mode == "ledger":
            self._active_key = self._pending_key

    def finish(self) -> Head:
        if self.last is None:
            return Head(0, ZERO_HASH)
        if self._open_first is not None:
            raise IntegrityViolation(
                self._open_first, UNSEALED, "events after the last seal are not vouched for"
            )
        if self.mode == "ledger":
            extra = set(self.listed) - set(self.keys_seen)
            if extra:
                raise IntegrityViolation(
                    None, UNKNOWN_KEY,
                    f"key {sorted(extra)[0][:16]}... is listed but never introduced",
                )
        return self.last


def check_extends(verified: ChainVerifier, seq: int, hash_: str) -> None:
    """Raise unless the verified log holds ``hash_`` at ``seq`` (a checkpoint saved earlier).

    ``verified`` must have been built with ``watch=seq`` and fed the whole log.
    """
    last_seq = verified.last.seq if verified.last else 0
    if last_seq < seq:
        raise IntegrityViolation(
            last_seq + 1, TRUNCATED, f"log ends at seq {last_seq}, checkpoint vouches for seq {seq}"
        )
    if verified.watched_hash != hash_:
        raise IntegrityViolation(
            seq, CHECKPOINT_MISMATCH,
            "event hash differs from the checkpoint: history was rewritten",
        )
