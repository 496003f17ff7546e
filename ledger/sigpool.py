"""Seal signatures verified on the other cores while the chain is hashed on this one.

An Ed25519 verification costs several times what hashing and checking one event does, and
``cryptography`` holds the GIL while it verifies (threads do not help: measured). A long
``verify`` therefore hands each seal's (seq, public key, signature, message) to worker
processes and goes on folding; the chain verifier has already checked everything else about
the seal (its extent, its key against the chain's schedule) and only the signature is left.

The first fault is still the one reported: batches are collected in seq order, so a bad
signature found in a batch is the first of all signatures, and a fault the fold raises at
seq ``t`` loses to a bad signature before ``t``. A worker that cannot start or dies only
means its batches are verified here (never fewer checks).

Each worker is this file run as a script (``python sigpool.py``): it imports only
``cryptography``, not the package or the caller's ``__main__`` (which ``multiprocessing``'s
spawn would import again). Framing on its pipes: a batch is a 4-byte count and per item an
8-byte seq, the 32-byte key, the 64-byte signature, a 2-byte length and the message; the
answer is 8 bytes, 0 when every signature verified, else the seq of the first that did not.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import struct
import subprocess
import sys
from collections import deque
from collections.abc import Callable
from typing import IO, TypeVar

T = TypeVar("T")

_ITEM = struct.Struct(">Q32s64sH")
_COUNT = struct.Struct(">I")
_ANSWER = struct.Struct(">Q")

#: Below this many events a verify runs inline: starting a worker costs more than it saves.
MIN_EVENTS = 20_000
BATCH = 500
_IN_FLIGHT = 4  # batches per worker not yet answered (bounds memory and pipe buffers)
_PIPE = 1 << 20  # ~200 bytes an item: 4 batches of 500 in flight are ~400 KiB

Item = tuple[int, bytes, bytes, bytes]  # seq, raw public key, signature, message


def workers_wanted() -> int:
    """One worker per core this process may run on (none on one core). The fold itself costs
    about a tenth of the signatures (measured: ~15 us an event against ~130 us a
    verification), so the workers take every signature and the fold shares a core."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return cores if cores > 1 else 0


