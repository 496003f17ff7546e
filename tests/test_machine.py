"""The pure core: state machine, replay fold and the policy that says what comes next."""

from __future__ import annotations

from typing import Any

import pytest

from statekeeper.errors import HistoryError, IllegalTransition
from statekeeper.machine import STATES, UpgradeMachine
from statekeeper.policy import Done, Transition, next_action
from statekeeper.replay import Run, RunEvent, apply, replay
from statekeeper.steps import Step

PLAN: dict[str, Any] = {
    "run_id": "r1",
    "from_version": "v2.5",
    "to_version": "v2.6",
    "migrations": [
        {"id": "001_a", "checksum": "c1", "reversible": True},
        {"id": "002_b", "checksum": "c2", "reversible": True},
    ],
    "backup": {"enabled": True, "method": "sqlite"},
    "health_checks": [],
}


class Script:
    """Builds a run event by event, as the runner would append them."""

    def __init__(self, plan: dict[str, Any] = PLAN) -> None:
        self.events: list[RunEvent] = []
        self.run: Run | None = None
        self.add("run.created", plan)

    def add(self, type_: str, payload: dict[str, Any]) -> Run:
        ev = RunEvent(len(self.events) + 1, type_, payload, "2026-11-29T00:00:00.000000Z")
        self.events.append(ev)
        self.run = apply(self.run, ev)
        return self.run

    def go(self, trigger: str, reason: str | None = None) -> None:
        assert self.run is not None
        p = {"trigger": trigger, "from": self.run.state, "to": _to(self.run.state, trigger)}
        if reason:
            p["reason"] = reason
        self.add("state.changed", p)

    def step(
        self,
        name: str,
        kind: str,
        ok: bool = True,
        result: dict[str, Any] | None = None,
        **args: Any,
    ) -> None:
        self.add("step.started", {"step": name, "kind": kind, **args})
        if ok:
            self.add("step.succeeded", {"step": name, "kind": kind, "result": result or {}})
        else:
            self.add("step.failed", {"step": name, "kind": kind, "error": "boom"})

    def do_next(self, compare_equal: bool = True) -> Any:
        """Perform what the policy says (successfully) and return the action."""
        assert self.run is not None
        a = next_action(self.run)
        if isinstance(a, Transition):
            self.go(a.trigger, a.reason)
        elif isinstance(a, Step):
            result: dict[str, Any] = {}
            if a.kind == "backup":
                result = {"backup_id": a.args["backup_id"]}
            if a.kind == "compare":
                result = {
                    "equal": compare_equal,
                    "diff": [] if compare_equal else ["users: 3 -> 2"],
                }
            self.step(a.name, a.kind, result=result, **a.args)
        return a


def _to(state: str, trigger: str) -> str:
    m = UpgradeMachine(state)
    return m.fire(trigger)


def test_machine_has_no_auto_transitions() -> None:
    m = UpgradeMachine()
    for s in STATES:
        assert not hasattr(m, f"to_{s}")
    with pytest.raises(IllegalTransition):
        m.fire("verified")


def test_forward_path_happy() -> None:
    s = Script()
    actions = []
    while not isinstance(a := s.do_next(), Done):
        actions.append(a.name if isinstance(a, Step) else a.trigger)
    assert actions == [
        "begin",
        "preflight",
        "preflight_passed",
        "backup",
        "backed_up",
        "tag:v2.5",
        "tagged",
        "migrate:001_a",
        "migrate:002_b",
        "migrated",
        "deployed",
        "health",
        "tag:v2.6",
        "verified",
    ]
    assert s.run is not None and s.run.state == "completed"
    assert replay(s.events).state == "completed"


def _to_migrating(s: Script) -> None:
    for _ in range(7):  # begin, preflight, passed, backup, backed_up, tag, tagged
        s.do_next()
    assert s.run is not None and s.run.state == "migrating"


def test_rollback_reverts_newest_first_then_compares() -> None:
    s = Script()
    _to_migrating(s)
    s.step("migrate:001_a", "migrate", migration="001_a", checksum="c1")
    s.step("migrate:002_b", "migrate", migration="002_b", checksum="c2")
    s.go("fail", "health failed")
    names = []
    while not isinstance(a := s.do_next(), Done):
        names.append(a.name if isinstance(a, Step) else a.trigger)
    assert names == ["revert:002_b", "revert:001_a", "compare", "rollback_done"]
    assert s.run is not None and s.run.state == "rolled_back"


def test_irreversible_migration_restores_backup() -> None:
    plan = dict(PLAN, migrations=[{"id": "001_a", "checksum": "c1", "reversible": False}])
    s = Script(plan)
    _to_migrating(s)
    s.step("migrate:001_a", "migrate", migration="001_a", checksum="c1")
    s.go("fail", "x")
    a = next_action(s.run)  # type: ignore[arg-type]
    assert isinstance(a, Step) and a.kind == "restore" and a.args["backup_id"] == "r1"


