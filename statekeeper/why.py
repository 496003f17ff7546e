"""Who and why: the ``--reason TEXT`` and ``--ticket ID`` an operator gives a run or an
operation, checked before anything is opened, and ``[upgrade] require_ticket``.

Who is not given: every event the ledger stores carries its actor (OS user, host, pid, tool;
:func:`ledger.store.default_actor`). Pure: no I/O.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .errors import ConfigError

if TYPE_CHECKING:
    from .config import Config

REASON_MAX = 500
TICKET_MAX = 100
_TICKET = re.compile(r"[A-Za-z0-9._:/#-]+")


@dataclass(frozen=True)
class Why:
    """Why a run or an operation was done: both optional (unless the configuration requires
    the ticket)."""

    reason: str | None = None
    ticket: str | None = None
    #: the passing rehearsal ``start --require-rehearsal`` accepted (the run's warrant: the
    #: report shows it next to the run); None when none was required
    rehearsal: str | None = None

    def payload(self) -> dict[str, Any]:
        """The keys an event records (absent when not given)."""
        out: dict[str, Any] = {}
        if self.reason is not None:
            out["reason"] = self.reason
        if self.ticket is not None:
            out["ticket"] = self.ticket
        if self.rehearsal is not None:
            out["rehearsal"] = self.rehearsal
        return out


def check_reason(reason: str | None) -> str | None:
    if reason is None:
        return None
    if not reason.strip():
        raise ConfigError("--reason is empty: say why, in one line")
    if len(reason) > REASON_MAX:
        raise ConfigError(f"--reason is {len(reason)} characters long: at most {REASON_MAX}")
    bad = next((c for c in reason if unicodedata.category(c) in ("Cc", "Zl", "Zp")), None)
    if bad is not None:
        raise ConfigError(f"--reason must be one line of text: it contains {bad!r}")
    return reason


def check_ticket(ticket: str | None) -> str | None:
    if ticket is None:
        return None
    if not _TICKET.fullmatch(ticket) or len(ticket) > TICKET_MAX:
        shown = ticket if len(ticket) <= 40 else ticket[:37] + "..."
        raise ConfigError(
            f"--ticket {shown!r} is not valid (letters, digits and . _ : / # -, "
            f"1 to {TICKET_MAX} characters)"
        )
    return ticket


def require_ticket(config: Config) -> bool:
    """``[upgrade] require_ticket`` (its type is checked when the file is loaded)."""
    return config.raw.get("upgrade", {}).get("require_ticket") is True


def why(config: Config | None, reason: str | None, ticket: str | None,
        what: str = "this") -> Why:
    """The checked reason and ticket; ConfigError (exit 2) naming the flag for a bad one, or
    for a missing ``--ticket`` when ``[upgrade] require_ticket = true``."""
    w = Why(check_reason(reason), check_ticket(ticket))
    if w.ticket is None and config is not None and require_ticket(config):
        raise ConfigError(
            f"{config.source}: [upgrade] require_ticket = true: pass --ticket ID (the change "
            f"request {what} is done under)"
        )
    return w
