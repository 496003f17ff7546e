"""The upgrade state machine: pure. It validates transitions and says what is legal; it has no
callbacks that touch the world. Built with ``transitions`` and ``auto_transitions=False`` so an
audited run has no shortcut around the table below.

Forward:   planned -> preflight -> backing_up -> tagging -> migrating -> deploying -> verifying
           -> completed
Failure:   preflight -abort-> rolled_back (nothing was changed yet)
           backing_up..verifying -fail-> rolling_back -rolled_back-> rolled_back
                                                      -rollback_failed-> failed (needs a human)
Undo:      completed -rollback-> rolling_back        (statekeeper rollback RUN_ID)
Retry:     failed -retry_rollback-> rolling_back     (statekeeper resume on a failed run)
"""

from __future__ import annotations

from transitions import Machine, MachineError

from .errors import IllegalTransition

FORWARD = ("planned", "preflight", "backing_up", "tagging", "migrating", "deploying",
           "verifying", "completed")
STATES = (*FORWARD, "rolling_back", "rolled_back", "failed")
TERMINAL = ("completed", "rolled_back", "failed")
IN_FLIGHT = ("preflight", "backing_up", "tagging", "migrating", "deploying", "verifying")

TRANSITIONS: list[dict[str, object]] = [
    {"trigger": "begin", "source": "planned", "dest": "preflight"},
    {"trigger": "preflight_passed", "source": "preflight", "dest": "backing_up"},
    {"trigger": "backed_up", "source": "backing_up", "dest": "tagging"},
    {"trigger": "tagged", "source": "tagging", "dest": "migrating"},
    {"trigger": "migrated", "source": "migrating", "dest": "deploying"},
    {"trigger": "deployed", "source": "deploying", "dest": "verifying"},
    {"trigger": "verified", "source": "verifying", "dest": "completed"},
    {"trigger": "abort", "source": ["planned", "preflight"], "dest": "rolled_back"},
    {"trigger": "fail", "source": list(IN_FLIGHT[1:]), "dest": "rolling_back"},
    {"trigger": "rollback", "source": "completed", "dest": "rolling_back"},
    {"trigger": "rollback_done", "source": "rolling_back", "dest": "rolled_back"},
    {"trigger": "rollback_failed", "source": "rolling_back", "dest": "failed"},
    {"trigger": "retry_rollback", "source": "failed", "dest": "rolling_back"},
]

# The trigger that leaves each forward state when its work is done.
NEXT_TRIGGER = {
    "planned": "begin",
    "preflight": "preflight_passed",
    "backing_up": "backed_up",
    "tagging": "tagged",
    "migrating": "migrated",
    "deploying": "deployed",
    "verifying": "verified",
}


class UpgradeMachine:
    """One run's machine. ``state`` is only ever changed by :meth:`fire`."""

    state: str

    def __init__(self, initial: str = "planned") -> None:
        self._machine = Machine(
            model=self,
            states=list(STATES),
            transitions=TRANSITIONS,
            initial=initial,
            auto_transitions=False,
            ignore_invalid_triggers=False,
        )

    def can(self, trigger: str) -> bool:
        return trigger in self._machine.get_triggers(self.state)

    def fire(self, trigger: str) -> str:
        """Apply ``trigger``; return the new state or raise :class:`IllegalTransition`."""
        if not self.can(trigger):
            raise IllegalTransition(trigger, self.state)
        try:
            getattr(self, trigger)()
        except MachineError as e:  # pragma: no cover - can() already checked
            raise IllegalTransition(trigger, self.state) from e
        return self.state

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL
