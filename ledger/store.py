"""The ledger: append, read, verify, checkpoint. Pure chain logic from :mod:`ledger.chain`,
storage from :mod:`ledger.recorders`."""

from __future__ import annotations

import base64
import contextlib
import getpass
import os
import socket
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .canonical import CanonicalError, dumps, loads
from .chain import (
    BAD_SEAL,
    CHECKPOINT_MISMATCH,
    FORMAT_VERSION,
    GENESIS_TYPE,
    LEDGER_STREAM,
    ROTATION_TYPE,
    TRUNCATED,
    UNSEALED,
    ZERO_HASH,
    ChainVerifier,
    Head,
    KeyRecord,
    Seal,
    StoredEvent,
    chain_run,
    check_extends,
    event_hash,
    seal_message,
    stored_event,
)
from .checkpoint import Checkpoint, origin_for, sign_checkpoint
from .errors import (
    ConfigurationError,
    IntegrityViolation,
    KeyFileError,
    LedgerError,
    StreamConflict,
)
from .keys import PublicKey, Signer
from .recorders import Recorder, Tip, database_file, database_url, recorder_for
from .sigpool import run_deferred
from .url import redact

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)


def format_time(t: datetime) -> str:
    """Fixed-precision UTC text: what is hashed is what is stored."""
    if t.tzinfo is None:
        t = t.replace(tzinfo=UTC)
    t = t.astimezone(UTC)
    if t.year < 1000:  # strftime's %Y does not pad these; keep its exact output
        return t.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return (
        f"{t.year}-{t.month:02d}-{t.day:02d}T{t.hour:02d}:{t.minute:02d}:{t.second:02d}"
        f".{t.microsecond:06d}Z"
    )


@dataclass(frozen=True)
class NewEvent:
    type: str
    payload: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class VerifyResult:
    events: int
    head: Head
    ledger_id: str | None
    keys: list[str]
    checkpoint: Checkpoint | None = None
    #: The key the chain says signs from here on (None for an empty ledger).
    active_key: str | None = None


def default_actor(tool: str) -> dict[str, Any]:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    return {"user": user, "host": socket.gethostname(), "pid": os.getpid(), "tool": tool}


