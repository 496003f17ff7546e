"""The step registry: every kind of step a run can record, one class each.

The runner performs a step through its kind's effect, ``resume`` settles an in-doubt step
through its probe, narration and reports describe it through its description, ``debug
failpoints`` (and so the crash matrix) lists its failpoints, replay checks its arguments and
result, and the policy plans the forward steps of each state from the kinds that run in it.
Adding a kind is one module here and one line in :data:`KINDS`.

The order of :data:`KINDS` is the order of the forward steps within a state (health checks
before the new version's tag in ``verifying``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .backup import Backup, manifest_result
from .base import PHASES, Context, Settled, Step, StepKind
from .commanded import DeployCommand, Start, Stop, Undo, Unstart, Unstop
from .compare import Compare
from .configfiles import Config, Snapshot, Unconfig
from .health import Health, Recheck
from .link import Switch, Unswitch
from .migrate import Migrate
from .preflight import Preflight
from .restore import Restore
from .revert import Revert
from .tag import Tag, tag_step
from .untag import Untag

if TYPE_CHECKING:
    from ..replay import Run

PREFLIGHT, BACKUP, MIGRATE, HEALTH, TAG = Preflight(), Backup(), Migrate(), Health(), Tag()
REVERT, RESTORE, COMPARE, UNTAG = Revert(), Restore(), Compare(), Untag()
# the release side
STOP, SNAPSHOT, CONFIG, SWITCH, COMMAND, START = (Stop(), Snapshot(), Config(), Switch(),
                                                  DeployCommand(), Start())
UNSTART, UNDO, UNSWITCH, UNCONFIG, UNSTOP, RECHECK = (Unstart(), Undo(), Unswitch(), Unconfig(),
                                                      Unstop(), Recheck())

KINDS: dict[str, StepKind] = {
    k.name: k for k in (
        PREFLIGHT, STOP, BACKUP, SNAPSHOT, MIGRATE, CONFIG, SWITCH, COMMAND, START, HEALTH, TAG,
        UNSTART, UNDO, UNSWITCH, UNCONFIG, REVERT, RESTORE, COMPARE, UNTAG, UNSTOP, RECHECK)
}


def kind(name: str) -> StepKind | None:
    return KINDS.get(name)


def forward_steps(run: Run) -> list[Step]:
    """The steps of the run's current forward state, in order."""
    return [s for k in KINDS.values() if run.state in k.runs_in for s in k.forward(run)]


__all__ = [
    "BACKUP", "COMMAND", "COMPARE", "CONFIG", "HEALTH", "KINDS", "MIGRATE", "PHASES", "PREFLIGHT",
    "RECHECK", "RESTORE", "REVERT", "SNAPSHOT", "START", "STOP", "SWITCH", "TAG", "UNCONFIG",
    "UNDO", "UNSTART", "UNSTOP", "UNSWITCH", "UNTAG", "Context", "Settled", "Step", "StepKind",
    "forward_steps", "kind", "manifest_result", "tag_step",
]
