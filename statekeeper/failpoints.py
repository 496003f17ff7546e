"""Named failpoints: ``STATEKEEPER_FAILPOINT=name`` makes the process die with ``os._exit(137)``
when it reaches that point, as a kill -9 would, so tests can crash a real run anywhere.

``name:N`` dies at the N-th hit (e.g. the second migration). ``name[:N]@stop`` stops the
process there instead (SIGSTOP), holding whatever it holds (its locks, its connections), until
a test that inspects that moment sends SIGCONT. Unset, a failpoint costs one ``is None``
check. Every name is declared in :data:`FAILPOINTS` (the step kinds' own, plus
the transitions') so ``statekeeper debug failpoints`` can list them and the crash matrix
covers a new one without editing the test.
"""

from __future__ import annotations

import os
import signal
import sys

from .steps import KINDS

ENV = "STATEKEEPER_FAILPOINT"
EXIT_CODE = 137  # errors.EXIT_KILLED: what a kill -9 would give

# Each step kind declares its own (statekeeper.steps): a new kind is covered without editing
# this file or the crash matrix.
FAILPOINTS: dict[str, str] = {
    name: str(k.path) for k in KINDS.values() for name in k.failpoints
}
FAILPOINTS.update({
    "transition.before": "both",  # a step succeeded, its state change not yet appended
    "transition.after": "both",  # a state change appended, the next step not yet started
})
#: what each failpoint's step acts on ("database", "release"; "any" for the transitions)
SIDES: dict[str, str] = {name: k.side for k in KINDS.values() for name in k.failpoints}
SIDES.update({"transition.before": "any", "transition.after": "any"})


def _parse(value: str | None) -> tuple[str, int, str] | None:
    if not value:
        return None
    value, _, action = value.partition("@")
    name, _, nth = value.partition(":")
    return name, int(nth) if nth.isdigit() else 1, action or "exit"


_ARMED = _parse(os.environ.get(ENV))
_hits: dict[str, int] = {}


def hit(name: str) -> None:
    if _ARMED is None or _ARMED[0] != name:
        return
    _hits[name] = _hits.get(name, 0) + 1
    if _hits[name] >= _ARMED[1]:
        sys.stderr.flush()
        sys.stdout.flush()
        if _ARMED[2] == "stop":
            if _hits[name] == _ARMED[1]:  # once: after SIGCONT the run goes on
                os.kill(os.getpid(), signal.SIGSTOP)
            return
        os._exit(EXIT_CODE)
