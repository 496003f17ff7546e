"""Named failpoints: ``STATEKEEPER_FAILPOINT=name`` makes the process die with ``os._exit(137)``
when it reaches that point, as a kill -9 would, so tests can crash a real run anywhere.

``name:N`` dies at the N-th hit (e.g. the second migration). Unset, a failpoint costs one
``is None`` check. Every name is declared in :data:`FAILPOINTS` so ``statekeeper debug
failpoints`` can list them and the crash matrix covers a new one without editing the test.
"""

from __future__ import annotations

import os
import sys

ENV = "STATEKEEPER_FAILPOINT"
EXIT_CODE = 137

# Step kinds, and the path (forward / rollback) on which each runs.
STEP_KINDS: dict[str, str] = {
    "preflight": "forward",
    "backup": "forward",
    "tag": "forward",
    "migrate": "forward",
    "health": "forward",
    "revert": "rollback",
    "restore": "rollback",
    "compare": "rollback",
}

# Every step has four: before its step.started is appended (a boundary), after step.started is
# committed but before the side effect (nothing happened yet), in the middle of the side effect
# (half-done: the step's own transaction or artifact is incomplete), and after the side effect
# but before step.succeeded is appended (it happened, the ledger does not know).
_PHASES = ("before", "started", "middle", "done")
# Steps whose side effect is one statement have no middle worth a failpoint.
_NO_MIDDLE = {"tag", "compare"}

FAILPOINTS: dict[str, str] = {
    f"{kind}.{phase}": path
    for kind, path in STEP_KINDS.items()
    for phase in _PHASES
    if not (phase == "middle" and kind in _NO_MIDDLE)
}
FAILPOINTS.update({
    "transition.before": "both",  # a step succeeded, its state change not yet appended
    "transition.after": "both",  # a state change appended, the next step not yet started
})


def _parse(value: str | None) -> tuple[str, int] | None:
    if not value:
        return None
    name, _, nth = value.partition(":")
    return name, int(nth) if nth.isdigit() else 1


_ARMED = _parse(os.environ.get(ENV))
_hits: dict[str, int] = {}


def hit(name: str) -> None:
    if _ARMED is None or _ARMED[0] != name:
        return
    _hits[name] = _hits.get(name, 0) + 1
    if _hits[name] >= _ARMED[1]:
        sys.stderr.flush()
        sys.stdout.flush()
        os._exit(EXIT_CODE)