class Ledger:
    """A signed, hash-chained, append-only event store behind a database URL."""

    def __init__(
        self,
        url: str,
        *,
        signer: Signer | None = None,
        tool: str = "ledger",
        clock: Clock = utc_now,
        base_dir: Path | None = None,
        create: bool = True,
    ) -> None:
        self.url = database_url(url, base_dir, what="ledger URL")
        # messages show the URL as the user wrote it (``postgresql://``, a relative path),
        # redacted, not the normalized form the recorder connects with
        shown = redact(url)
        self.signer = signer
        self.tool = tool
        self.clock = clock
        self._actor: tuple[int, str] | None = None
        self._signer_key_id: tuple[Signer, str] | None = None
        # A head this object wrote or verified: appends build on it without re-checking it.
        self._trusted: tuple[int, str] | None = None
        self._ledger_id: str | None = None
        path = database_file(self.url)
        if not create and path is not None and not path.exists():
            raise ConfigurationError(
                f"ledger {shown}: no ledger there ({path} does not exist)"
            )
        self.recorder: Recorder = recorder_for(self.url, shown)
        if create:
            self.recorder.ensure_schema()
        elif not self.recorder.exists():
            raise ConfigurationError(f"ledger {self.recorder.display_url}: no ledger there yet")

    @property
    def display_url(self) -> str:
        return self.recorder.display_url

    def close(self) -> None:
        self.recorder.dispose()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- appending ---------------------------------------------------------------------------
    def _actor_text(self) -> str:
        pid = os.getpid()
        if self._actor is None or self._actor[0] != pid:
            self._actor = (pid, dumps(default_actor(self.tool)))
        return self._actor[1]

    def _key_id(self, signer: Signer) -> str:
        """``signer.key_id`` (a SHA-256 each time it is asked), remembered per signer."""
        cached = self._signer_key_id
        if cached is None or cached[0] is not signer:
            cached = self._signer_key_id = (signer, signer.key_id)
        return cached[1]

    def _need_signer(self) -> Signer:
        if self.signer is None:
            raise ConfigurationError(
                "appending to the ledger needs a signing key (--key or [ledger] key)"
            )
        return self.signer

    def append(
        self,
        stream: str,
        items: Sequence[NewEvent] | NewEvent,
        *,
        expected_position: int | None = None,
    ) -> list[StoredEvent]:
        """Append events to ``stream`` atomically, sealed once; return them as stored.

        ``expected_position`` is the stream's last ``stream_seq`` the caller saw (0 for a new
        stream); if another writer appended since, :class:`StreamConflict` is raised and
        nothing is written.
        """
        if isinstance(items, NewEvent):
            items = [items]
        if not items:
            raise LedgerError("nothing to append")
        if not stream or len(stream) > 200:
            raise ConfigurationError("stream name must be 1 to 200 characters")
        if stream == LEDGER_STREAM:
            raise ConfigurationError(
                f"stream {LEDGER_STREAM!r} is reserved for the ledger's own events"
            )
        payloads = []
        for it in items:
            if not it.type or len(it.type) > 200:
                raise ConfigurationError("event type must be 1 to 200 characters")
            if it.type.startswith("ledger."):
                raise ConfigurationError(
                    f"event type {it.type!r}: types starting with 'ledger.' are reserved"
                )
            payload = it.payload
            if type(payload) is not dict:  # a dict is taken as is, any other mapping copied
                if not isinstance(payload, Mapping):
                    raise ConfigurationError(f"payload of {it.type!r} must be a JSON object")
                payload = dict(payload)
            try:
                payloads.append((it.type, dumps(payload)))
            except CanonicalError as e:
                raise ConfigurationError(f"payload of {it.type!r}: {e}") from e
        return self._commit(stream, expected_position, payloads)

    def _commit(
        self,
        stream: str,
        expected: int | None,
        payloads: list[tuple[str, str]],
        new_key: Signer | None = None,
    ) -> list[StoredEvent]:
        signer = self._need_signer()
        key_id = self._key_id(signer)
        actor = self._actor_text()
        now = format_time(self.clock())

        def build(
            head_seq: int, head_hash: str, spos: int, shash: str, active: str | None,
            tip: Tip,
        ) -> tuple[list[StoredEvent], list[Seal], list[KeyRecord]]:
            rows: list[StoredEvent] = []
            out_seals: list[Seal] = []
            new_keys: list[KeyRecord] = []
            if head_seq == 0:
                # The first append to a ledger is preceded, in the same commit, by the genesis
                # append that introduces the signing key; it is sealed on its own.
                gp = dumps({
                    "format": FORMAT_VERSION,
                    "ledger_id": uuid.uuid4().hex,
                    "key_id": key_id,
                    "public_key": signer.public.b64,
                })
                g = _make(1, LEDGER_STREAM, 1, GENESIS_TYPE, now, actor, gp, True, ZERO_HASH,
                          ZERO_HASH)
                rows.append(g)
                out_seals.append(_seal(signer, key_id, 1, g))
                new_keys.append(KeyRecord(key_id, signer.public.b64))
                head_seq, head_hash, active = 1, g.hash, key_id
                if stream == LEDGER_STREAM:
                    spos, shash = 1, g.hash
            elif (head_seq, head_hash) != self._trusted:
                self._check_tip(head_seq, head_hash, tip, active, signer, key_id)
            if active != key_id:
                self.require_active(signer, active)
            rows.extend(chain_run(head_seq, stream, spos, now, actor, payloads, head_hash, shash))
            if payloads:
                out_seals.append(_seal(signer, key_id, head_seq + 1, rows[-1]))
            if new_key is not None:
                new_keys.append(KeyRecord(new_key.key_id, new_key.public.b64))
            return rows, out_seals, new_keys

        rows = self.recorder.append(stream, expected, build)
        self._trusted = (rows[-1].seq, rows[-1].hash)
        if rows[0].type == GENESIS_TYPE and stream != LEDGER_STREAM:
            rows = rows[1:]
        return rows

    def _check_tip(
        self, seq: int, hash_: str, tip: Tip, active: str | None, signer: Signer, key_id: str
    ) -> None:
        """Refuse to build on a head that is not a genuine append's end: closed, and sealed
        over its extent by the key the chain expects. An event INSERTed at the head without
        the key would otherwise be adopted by this append's hash link."""
        closes, first, seal_key, sig, rotation = tip or (None,) * 5
        if not closes or seal_key is None or first is None:
            raise IntegrityViolation(
                seq, UNSEALED, f"the ledger's head (seq {seq}) does not close a sealed append: "
                "refusing to build on it (run 'statekeeper ledger verify')",
            )
        want = active
        if rotation is not None:  # a rotation is sealed by the key it retires
            try:
                p = loads(rotation)
                want = p["previous_key_id"] if p["key_id"] == active else None
            except (ValueError, KeyError, TypeError):
                want = None
        if seal_key != want:
            raise IntegrityViolation(
                seq, BAD_SEAL, f"the ledger's head (seq {seq}) is sealed by key "
                f"{str(seal_key)[:16]}..., not the active one: refusing to build on it",
            )
        if seal_key == key_id:
            public = signer.public
        else:
            rec = next((k for k in self.recorder.list_keys() if k.key_id == seal_key), None)
            if rec is None:
                raise IntegrityViolation(seq, BAD_SEAL, "the head's seal key is not listed")
            public = PublicKey.from_b64(rec.public_key)
        try:
            signature = base64.b64decode(str(sig), validate=True)
        except (ValueError, TypeError):
            signature = b""
        if not public.verify(signature, seal_message(int(first), seq, hash_)):
            raise IntegrityViolation(
                seq, BAD_SEAL, f"the seal of the ledger's head (seq {seq}) does not verify: "
                "refusing to build on it (run 'statekeeper ledger verify')",
            )

    def initialize(self) -> Head:
        """Write the genesis append if the ledger is empty; return the head."""
        if self.recorder.head()[0] == 0:
            self._need_signer()
            with contextlib.suppress(StreamConflict):  # another process initialised it first
                self._commit(LEDGER_STREAM, 0, [])
        return self.head()

    def rotate_key(self, new: Signer) -> StoredEvent:
        """Introduce ``new`` as the signing key, in an event sealed by the current key."""
        old = self._need_signer()
        if new.key_id == old.key_id:
            raise ConfigurationError("the new key is already the signing key")
        self.initialize()
        if any(k.key_id == new.key_id for k in self.keys()):
            raise ConfigurationError(
                f"key {new.key_id[:16]}... was used by this ledger before; a retired key is "
                "never brought back: generate a new one"
            )
        payload = dumps({
            "key_id": new.key_id, "public_key": new.public.b64, "previous_key_id": old.key_id,
        })
        rows = self._commit(LEDGER_STREAM, None, [(ROTATION_TYPE, payload)], new_key=new)
        self.signer = new
        return rows[-1]

    # -- reading -----------------------------------------------------------------------------
    def head(self) -> Head:
        seq, h = self.recorder.head()
        return Head(seq, h)

    def stream_position(self, stream: str) -> int:
        return self.recorder.stream_position(stream)

    def read(self, start: int = 1, stop: int | None = None) -> Iterator[StoredEvent]:
        for ev, _ in self.recorder.iter_events(start=start, stop=stop):
            yield ev

    def read_stream(self, stream: str, upto: int | None = None) -> Iterator[StoredEvent]:
        """One stream's events (``upto``: only those at or before that seq)."""
        for ev, _ in self.recorder.iter_events(stream=stream, stop=upto):
            yield ev

    def streams(self, prefix: str = "") -> list[tuple[str, int, str, str]]:
        return self.recorder.streams(prefix)

    def stream_starts(
        self, prefix: str, *, upto: int | None = None, after: int = 0, last: int | None = None
    ) -> list[tuple[str, int]]:
        """(stream, seq of its first event) of the streams under ``prefix`` started in
        (``after``, ``upto``], in seq order (``last``: only the last that many)."""
        return self.recorder.stream_starts(prefix, upto=upto, after=after, last=last)

    def stream_positions(self, streams: list[str], upto: int) -> dict[str, int]:
        """Each stream's position (last stream_seq) at or before seq ``upto``."""
        return self.recorder.stream_positions(streams, upto)

    def keys(self) -> list[KeyRecord]:
        return self.recorder.list_keys()

    def ledger_id(self) -> str | None:
        if self._ledger_id is None:  # the genesis never changes once written: read it once
            for ev in self.read(1, 1):
                self._ledger_id = str(loads(ev.payload)["ledger_id"])
        return self._ledger_id

    # -- verification ------------------------------------------------------------------------
    def verify(
        self, against: Checkpoint | None = None, trusted: Sequence[PublicKey] = ()
    ) -> VerifyResult:
        """Check every hash, link and seal; raise :class:`IntegrityViolation` at the first fault.

        ``against`` is a checkpoint saved earlier: the ledger must still hold its head, which
        catches a truncated tail or a rewritten history. ``trusted`` pins the signing keys.
        """
        listed = self.recorder.list_keys()
        v = ChainVerifier(
            listed,
            trusted={k.key_id for k in trusted} or None,
            watch=against.seq if against else None,
        )

        def fold(defer: Callable[[int, bytes, bytes, bytes], None] | None) -> Head:
            v.defer = defer
            for ev, seal in self.recorder.iter_events(with_seals=True):
                v.feed(ev, seal)
            return v.finish()

        # A long chain's seal signatures are verified on the other cores meanwhile.
        head = run_deferred(fold, self.recorder.head()[0])
        orphan = self.recorder.orphan_seal()
        if orphan is not None:
            raise IntegrityViolation(orphan, "bad seal", "seal for an event that does not exist")
        if against is not None:
            _check_checkpoint(against, v, {k.key_id: k for k in listed}, stream=None)
            check_extends(v, against.seq, against.head_hash)
        if head.seq:
            self._trusted = (head.seq, head.hash)
        return VerifyResult(v.count, head, v.ledger_id, v.keys_seen, against, v.active_key)

    def verify_from(
        self, base: Checkpoint | None, trusted: Sequence[PublicKey] = ()
    ) -> VerifyResult:
        """Verify what was appended after ``base``, a checkpoint of this ledger made when it
        last verified (without one, or with one no key of the chain signed: the whole chain).

        The events up to ``base`` are taken as verified then: the ledger must still hold
        ``base``'s head, sealed, and everything after it must verify as :meth:`verify` would.
        This keeps a long ledger's check before every command to the new events.
        """
        if base is None:
            return self.verify(trusted=trusted)
        listed = self.recorder.list_keys()
        by_id = {k.key_id: k for k in listed}
        ledger_id = self.ledger_id()
        if base.stream is not None or base.ledger_id != ledger_id:
            raise IntegrityViolation(
                None, CHECKPOINT_MISMATCH, f"checkpoint is not one of ledger {ledger_id}"
            )
        at = next(iter(self.recorder.iter_events(
            start=base.seq, stop=base.seq, with_seals=True
        )), None)
        if at is None:
            raise IntegrityViolation(
                base.seq, TRUNCATED, f"the ledger no longer holds seq {base.seq}, which a "
                "checkpoint vouched for",
            )
        ev, seal = at
        if ev.hash != base.head_hash:
            raise IntegrityViolation(
                base.seq, CHECKPOINT_MISMATCH,
                "event hash differs from the checkpoint: history was rewritten",
            )
        # The keys the chain introduced up to the checkpoint (verified when it was made), not
        # whatever the key table lists now: a row INSERTed there vouches for nothing.
        introduced: list[str] = []
        for kev, _ in self.recorder.iter_events(stream=LEDGER_STREAM, stop=base.seq):
            if kev.type in (GENESIS_TYPE, ROTATION_TYPE):
                introduced.append(str(loads(kev.payload)["key_id"]))

        def public(key_id: str) -> PublicKey | None:
            rec = by_id.get(key_id)
            if key_id not in introduced or rec is None:
                return None
            pk = PublicKey.from_b64(rec.public_key)
            return pk if pk.key_id == key_id else None

        cp_key = public(base.key_id)
        if cp_key is None or not base.verify(cp_key):
            # Not signed by a key of this chain: no shortcut, never a source of trust.
            return self.verify(trusted=trusted)
        if not introduced:
            raise IntegrityViolation(1, UNSEALED, "the ledger has no genesis event")
        active = introduced[-1]
        sealer = introduced[-2] if ev.type == ROTATION_TYPE and len(introduced) > 1 else active
        seal_key = public(sealer)
        if (
            seal is None or not ev.closes or seal.key_id != sealer or seal_key is None
            or not seal_key.verify(seal.signature, seal_message(seal.first, ev.seq, ev.hash))
        ):
            raise IntegrityViolation(base.seq, BAD_SEAL, "checkpoint head is not sealed")
        v = ChainVerifier(listed, trusted={k.key_id for k in trusted} or None)
        v.start_after(
            Head(base.seq, base.head_hash), active_key=active, ledger_id=str(ledger_id),
            stream_base=lambda stream: self.recorder.stream_head(stream, base.seq),
            introduced=introduced,
        )

        def fold(defer: Callable[[int, bytes, bytes, bytes], None] | None) -> Head:
            v.defer = defer
            for ev, seal in self.recorder.iter_events(start=base.seq + 1, with_seals=True):
                v.feed(ev, seal)
            return v.finish()

        head = run_deferred(fold, self.recorder.head()[0] - base.seq)
        orphan = self.recorder.orphan_seal(after=base.seq)
        if orphan is not None:
            raise IntegrityViolation(orphan, BAD_SEAL, "seal for an event that does not exist")
        self._trusted = (head.seq, head.hash)
        return VerifyResult(v.count, head, v.ledger_id, v.keys_seen, None, v.active_key)

    def key_schedule(self, upto: int) -> list[tuple[int, str]]:
        """(first seq it seals, key id) of every key the chain introduced up to ``upto``:
        the genesis key from seq 1, each rotated-in key from the seq after its rotation."""
        out: list[tuple[int, str]] = []
        for ev, _ in self.recorder.iter_events(stream=LEDGER_STREAM, stop=upto):
            if ev.type in (GENESIS_TYPE, ROTATION_TYPE):
                key = str(loads(ev.payload)["key_id"])
                out.append((1 if ev.type == GENESIS_TYPE else ev.seq + 1, key))
        return out

    def verify_stream(
        self, stream: str, trusted: Sequence[PublicKey] = (), upto: int | None = None
    ) -> int:
        """Verify one stream on its own (hashes, stream links, seals over its appends);
        return how many events it has. Each seal must be by the key the chain had active at
        its seq (not any key the key table lists: INSERT can add one). ``upto``: a head the
        whole chain verified up to (default: the head now); later events are not read."""
        if upto is None:
            upto = self.head().seq
        v = ChainVerifier(
            self.recorder.list_keys(), mode="stream", stream=stream,
            trusted={k.key_id for k in trusted} or None, schedule=self.key_schedule(upto),
        )
        for ev, seal in self.recorder.iter_events(stream=stream, stop=upto, with_seals=True):
            v.feed(ev, seal)
        v.finish()
        return v.count

    def checkpoint(self, verified: VerifyResult | None = None) -> str:
        """Sign the head a verification returned (default: verify now), so that nothing is
        vouched for unseen; return C2SP checkpoint text. Only the ledger's active key may
        sign: one that rotation retired would make a checkpoint that later fails."""
        signer = self._need_signer()
        if verified is None:
            verified = self.verify()
        head = verified.head
        if head.seq == 0:
            raise ConfigurationError("the ledger is empty: nothing to checkpoint")
        self.require_active(signer, verified.active_key)
        ledger_id = verified.ledger_id or self.ledger_id()
        assert ledger_id is not None
        return sign_checkpoint(signer, origin_for(ledger_id), head.seq, head.hash)

    def require_active(self, signer: Signer, active: str | None = None) -> None:
        """Raise unless ``signer`` is the active key (default: the last key listed)."""
        if active is None:
            listed = self.recorder.list_keys()
            active = listed[-1].key_id if listed else None
        key_id = self._key_id(signer)
        if active is not None and key_id != active:
            retired = any(k.key_id == key_id for k in self.recorder.list_keys())
            raise ConfigurationError(
                f"key {key_id[:16]}... is {'a retired key of' if retired else 'not a key of'} "
                f"this ledger; its active key is {active[:16]}... (--key or [ledger] key)"
            )