def verify_items(items: list[Item]) -> int:
    """The seq of the first item whose signature does not verify, 0 if all do."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    keys: dict[bytes, Ed25519PublicKey] = {}
    for seq, raw, sig, msg in items:
        pk = keys.get(raw)
        if pk is None:
            try:
                pk = keys[raw] = Ed25519PublicKey.from_public_bytes(raw)
            except ValueError:
                return seq
        try:
            pk.verify(sig, msg)
        except InvalidSignature:
            return seq
    return 0


class _Worker:
    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            # -P: not this file's directory first on the path (its modules are the package's)
            [sys.executable, "-P", os.path.abspath(__file__)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            env=dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p)),
        )
        self.alive = True
        # The batches in flight must fit in the pipe, or a write waits for the worker to
        # finish verifying the one before and nothing runs in parallel (Linux: up to 1 MiB).
        with contextlib.suppress(OSError, AttributeError):
            assert self.proc.stdin is not None
            fcntl.fcntl(self.proc.stdin.fileno(), fcntl.F_SETPIPE_SZ, _PIPE)

    def send(self, items: list[Item]) -> None:
        stdin = self.proc.stdin
        assert stdin is not None
        parts = [_COUNT.pack(len(items))]
        for seq, raw, sig, msg in items:
            if len(raw) != 32 or len(sig) != 64:
                parts.append(_ITEM.pack(seq, b"\0" * 32, b"\0" * 64, 0))  # cannot verify
                continue
            parts.append(_ITEM.pack(seq, raw, sig, len(msg)))
            parts.append(msg)
        stdin.write(b"".join(parts))
        stdin.flush()

    def answer(self) -> int:
        stdout = self.proc.stdout
        assert stdout is not None
        data = stdout.read(_ANSWER.size)
        if len(data) != _ANSWER.size:
            raise OSError("signature worker stopped")
        return int(_ANSWER.unpack(data)[0])

    def close(self, kill: bool = False) -> None:
        proc = self.proc
        try:
            if kill:
                proc.kill()
            elif proc.stdin is not None:
                proc.stdin.close()
            proc.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            proc.kill()
            proc.wait()
        for f in (proc.stdin, proc.stdout):
            if f is not None and not f.closed:
                f.close()


class SealPool:
    """Deferred seal signatures: ``add`` them in seq order, ``check(before)`` for the first
    bad one. Use as a context manager (the workers end with it)."""

    def __init__(self, workers: int) -> None:
        self._workers: list[_Worker] = []
        for _ in range(workers):
            try:
                self._workers.append(_Worker())
            except OSError:
                break
        self._next = 0
        self._batch: list[Item] = []
        # (worker or None for "verify here", items) in seq order, not yet answered
        self._pending: deque[tuple[_Worker | None, list[Item]]] = deque()
        self.bad: int | None = None  # the first seq whose signature did not verify

    def __enter__(self) -> SealPool:
        return self

    def __exit__(self, *exc: object) -> None:
        for w in self._workers:
            w.close(kill=exc[0] is not None)

    def add(self, seq: int, raw: bytes, signature: bytes, message: bytes) -> None:
        self._batch.append((seq, raw, signature, message))
        if len(self._batch) >= BATCH:
            self._flush()

    def _flush(self) -> None:
        items, self._batch = self._batch, []
        if not items:
            return
        live = [w for w in self._workers if w.alive]
        worker = live[self._next % len(live)] if live else None
        self._next += 1
        if worker is not None:
            try:
                worker.send(items)
            except OSError:
                worker.alive = False
                worker = None
        self._pending.append((worker, items))
        while len(self._pending) > _IN_FLIGHT * max(1, len(live)):
            self._collect_one()

    def _collect_one(self) -> None:
        worker, items = self._pending.popleft()
        if self.bad is not None:
            if worker is not None and worker.alive:
                worker.answer()  # keep the framing in step
            return
        found = 0
        if worker is not None and worker.alive:
            try:
                found = worker.answer()
            except OSError:
                worker.alive = False
                found = verify_items(items)
        else:
            found = verify_items(items)
        if found:
            self.bad = found

    def check(self, before: int | None = None) -> int | None:
        """Verify everything added so far; the first bad seq if it is before ``before`` (any
        when None), else None."""
        self._flush()
        while self._pending:
            self._collect_one()
        if self.bad is not None and (before is None or self.bad < before):
            return self.bad
        return None


def raise_bad(seq: int) -> None:
    from .chain import BAD_SEAL
    from .errors import IntegrityViolation

    raise IntegrityViolation(seq, BAD_SEAL, "signature does not verify")


def run_deferred(
    feed_all: Callable[[Callable[[int, bytes, bytes, bytes], None] | None], T], events: int
) -> T:
    """Run ``feed_all(defer)`` (the fold, handing each seal's signature to ``defer``) with the
    signatures verified by workers when ``events`` is large enough; the fold's own fault loses
    to a bad signature before it."""
    from .errors import IntegrityViolation

    workers = workers_wanted() if events >= MIN_EVENTS else 0
    if workers == 0:
        return feed_all(None)
    with SealPool(workers) as pool:
        def defer(seq: int, raw: bytes, signature: bytes, message: bytes) -> None:
            pool.add(seq, raw, signature, message)
            if pool.bad is not None:
                raise_bad(pool.bad)

        try:
            out = feed_all(defer)
        except IntegrityViolation as e:
            bad = pool.check(e.seq)
            if bad is not None:
                raise_bad(bad)
            raise
        bad = pool.check()
        if bad is not None:
            raise_bad(bad)
        return out


def _serve(stdin: IO[bytes], stdout: IO[bytes]) -> None:
    while True:
        head = stdin.read(_COUNT.size)
        if len(head) != _COUNT.size:
            return
        (count,) = _COUNT.unpack(head)
        items: list[Item] = []
        for _ in range(count):
            seq, raw, sig, n = _ITEM.unpack(stdin.read(_ITEM.size))
            items.append((seq, raw, sig, stdin.read(n)))
        stdout.write(_ANSWER.pack(verify_items(items)))
        stdout.flush()


if __name__ == "__main__":
    _serve(sys.stdin.buffer, sys.stdout.buffer)
