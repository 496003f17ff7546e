"""Sizes as people read them, one way everywhere (``backup create/list/verify/prune``, a run's
backup step, preflight's free-disk check, the report): binary units, one decimal.

Only the standard library, so that the CLI, the steps and the report share it. Machine
output (``--json``, the ledger) keeps the exact number of bytes; so do the messages that
compare two sizes (a truncated artifact: ``is 100 bytes, manifest says 4096``).
"""

from __future__ import annotations

_UNITS = ("KiB", "MiB", "GiB", "TiB", "PiB")


def size_text(n: int) -> str:
    """``0 B``, ``1023 B``, ``1.0 KiB``, ``74.8 MiB``, ``1.2 GiB``: below 1024 the bytes, else
    one decimal of the largest binary unit that keeps the number at least 1 (and 1023.9 KiB is
    shown as ``1.0 MiB``, never ``1024.0 KiB``)."""
    if n < 1024:
        return f"{n} B"
    size = float(n)
    unit = "B"
    for unit in _UNITS:
        size /= 1024
        if round(size, 1) < 1024 or unit == _UNITS[-1]:
            break
    return f"{size:.1f} {unit}"
