"""What a step kind is: one class holding everything statekeeper knows about one kind of step.

A kind has
- the forward states whose work it does and the steps it plans there (:meth:`StepKind.forward`),
  or none when only the rollback policy asks for it;
- the arguments every ``step.started`` of it carries, and the result fields replay and the
  policy read (checked when a history is folded: a step without them is an illegal history);
- its effect (:meth:`StepKind.effect`), run by the runner between ``step.started`` and
  ``step.succeeded``/``step.failed``;
- its probe (:meth:`StepKind.probe`): after a crash left it open, whether it took effect;
- its description for narration and reports (:meth:`StepKind.describe`);
- its failpoints (derived from :attr:`StepKind.path` and :attr:`StepKind.has_middle`);
- its compensation: the kind that undoes it on rollback.

Importing a kind imports nothing heavy: its effect and probe import the edges they use when
they run, so the pure policy and replay can look kinds up.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from ..replay import Run
    from ..session import Session

Result = dict[str, Any]

# Every crash-tested step has four failpoints: before its step.started is appended (a
# boundary), after step.started is committed but before the side effect (nothing happened
# yet), in the middle of the side effect (half-done: the step's own transaction or artifact is
# incomplete), and after the side effect but before step.succeeded is appended (it happened,
# the ledger does not know).
PHASES = ("before", "started", "middle", "done")


@dataclass(frozen=True)
class Step:
    name: str
    kind: str
    args: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Context:
    """What an effect or a probe acts on: the run as folded so far, the session's open
    resources, and the hook that marks the middle of the side effect (a failpoint)."""

    run: Run
    session: Session
    hook: Callable[[], None] = lambda: None


@dataclass(frozen=True)
class Settled:
    """A probe's verdict on a step a crash left open. ``happened``: it took effect (closed as
    succeeded with ``result``). Otherwise it is closed as failed with ``error``: ``recovered``
    (the default) says it never took effect and is simply redone; not recovered means nobody
    can tell, and the failure decides (the rollback path)."""

    happened: bool
    result: Result | None = None
    error: str = "interrupted before it took effect; redoing it"
    recovered: bool = True


class StepKind:
    name: ClassVar[str]
    #: where the crash matrix exercises its failpoints ("forward" or "rollback"); None: the kind
    #: declares none (no scenario of the matrix reaches it)
    path: ClassVar[str | None] = None
    #: whether the side effect has a middle worth a failpoint (one statement has none)
    has_middle: ClassVar[bool] = True
    #: forward states whose work this kind does, for :meth:`forward`
    runs_in: ClassVar[tuple[str, ...]] = ()
    #: arguments every step.started of this kind must carry (text)
    args: ClassVar[tuple[str, ...]] = ()
    #: the kind that undoes this one on rollback (None: nothing to undo)
    compensation: ClassVar[str | None] = None
    #: what it acts on: "database" (the target) or "release" (code, configuration, commands:
    #: only a run with [deploy] has these steps, so the crash matrix runs them in such a run)
    side: ClassVar[str] = "database"

    # -- planning (pure) ---------------------------------------------------------------------
    def forward(self, run: Run) -> list[Step]:
        """The steps of this kind the run's current forward state must do, in order."""
        return []

    def outline(self, plan: Any, state: str) -> list[str]:
        """The lines ``statekeeper plan`` shows for this kind in ``state``."""
        return []

    # -- history (pure) ----------------------------------------------------------------------
    def check_result(self, result: Mapping[str, Any]) -> str | None:
        """What is wrong with a recorded result that replay and the policy read (``field 'x'
        is missing``), or None."""
        return None

    def describe(self, result: Mapping[str, Any]) -> str:
        """The tail of the narration line of a succeeded step (": backup ..., 123 bytes")."""
        return ""

    # -- the world ---------------------------------------------------------------------------
    def needs_target(self, ctx: Context, step: Step) -> bool:
        """Must the target's server be up, and the target lock really held, before this
        step starts (or its probe runs)? The runner takes the lock first
        (:meth:`Migrator.ensure_lock`); a server that is down stops the run there, before
        anything is recorded. Default: the database side's steps."""
        return self.side == "database"

    def effect(self, ctx: Context, step: Step) -> Result:
        raise NotImplementedError(f"step kind {self.name} has no effect")

    def probe(self, ctx: Context, step: Step) -> Settled:
        """Default: nothing shows that it happened, so it is redone (a kind whose effect is
        not idempotent must override this)."""
        return Settled(False)

    # -- crash testing -----------------------------------------------------------------------
    @property
    def failpoints(self) -> tuple[str, ...]:
        if self.path is None:
            return ()
        return tuple(f"{self.name}.{p}" for p in PHASES if p != "middle" or self.has_middle)

    def __repr__(self) -> str:
        return f"<step kind {self.name}>"