def _seal(signer: Signer, key_id: str, first: int, ev: StoredEvent) -> Seal:
    return Seal(ev.seq, key_id, signer.sign(seal_message(first, ev.seq, ev.hash)), first)


def _make(
    seq: int, stream: str, stream_seq: int, type_: str, at: str, actor: str, payload: str,
    closes: bool, prev: str, sprev: str,
) -> StoredEvent:
    h = event_hash(seq, stream, stream_seq, type_, at, actor, payload, closes, prev, sprev)
    return stored_event(seq, stream, stream_seq, type_, at, actor, payload, closes, prev, sprev, h)


def _check_checkpoint(
    cp: Checkpoint, v: ChainVerifier, listed: Mapping[str, KeyRecord], stream: str | None
) -> None:
    if v.ledger_id is not None and cp.ledger_id != v.ledger_id:
        raise IntegrityViolation(
            None, "checkpoint mismatch",
            f"checkpoint is for ledger {cp.ledger_id}, not {v.ledger_id}",
        )
    if cp.stream != stream:
        raise IntegrityViolation(None, "checkpoint mismatch", "checkpoint is for another stream")
    rec = listed.get(cp.key_id)
    if rec is None:
        raise IntegrityViolation(
            cp.seq, "unknown key", "checkpoint signed by a key not in the ledger"
        )
    if not _verifies(cp, rec):
        raise IntegrityViolation(cp.seq, "bad seal", "checkpoint signature does not verify")


def _verifies(cp: Checkpoint, rec: KeyRecord) -> bool:
    """Does ``cp`` verify with the listed key ``rec``? A listed key that does not decode
    verifies nothing (a stream export's header keys are not checked against key events)."""
    try:
        public = PublicKey.from_b64(rec.public_key)
    except KeyFileError:
        return False
    return cp.verify(public)

