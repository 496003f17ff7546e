"""What comes next: a pure function of a run's folded state.

The runner asks :func:`next_action`, performs it, appends the event, and asks again. A resumed
run asks the same question of the replayed state, so resuming needs no special path beyond
settling the step that was in doubt.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .machine import NEXT_TRIGGER
from .replay import Run
from .steps import (
    COMMAND,
    COMPARE,
    CONFIG,
    RECHECK,
    RESTORE,
    REVERT,
    START,
    STOP,
    SWITCH,
    UNCONFIG,
    UNDO,
    UNSTART,
    UNSTOP,
    UNSWITCH,
    UNTAG,
    Step,
    forward_steps,
)


@dataclass(frozen=True)
class Transition:
    trigger: str
    reason: str | None = None


@dataclass(frozen=True)
class Done:
    state: str


Action = Step | Transition | Done


def _ran(s: Any) -> bool:
    """The step may have taken effect: it succeeded, or failed in a way that says nothing
    about how far it got (an interrupted step that was simply redone does not count)."""
    return bool(s.status == "succeeded" or _really_failed(s))


def _release_undo(run: Run) -> Action | None:
    """The release side goes back first, in reverse: stop the new release, undo the deploy
    commands (last first), switch the link back, restore the configuration files."""
    rel = run.plan.release
    if rel is None:
        return None
    steps = run.steps

    def done(kind: str) -> bool:
        return any(s.kind == kind and s.status == "succeeded" for s in steps)

    def started(kind: str) -> bool:
        # Even one settled as "interrupted before it took effect": its compensation is
        # idempotent, and a crash in the middle of a start, a switch or the configuration
        # files may have done part of it.
        return any(s.kind == kind for s in steps)

    if rel.stop and started(START.name) and not done(UNSTART.name):
        return UNSTART.make()
    undone = {int(s.args.get("index", 0)) for s in steps
              if s.kind == UNDO.name and s.status == "succeeded"}
    ran = sorted({int(s.args.get("index", 0)) for s in steps if s.kind == COMMAND.name
                  and _ran(s)}, reverse=True)
    for i in ran:
        if i not in undone:
            return UNDO.make(i, rel.commands[i - 1].name if 0 < i <= len(rel.commands) else "")
    snap = run.succeeded("snapshot")
    if started(SWITCH.name) and not done(UNSWITCH.name):
        previous = (snap.result or {}).get("link_target") if snap else rel.from_target
        return UNSWITCH.make(previous)
    # a deploy command settled as never started (no output file) touched nothing
    touched = any(s.kind in (CONFIG.name, SWITCH.name, START.name) or (
        s.kind == COMMAND.name and _ran(s)) for s in steps)
    if snap is not None and rel.config_files and touched and not done(UNCONFIG.name):
        return UNCONFIG.make()
    return None


def _release_back(run: Run) -> Action | None:
    """Once the schema and data are back: start the old release and check its health (in
    each rollback attempt: a human may have fixed the old release since the last)."""
    rel = run.plan.release
    if rel is None:
        return None
    steps = run.phase_steps()
    if rel.start and any(s.kind == STOP.name for s in run.steps) and not any(
            s.kind == UNSTOP.name and s.status == "succeeded" for s in steps):
        return UNSTOP.make()
    if not any(s.kind == RECHECK.name and s.status == "succeeded" for s in steps):
        return RECHECK.make(len(run.plan.health_checks))
    return None


def _rollback_action(run: Run) -> Action:
    steps = run.phase_steps()
    last = steps[-1] if steps else None
    if last is not None and _really_failed(last) and last.kind not in (REVERT.name,
                                                                      RESTORE.name):
        if last.kind == RECHECK.name:
            return Transition("rollback_failed", f"the old release is unhealthy after the "
                              f"rollback: {last.error}")
        return Transition("rollback_failed", f"{last.name} failed: {last.error}")
    undo = _release_undo(run)
    if undo is not None:
        return undo
    applied = run.migrations_applied()
    backup = run.backup
    may_restore = backup is not None and run.allow_restore
    restored = any(s.kind == RESTORE.name and s.status == "succeeded" for s in steps)
    restore_failed = [s for s in steps if s.kind == RESTORE.name and _really_failed(s)]
    compares = [s for s in steps if s.kind == COMPARE.name and s.status == "succeeded"]
    reverts_failed = any(s.kind == REVERT.name and _really_failed(s) for s in steps)

    if restore_failed and restore_failed[-1].integrity:
        # the artifact is not the backup the ledger recorded: restoring it would lose data
        # silently, and trying again cannot change that
        return Transition("rollback_failed", f"restore refused: {restore_failed[-1].error}")
    if len(restore_failed) >= 2:
        return Transition("rollback_failed", f"restore failed: {restore_failed[-1].error}")
    if applied and not restored:
        reversible = all((m := run.plan.migration(mid)) is not None and m.reversible
                         for mid in applied)
        if reversible and not reverts_failed:
            return REVERT.make(applied[-1], run.plan.migration(applied[-1]))
        if not may_restore:
            why = "a migration without a down part" if not reversible else "a down part failed"
            return Transition("rollback_failed", f"cannot undo {why}: {_no_restore(run)}")
        assert backup is not None
        return RESTORE.make(backup["backup_id"])
    if not restored:
        # Tags this run gave that outlive its migrations (none applied, or a tag of the state
        # before it that did not exist): the target's tags go back to what they were. A
        # restore already did that (the backup predates every tag step).
        untagged = {str(s.args["tag"]) for s in steps if s.kind == UNTAG.name
                    and s.status == "succeeded"}
        for name in run.tags_made():
            if name not in untagged:
                return UNTAG.make(name)
    last_cmp = compares[-1] if compares else None
    if last_cmp is None or (restored and not _after(steps, last_cmp, RESTORE.name)):
        n = len(compares) + 1
        # An operator's rollback of a used application keeps the data written since: only
        # the schema must be as before. A restore brings back everything, so all is compared.
        scope = "schema" if run.rollback_mode == "operator" and not restored else "full"
        return COMPARE.make(n, scope)
    result = last_cmp.result or {}
    what = "schema" if last_cmp.args.get("scope") == "schema" else "database"
    if result.get("equal"):
        back = _release_back(run)
        if back is not None:
            return back
        rel = run.plan.release
        healthy = (f"; release {rel.from_release} is back and healthy"
                   if rel is not None and rel.from_release else "")
        window = result.get("written_before_backup") or []
        if window:
            # the backup was restored and holds writes that landed after preflight: the run
            # is done, and the record says what those writes were
            return Transition("rollback_done", f"{what} equals what the backup holds; written "
                              f"between preflight and the backup, and kept: "
                              f"{'; '.join(window)}{healthy}")
        return Transition("rollback_done",
                          f"{what} equals its fingerprint before the upgrade{healthy}")
    if may_restore and not restored:
        assert backup is not None
        return RESTORE.make(backup["backup_id"])
    diff = "; ".join(result.get("diff", [])) or "fingerprint differs"
    return Transition("rollback_failed", f"{what} differs from before the upgrade: {diff}")


def _no_restore(run: Run) -> str:
    if run.backup is None:
        return "no backup was taken"
    return (f"restoring backup {run.backup['backup_id']} would discard every change made since "
            "it was taken (rollback --restore accepts that)")


def _really_failed(s: Any) -> bool:
    # A step closed as failed by resume (interrupted before it took effect) is simply redone.
    return bool(s.status == "failed" and not s.recovered)


def _after(steps: list[Any], cmp: Any, kind: str) -> bool:
    """True when ``cmp`` comes after the last successful step of ``kind``."""
    idx_cmp = steps.index(cmp)
    idx_kind = max(
        (i for i, s in enumerate(steps) if s.kind == kind and s.status == "succeeded"), default=-1
    )
    return idx_cmp > idx_kind


def next_action(run: Run) -> Action:
    if run.machine.terminal:
        return Done(run.state)
    if run.open_step is not None:
        raise ValueError(f"step {run.open_step.name} is in doubt; settle it before going on")
    if run.state == "rolling_back":
        return _rollback_action(run)
    last = run.steps[-1] if run.steps else None
    if last is not None and _really_failed(last):
        # A forward step failed and the run has not acted on it yet (perhaps it crashed right
        # after recording the failure): the failure decides, never a retry.
        trigger = "abort" if run.state == "preflight" else "fail"
        return Transition(trigger, f"{last.name} failed: {last.error}")
    for step in forward_steps(run):
        if run.succeeded(step.name) is None:
            return step
    return Transition(NEXT_TRIGGER[run.state])