def test_fingerprint_differs_after_down_parts_then_restore_then_failed() -> None:
    s = Script()
    _to_migrating(s)
    s.step("migrate:001_a", "migrate", migration="001_a", checksum="c1")
    s.go("fail", "x")
    s.do_next()  # revert
    assert isinstance(s.do_next(compare_equal=False), Step)  # compare: differs
    a = s.do_next()
    assert isinstance(a, Step) and a.kind == "restore"
    assert isinstance(s.do_next(compare_equal=False), Step)  # compare again: still differs
    a = s.do_next()
    assert isinstance(a, Transition) and a.trigger == "rollback_failed"
    assert "users: 3 -> 2" in (a.reason or "")
    assert s.run is not None and s.run.state == "failed"


def test_interrupted_step_is_redone_not_counted_as_failure() -> None:
    s = Script()
    _to_migrating(s)
    s.step("migrate:001_a", "migrate", migration="001_a", checksum="c1")
    s.go("fail", "x")
    s.add("step.started", {"step": "revert:001_a", "kind": "revert", "migration": "001_a"})
    s.add(
        "step.failed",
        {"step": "revert:001_a", "kind": "revert", "error": "interrupted", "recovered": True},
    )
    a = next_action(s.run)  # type: ignore[arg-type]
    assert isinstance(a, Step) and a.name == "revert:001_a"


@pytest.mark.parametrize(
    "bad",
    [
        "state change skipping a state",
        "step succeeded that was never started",
        "second step started while one is open",
        "event position skipped",
    ],
)
def test_illegal_history_is_detected(bad: str) -> None:
    s = Script()
    s.go("begin")
    with pytest.raises(HistoryError):
        if bad == "state change skipping a state":
            s.add("state.changed", {"trigger": "migrated", "from": "preflight", "to": "deploying"})
        elif bad == "step succeeded that was never started":
            s.add("step.succeeded", {"step": "backup", "kind": "backup"})
        elif bad == "second step started while one is open":
            s.add("step.started", {"step": "preflight", "kind": "preflight"})
            s.add("step.started", {"step": "backup", "kind": "backup"})
        else:
            ev = RunEvent(len(s.events) + 2, "run.resumed", {}, "2026-11-29T00:00:00.000000Z")
            apply(s.run, ev)


def test_run_must_start_with_created() -> None:
    with pytest.raises(HistoryError):
        replay([RunEvent(1, "state.changed", {"trigger": "begin"}, "x")])


def test_a_failed_preflight_aborts_and_a_failed_step_is_never_retried() -> None:
    s = Script()
    s.go("begin")
    s.step("preflight", "preflight", ok=False)
    a = next_action(s.run)  # type: ignore[arg-type]
    assert a == Transition("abort", "preflight failed: boom")
    s2 = Script()
    _to_migrating(s2)
    s2.step("migrate:001_a", "migrate", ok=False, migration="001_a", checksum="c1")
    a = next_action(s2.run)  # type: ignore[arg-type]
    assert a == Transition("fail", "migrate:001_a failed: boom")


def test_irreversible_without_backup_ends_failed() -> None:
    plan = dict(PLAN, migrations=[{"id": "001_a", "checksum": "c1", "reversible": False}],
                backup={"enabled": False, "method": None})
    s = Script(plan)
    for _ in range(5):  # begin, preflight, passed, backed_up (nothing to back up), tag
        s.do_next()
    s.do_next()  # tagged
    s.step("migrate:001_a", "migrate", migration="001_a", checksum="c1")
    s.go("fail", "x")
    a = next_action(s.run)  # type: ignore[arg-type]
    assert isinstance(a, Transition) and a.trigger == "rollback_failed"
    assert a.reason == "cannot undo a migration without a down part: no backup was taken"


def test_a_restore_that_fails_twice_gives_up_and_retry_starts_over() -> None:
    plan = dict(PLAN, migrations=[{"id": "001_a", "checksum": "c1", "reversible": False}])
    s = Script(plan)
    _to_migrating(s)
    s.step("migrate:001_a", "migrate", migration="001_a", checksum="c1")
    s.go("fail", "x")
    s.step("restore", "restore", ok=False, backup_id="r1")
    assert next_action(s.run).name == "restore"  # type: ignore[arg-type, union-attr]
    s.step("restore", "restore", ok=False, backup_id="r1")
    a = next_action(s.run)  # type: ignore[arg-type]
    assert a == Transition("rollback_failed", "restore failed: boom")
    s.go("rollback_failed", a.reason)  # type: ignore[union-attr]
    s.go("retry_rollback", "operator")
    assert s.run is not None and s.run.phase_steps() == []
    a = next_action(s.run)
    assert isinstance(a, Step) and a.kind == "restore"  # a fresh attempt
