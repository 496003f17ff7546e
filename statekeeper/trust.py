"""Verify before acting: the history a command acts on is one the key sealed.

``start``, ``resume`` and ``rollback`` call :func:`verify_before_act` before they touch the
target (``status`` and ``history`` before they show a run, and the terminal checkpoint before
it signs). It verifies the chain since the last head this tool verified, kept as a checkpoint
signed with the ledger's key in ``.statekeeper/verified/<ledger id>.checkpoint`` (so a long
ledger costs only its new events), and the run's own stream in full. A missing, unreadable or
foreign local checkpoint only means a full verification: it is a shortcut, never a source of
trust (a forged one would need the key; an older one makes the check longer, not weaker).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import TYPE_CHECKING

from . import files

if TYPE_CHECKING:
    from ledger import Checkpoint, Ledger, VerifyResult


def local_checkpoint_path(base_dir: Path, ledger_id: str) -> Path:
    return base_dir / ".statekeeper" / "verified" / f"{ledger_id}.checkpoint"


def _read_local(path: Path, ledger_id: str) -> Checkpoint | None:
    """The local checkpoint if it reads as one of this ledger's (its signature is checked
    by :meth:`ledger.Ledger.verify_from`, against the keys the chain introduced)."""
    import ledger

    try:
        cp = ledger.parse_checkpoint(path.read_text(encoding="utf-8"), str(path))
    except (OSError, UnicodeDecodeError, ledger.LedgerError):
        return None
    return cp if cp.ledger_id == ledger_id and cp.stream is None else None


def verify_before_act(lg: Ledger, base_dir: Path, stream: str | None = None) -> VerifyResult:
    """Verify what was appended since the last verified head, and ``stream`` whole; raise
    :class:`ledger.IntegrityViolation` at the first bad seq. On success, and when the ledger
    can sign, move the local checkpoint to the verified head."""
    ledger_id = lg.ledger_id()
    if ledger_id is None:  # an empty ledger: nothing to verify yet
        return lg.verify()
    base = _read_local(local_checkpoint_path(base_dir, ledger_id), ledger_id)
    # With a genuine local checkpoint, a ledger that no longer holds its head was cut short
    # or rewritten since: that is a violation, not a reason to start over.
    result = lg.verify_from(base)
    if stream is not None:
        lg.verify_stream(stream, upto=result.head.seq)
    remember(lg, base_dir, result)
    return result


def remember(lg: Ledger, base_dir: Path, verified: VerifyResult) -> None:
    """Keep ``verified``'s head as the local checkpoint (best effort: it is only a shortcut)."""
    if lg.signer is None or verified.head.seq == 0 or verified.ledger_id is None:
        return
    import ledger

    path = local_checkpoint_path(base_dir, verified.ledger_id)
    with contextlib.suppress(OSError, ledger.LedgerError):
        text = lg.checkpoint(verified)
        files.private_dir(path.parent)
        # Renamed into place but not fsynced: after a power cut an old, empty or torn file
        # only means a longer check next time (it is ignored unless it verifies).
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.unlink(missing_ok=True)
        with os.fdopen(files.create_private(tmp), "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
