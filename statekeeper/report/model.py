"""The report model. PURE: the standard library only, no I/O, no clock.

A run's entry is built from its replayed :class:`statekeeper.replay.Run` and its events; an
operation's from its replayed :class:`statekeeper.opreplay.Operation`. Every entry is a plain
JSON value (dicts, lists, text, integers, booleans, null) so that the JSON renderer writes the
model itself and docs/report.schema.json describes exactly what every renderer shows.

Absent is absent: a field an older history never recorded (a reason, a ticket, a migration
file's sha256, the release side) is ``None`` here, "not recorded" in the documents, never a
guess. Times are ISO 8601 text with the zone's offset (``TimeZone.iso``); durations whole
milliseconds.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime, tzinfo
from typing import TYPE_CHECKING, Any

from ..sizes import size_text

if TYPE_CHECKING:
    from ..opreplay import Operation
    from ..replay import Run, RunEvent, StepRecord

SCHEMA_VERSION = 1

# What "time the application was down" means, written into every report.
DOWNTIME_RELEASE = (
    "release side recorded: from the start of the step that stopped the application (stop, or "
    "unstart in a rollback) to the end of the step that started it again (start, or unstop)")
DOWNTIME_RUN = (
    "statekeeper did not stop the application (no release side recorded, or one without a stop "
    "command): the run's whole duration, an upper bound on the time its database was being "
    "changed")

TERMINAL = ("completed", "rolled_back", "failed")
RUN_STATES = ("completed", "rolled_back", "failed", "in_flight", "unreadable")
OP_OUTCOMES = ("succeeded", "failed", "interrupted", "unreadable")


def parse_utc(text: str) -> datetime:
    """The ledger's fixed-precision UTC text (``2024-05-01T12:00:00.000000Z``)."""
    t = datetime.fromisoformat(text)  # C-fast; 3.11 reads the trailing Z as UTC
    return t if t.tzinfo is not None else t.replace(tzinfo=UTC)


class TimeZone:
    """The zone times are shown in (UTC unless ``--tz``); always with its offset."""

    def __init__(self, zone: tzinfo = UTC, name: str = "UTC") -> None:
        self.zone = zone
        self.name = name

    def iso(self, text: str | None) -> str | None:
        if not text:
            return None
        return parse_utc(text).astimezone(self.zone).isoformat(timespec="microseconds")


def between_ms(start: str | None, end: str | None) -> int | None:
    if not start or not end:
        return None
    return int((parse_utc(end) - parse_utc(start)).total_seconds() * 1000)


def who(actor: Mapping[str, Any] | None) -> dict[str, Any]:
    a = actor or {}
    return {"user": _text(a.get("user")), "host": _text(a.get("host")),
            "pid": a.get("pid") if isinstance(a.get("pid"), int) else None,
            "tool": _text(a.get("tool"))}


def _text(v: Any) -> str | None:
    return v if isinstance(v, str) else None


# -- steps -----------------------------------------------------------------------------------
def _short(h: Any, n: int = 16) -> str:
    return str(h)[:n] if h else "?"


def step_detail(kind: str, args: Mapping[str, Any], result: Mapping[str, Any] | None) -> str:
    """One line saying what a step did, from what the ledger recorded (never file content)."""
    r = result or {}
    if kind == "backup":
        if r.get("backup_id"):
            size = r.get("size")
            shown = size_text(size) if isinstance(size, int) else f"{size} bytes"
            return (f"{r.get('method')} backup {r.get('backup_id')}, {shown}, "
                    f"sha256 {_short(r.get('sha256'))}")
        return f"{args.get('method') or ''} backup {args.get('backup_id') or ''}".strip()
    if kind in ("migrate", "revert"):
        return str(args.get("migration") or r.get("migration") or "")
    if kind in ("tag", "untag"):
        return f"tag {args.get('tag') or r.get('tag')}"
    if kind == "restore":
        return f"backup {args.get('backup_id') or r.get('backup_id')}"
    if kind == "prune" and "size" not in args:
        return f"removed what was left of backup {args.get('backup_id')} ({args.get('why')})"
    if kind == "prune":
        size = args.get("size")
        shown = size_text(size) if isinstance(size, int) else "size not recorded"
        return (f"deleted {args.get('method')} backup {args.get('backup_id')}, {shown}, "
                f"sha256 {_short(args.get('sha256'))} ({args.get('why')})")
    if kind == "compare":
        if "equal" not in r:
            return ""
        return "data identical" if r.get("equal") else "differs: " + "; ".join(
            str(x) for x in r.get("diff") or r.get("differences") or [])
    if kind == "clone":  # a rehearsal's
        return f"{r.get('method')} clone {r.get('clone')}: {r.get('why')}" if r else ""
    if kind in ("forward", "rollback") and r.get("run_id"):  # a rehearsal's pass
        ms = r.get("ms")
        return (f"run {r.get('run_id')} on the clone: {r.get('state')}"
                f"{f' in {ms} ms' if isinstance(ms, int) else ''}")
    if kind in ("health", "recheck"):
        checks = r.get("checks") or []
        return ", ".join(f"{c.get('name')}: {'ok' if c.get('ok') else 'FAILED'}"
                         for c in checks if isinstance(c, Mapping))
    if kind == "switch" or kind == "unswitch":
        return f"current -> {r.get('to') or args.get('to')}"
    if kind in ("snapshot", "config"):
        return f"{len(r.get('files') or [])} configuration file(s)"
    if kind == "unconfig":
        return f"{r.get('restored', 0)} configuration file(s) restored" if r else ""
    if kind in ("stop", "start", "command", "undo", "unstart", "unstop"):
        code = r.get("exit_code")
        name = args.get("command") or r.get("command") or kind
        return f"{name}: exit {code}" if code is not None else str(name)
    if kind == "preflight":
        d = r.get("fingerprint_digest")
        return f"fingerprint {_short(d)}" if d else ""
    if kind == "baseline":
        return _baseline_detail(args, r)
    return ""


def _baseline_detail(args: Mapping[str, Any], r: Mapping[str, Any]) -> str:
    migrations = args.get("migrations") or []
    through = args.get("through")
    text = (f"{len(migrations)} migration(s) recorded as already applied "
            f"{'through ' + str(through) if through else '(none in the directory)'}, "
            f"none run, tagged {args.get('tag')}")
    if r.get("fingerprint_digest"):
        text += f"; fingerprint {_short(r.get('fingerprint_digest'))}"
    replaced = args.get("replaced")
    if isinstance(replaced, Mapping):
        rows, tags = replaced.get("migrations") or [], replaced.get("tags") or []
        text += (f"; --force replaced {len(rows)} changelog row(s) "
                 f"({', '.join(str(x.get('migration')) for x in rows if isinstance(x, Mapping))})"
                 f" and {len(tags)} tag(s) "
                 f"({', '.join(str(x.get('tag')) for x in tags if isinstance(x, Mapping))})")
    elif args.get("force"):
        text += "; --force (nothing replaced)"
    return text


def step_entry(tz: TimeZone, name: str, kind: str, attempt: int, status: str, started: str,
               ended: str | None, duration_ms: int | None, args: Mapping[str, Any],
               result: Mapping[str, Any] | None, error: str | None, recovered: bool,
               integrity: bool) -> dict[str, Any]:
    if duration_ms is None:
        duration_ms = between_ms(started, ended)
    outcome = {"open": "in doubt (no end recorded)"}.get(status, status)
    return {"name": name, "kind": kind, "attempt": attempt, "outcome": outcome,
            "started_at": tz.iso(started), "ended_at": tz.iso(ended),
            "duration_ms": duration_ms, "detail": step_detail(kind, args, result),
            "error": error, "recovered": recovered, "integrity": integrity}


def _from_record(tz: TimeZone, s: StepRecord) -> dict[str, Any]:
    return step_entry(tz, s.name, s.kind, s.attempt, s.status, s.started_at, s.ended_at,
                      s.duration_ms, s.args, s.result, s.error, s.recovered, s.integrity)


def backup_of(result: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if not result or not result.get("backup_id"):
        return None
    return {"backup_id": str(result["backup_id"]), "method": _text(result.get("method")),
            "size": result.get("size") if isinstance(result.get("size"), int) else None,
            "sha256": _text(result.get("sha256"))}


def migration_entry(tz: TimeZone, direction: str, args: Mapping[str, Any],
                    result: Mapping[str, Any] | None, at: str | None,
                    planned: Mapping[str, str] | None = None,
                    applied: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, Any]:
    """A migration applied or reverted, with both checksums when recorded. A revert's
    checksums come from its own event when it carries them, else from the migration's apply
    in the same history, else from the plan (statekeeper's checksum only)."""
    r = result or {}
    mid = str(args.get("migration") or r.get("migration") or "")
    before = (applied or {}).get(mid, {})

    def pick(key: str) -> str | None:
        for src in (r, args, before):
            v = src.get(key)
            if isinstance(v, str):
                return v
        return None

    checksum = pick("checksum") or (planned or {}).get(mid)
    return {"migration": mid, "direction": direction, "checksum": checksum,
            "file_sha256": pick("file_sha256"), "at": tz.iso(at),
            "execution_ms": r.get("execution_ms") if isinstance(r.get("execution_ms"), int)
            else None}


def migrations_of(tz: TimeZone, steps: Iterable[Any],
                  planned: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
    """Each succeeded migrate (applied) and revert (reverted) step, in order. ``steps`` are
    StepRecords or anything with the same attributes."""
    out: list[dict[str, Any]] = []
    seen: dict[str, Mapping[str, Any]] = {}
    for s in steps:
        if s.status != "succeeded" or s.kind not in ("migrate", "revert", "baseline"):
            continue
        if s.kind == "baseline":
            # the files it recorded as applied, each with the checksums the step announced
            out.extend(migration_entry(tz, "baselined", m, None, s.ended_at)
                       for m in s.args.get("migrations") or [] if isinstance(m, Mapping))
            continue
        if s.kind == "migrate":
            e = migration_entry(tz, "applied", s.args, s.result, s.ended_at, planned)
            seen[e["migration"]] = {k: v for k, v in e.items() if v is not None}
        else:
            e = migration_entry(tz, "reverted", s.args, s.result, s.ended_at, planned, seen)
        out.append(e)
    return out


# -- rehearsals ------------------------------------------------------------------------------
REHEARSE_OP = "rehearse"
#: the rehearsal's passes (op steps) and what the report calls them
PASSES = {"forward": "forward", "rollback": "rollback", "forward again": "forward again"}
# rehearse.py names the lossy down parts in the failure's text only (today): "(down parts of
# 002_orders, 003_x)"
_LOSSY = re.compile(r"\(down parts of ([^)]*)\)")
#: the health check kinds a rehearsal runs on its clone; the others probe the live application
REHEARSED_CHECK_KINDS = ("sql",)
#: the backup methods a clone is backed up with; another method is not rehearsed
REHEARSED_BACKUPS = ("pg_dump", "sqlite")


def _int(v: Any) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) else None


def _lossy_of(op: Operation, compare: Mapping[str, Any]) -> list[str]:
    recorded = compare.get("lossy")
    if isinstance(recorded, list):
        return [str(x) for x in recorded]
    m = _LOSSY.search(op.error or "")
    return [x.strip() for x in m.group(1).split(",") if x.strip()] if m else []


def rehearsal_of(tz: TimeZone, op: Operation) -> dict[str, Any]:
    """What a ``rehearse`` operation recorded, as the report shows it (its own entry's
    ``rehearsal`` member, and each rehearsal of a run's section): passed, the clone (method
    and why), each pass with its steps' durations on the clone's real data, the comparison
    after the rollback, the lossy down parts. ``seqs``: the ledger seqs it was read from."""
    clone = next((s for s in op.steps if s.kind == "clone"), None)
    cr = (clone.result or {}) if clone is not None else {}
    passes: list[dict[str, Any]] = []
    for s in op.steps:
        if s.name not in PASSES:
            continue
        r = s.result or {}
        steps = [{"name": _text(x.get("name")), "outcome": _text(x.get("status")),
                  "ms": _int(x.get("ms")), "error": _text(x.get("error"))}
                 for x in r.get("steps") or [] if isinstance(x, Mapping)]
        passes.append({"pass": PASSES[s.name], "outcome": s.status,
                       "state": _text(r.get("state")), "run_id": _text(r.get("run_id")),
                       "ms": _int(r.get("ms")), "failure": _text(r.get("failure")) or s.error,
                       "steps": steps})
    cmp_step = next((s for s in op.steps if s.kind == "compare" and s.status == "succeeded"),
                    None)
    cmp = (cmp_step.result or {}) if cmp_step is not None else {}
    compare = None if cmp_step is None else {
        "equal": bool(cmp.get("equal")),
        "differences": [str(x) for x in cmp.get("differences") or cmp.get("diff") or []]}
    recorded_skips = next((r.get("not_rehearsed") for r in [op.args, *(
        s.result or {} for s in op.steps)] if isinstance(r.get("not_rehearsed"), list)), None)
    return {
        "id": op.op_id,
        "outcome": op.status,
        "passed": op.status == "succeeded",
        "from_version": _text(op.args.get("from")),
        "to_version": _text(op.args.get("to")),
        "plan_digest": _text(op.args.get("plan_digest")),
        "started_at": tz.iso(op.created_at),
        "ended_at": tz.iso(op.ended_at),
        "duration_ms": (op.duration_ms if op.duration_ms is not None
                        else between_ms(op.created_at, op.ended_at)),
        "who": who(op.actor),
        "clone": None if clone is None else {
            "name": _text(cr.get("clone")), "method": _text(cr.get("method")),
            "why": _text(cr.get("why")), "fingerprint_digest": _text(
                cr.get("fingerprint_digest")), "outcome": clone.status, "error": clone.error},
        "clone_method_asked": _text(op.args.get("clone_method")),
        "kept": bool(op.args.get("keep")),
        "passes": passes,
        "compare": compare,
        "lossy": _lossy_of(op, cmp),
        "not_rehearsed": None if recorded_skips is None else [str(x) for x in recorded_skips],
        # as recorded: one text (its problems joined by "; ", which a difference may hold too)
        "problems": [op.error] if op.error else [],
        "seqs": [op.first_seq, op.last_seq],
    }


def _not_rehearsed(run: Run) -> tuple[list[str], list[str]]:
    """What a rehearsal of this run's plan could not run, from the run's own record (the plan
    and its health checks' kinds): a rehearsal of the same plan digest skipped exactly these.
    Second: the checks whose kind the run never recorded (it ended before its checks)."""
    out: list[str] = []
    kinds: dict[str, str] = {}
    for s in run.steps:
        if s.kind in ("health", "recheck") and s.status == "succeeded":
            for c in (s.result or {}).get("checks") or []:
                if isinstance(c, Mapping) and isinstance(c.get("name"), str):
                    kinds.setdefault(c["name"], str(c.get("kind")))
    unknown: list[str] = []
    for name in run.plan.health_checks:
        kind = kinds.get(name)
        if kind is None:
            unknown.append(name)
        elif kind not in REHEARSED_CHECK_KINDS:
            out.append(f"health check {name!r} ({kind}): it would probe the live application")
    if run.plan.release is not None:
        out.append("the release side ([deploy]): it switches the host's live release and runs "
                   "its commands")
    b = run.plan.backup
    if b.enabled and b.method is not None and b.method not in REHEARSED_BACKUPS:
        out.append(f"the {b.method} backup: a clone is backed up with pg_dump or sqlite")
    return out, unknown


def _timings(run: Run, forward: Mapping[str, Any] | None,
             run_steps: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The rehearsal's forward pass step by step against the run's own steps (the first
    attempt's forward phase: what the operator planned the downtime on), by step name; then
    the run's steps the rehearsal did not have (the release side)."""
    done: dict[str, int | None] = {}
    for s in run_steps:
        if s["attempt"] == 1 and s["name"] not in done:
            done[s["name"]] = s["duration_ms"] if s["outcome"] == "succeeded" else None
    rows = []
    seen = set()
    for s in (forward or {}).get("steps") or []:
        name = s["name"]
        seen.add(name)
        rows.append({"step": name, "rehearsed_ms": s["ms"], "run_ms": done.get(name),
                     "in_run": name in done})
    for name, ms in done.items():
        if name not in seen and not name.startswith(_ROLLBACK_STEPS):
            rows.append({"step": name, "rehearsed_ms": None, "run_ms": ms, "in_run": True})
    return rows


_ROLLBACK_STEPS = ("revert:", "restore", "compare", "recheck", "untag", "undo", "unstart",
                   "unstop", "unswitch", "unconfig")


def rehearsal_section(tz: TimeZone, run: Run, created: Mapping[str, Any],
                      preflight_digest: str | None, run_steps: Sequence[Mapping[str, Any]],
                      run_ms: int | None, rehearsals: Sequence[Operation]) -> dict[str, Any] | None:
    """The rehearsal(s) of this run's plan (same plan digest, same target, recorded before the
    run), oldest first, and which one ``start --require-rehearsal`` accepted (``required``:
    the run recorded it) or would have accepted (the latest, if it passed and cloned the
    fingerprint the run's preflight read: no drift since). None: no rehearsal of this plan
    and none required."""
    required = _text(created.get("rehearsal"))
    shown = [rehearsal_of(tz, op) for op in rehearsals]
    if not shown and required is None:
        return None
    by_id = {r["id"]: r for r in shown}
    verdict: str
    if required is not None:
        accepted = required if required in by_id else None
        verdict = ("required and accepted by start --require-rehearsal" if accepted else
                   f"required: start --require-rehearsal accepted {required}, which is not in "
                   "the trusted part of the ledger")
        accepted_entry = None if accepted is None else by_id[accepted]
    else:
        last = shown[-1]
        cloned = (last["clone"] or {}).get("fingerprint_digest")
        if not last["passed"]:
            accepted_entry, verdict = None, (
                f"not required; --require-rehearsal would have refused: the last rehearsal, "
                f"{last['id']}, did not pass")
        elif preflight_digest is not None and cloned != preflight_digest:
            accepted_entry, verdict = None, (
                f"not required; --require-rehearsal would have refused: the target changed "
                f"since rehearsal {last['id']} cloned it")
        else:
            accepted_entry, verdict = last, (
                f"not required; --require-rehearsal would have accepted {last['id']}")
    basis = accepted_entry or next((r for r in reversed(shown) if r["passed"]),
                                   shown[-1] if shown else None)
    forward = None
    if basis is not None:
        forward = next((p for p in basis["passes"] if p["pass"] == "forward"), None)
    skipped, unknown = _not_rehearsed(run)
    recorded_skips = basis["not_rehearsed"] if basis is not None else None
    cloned = ((basis or {}).get("clone") or {}).get("fingerprint_digest")
    return {
        "required": required is not None,
        "accepted": accepted_entry["id"] if accepted_entry else None,
        "verdict": verdict,
        "compared": basis["id"] if basis is not None else None,
        "fingerprint_cloned": cloned,
        "fingerprint_at_start": preflight_digest,
        "drift": None if cloned is None or preflight_digest is None
        else cloned != preflight_digest,
        "rehearsed_ms": forward["ms"] if forward else None,
        "run_ms": run_ms,
        "timings": _timings(run, forward, run_steps),
        "not_rehearsed": recorded_skips if recorded_skips is not None else skipped,
        "checks_kind_not_recorded": unknown,
        "rehearsals": shown,
    }


# -- runs ------------------------------------------------------------------------------------
def _sessions(tz: TimeZone, events: Sequence[RunEvent]) -> list[dict[str, Any]]:
    """Who acted on the run, session by session: ``start`` (run.created) or ``resume``
    (run.resumed), its lease, and how it ended: released, released with an error, interrupted (a
    signal stopped it at a safe point), or not at
    all before the next session began (the process died: a crash)."""
    out: list[dict[str, Any]] = []
    cur: dict[str, Any] | None = None
    for ev in events:
        p = ev.payload
        if ev.type in ("run.created", "run.resumed"):
            if cur is not None and cur["ended"] == "open":
                cur["ended"] = "crashed"
            cur = {"command": "start" if ev.type == "run.created" else "resume",
                   "mode": _text(p.get("mode")), "at": tz.iso(ev.at), "who": who(ev.actor),
                   "reason": _text(p.get("reason")), "ticket": _text(p.get("ticket")),
                   "took_over": None, "ended": "open", "ended_at": None, "error": None}
            out.append(cur)
        elif cur is None:
            continue
        elif ev.type == "lease.taken_over":
            cur["took_over"] = {"from_host": _text(p.get("from_host")),
                                "from_pid": p.get("from_pid"),
                                "reason": _text(p.get("reason"))}
        elif ev.type == "run.interrupted":
            cur["ended"] = "interrupted"  # stopped at a safe point by a signal
        elif ev.type == "lease.released":
            if cur["ended"] != "interrupted":
                cur["ended"] = "released with an error" if p.get("error") else "released"
            cur["ended_at"] = tz.iso(ev.at)
            cur["error"] = _text(p.get("error"))
    return out


def _downtime(tz: TimeZone, run: Run) -> dict[str, Any]:
    if run.plan.release is None or run.plan.release.stop is None:
        end = run.ended_at
        return {"basis": "run", "definition": DOWNTIME_RUN,
                "ms": between_ms(run.created_at, end), "periods": [
                    {"from": tz.iso(run.created_at), "to": tz.iso(end)}],
                "still_down": False}
    periods: list[dict[str, Any]] = []
    down_since: str | None = None
    total = 0
    for s in run.steps:
        if s.kind in ("stop", "unstart") and down_since is None:
            down_since = s.started_at
        elif s.kind in ("start", "unstop") and s.status == "succeeded" and down_since:
            assert s.ended_at is not None
            periods.append({"from": tz.iso(down_since), "to": tz.iso(s.ended_at)})
            total += between_ms(down_since, s.ended_at) or 0
            down_since = None
    if down_since is not None:
        periods.append({"from": tz.iso(down_since), "to": None})
    return {"basis": "release", "definition": DOWNTIME_RELEASE, "ms": total,
            "periods": periods, "still_down": down_since is not None}


def _release(run: Run) -> dict[str, Any] | None:
    rel = run.plan.release
    if rel is None:
        return None
    switched: list[dict[str, Any]] = []
    files: list[dict[str, Any]] = []
    for s in run.steps:
        r = s.result or {}
        if s.status != "succeeded":
            continue
        if s.kind in ("switch", "unswitch"):
            switched.append({"step": s.name, "from": _text(r.get("from")),
                             "to": _text(r.get("to"))})
        if s.kind in ("snapshot", "config"):
            for f in r.get("files") or []:
                if isinstance(f, Mapping):
                    # path and keyed fingerprint only: the content never reaches the ledger
                    files.append({"step": s.name, "path": _text(f.get("path")),
                                  "exists": bool(f.get("exists")),
                                  "size": f.get("size") if isinstance(f.get("size"), int)
                                  else None, "hmac": _text(f.get("hmac"))})
    return {"link": rel.link, "from": rel.from_target, "to": rel.to_target,
            "switches": switched, "config_files": files}


def _health(run: Run) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for s in run.steps:
        if s.kind not in ("health", "recheck"):
            continue
        if s.status == "succeeded":
            for c in (s.result or {}).get("checks") or []:
                if isinstance(c, Mapping):
                    out.append({"step": s.name, "attempt": s.attempt, "name": _text(c.get("name")),
                                "kind": _text(c.get("kind")), "ok": bool(c.get("ok")),
                                "attempts": c.get("attempts")
                                if isinstance(c.get("attempts"), int) else None,
                                "message": _text(c.get("reason"))})
        elif s.status == "failed":
            out.append({"step": s.name, "attempt": s.attempt, "name": None, "kind": None,
                        "ok": False, "attempts": None, "message": s.error})
    return out


def _rollback(run: Run) -> dict[str, Any] | None:
    if not any(t["to"] == "rolling_back" for t in run.transitions):
        return None
    pre = run.succeeded("preflight")
    before = (pre.result or {}).get("fingerprint_digest") if pre else None
    last = next((s for s in reversed(run.steps) if s.kind == "compare"
                 and s.status == "succeeded"), None)
    r = (last.result or {}) if last else {}
    trig = next(t for t in reversed(run.transitions) if t["to"] == "rolling_back")
    if not r:
        verdict = "not compared"
    elif r.get("equal"):
        verdict = "data identical" if r.get("scope", "full") == "full" else "schema identical"
    else:
        verdict = "differs"
    return {"mode": run.rollback_mode, "trigger": trig["trigger"], "reason": trig.get("reason"),
            "requested": run.rollback_requested,
            "fingerprint_before": _text(before), "fingerprint_after": _text(r.get("digest")),
            "scope": _text(r.get("scope")), "verdict": verdict,
            "differences": [str(x) for x in r.get("diff") or []],
            "written_before_backup": [str(x) for x in r.get("written_before_backup") or []]}


def run_entry(tz: TimeZone, run: Run, events: Sequence[RunEvent],
              trusted_through: int | None = None,
              rehearsals: Sequence[Operation] = ()) -> dict[str, Any]:
    """A run's entry. ``trusted_through``: verification failed after this seq, and the run's
    later events (if any) were left out (``truncated``). ``rehearsals``: the rehearse
    operations of this plan digest on this target recorded before the run, oldest first."""
    plan = run.plan
    first = events[0] if events else None
    created = first.payload if first else {}
    state = run.state
    steps = [_from_record(tz, s) for s in run.steps]
    backup_step = run.succeeded("backup")
    pre = run.succeeded("preflight")
    errors = [{"step": s.name, "at": tz.iso(s.ended_at), "message": s.error}
              for s in run.steps if s.status == "failed" and s.error]
    if run.failure and not any(str(e["message"]) in run.failure for e in errors):
        errors.append({"step": None, "at": tz.iso(run.last_at), "message": run.failure})
    sessions = _sessions(tz, events)
    crashes = [{"at": s["at"], "what": f"the {s['command']} session ({_host(s['who'])}) ended "
                "without releasing its lease"} for s in sessions if s["ended"] == "crashed"]
    crashes += [{"at": st["ended_at"], "what": f"step {st['name']} was in doubt after an "
                 "interruption and settled by its probe"} for st in steps if st["recovered"]]
    return {
        "type": "run",
        "id": run.run_id,
        "readable": True,
        "state": state,
        "outcome": state if state in TERMINAL else "in_flight",
        "application": plan.application or None,
        "from_version": plan.from_version,
        "to_version": plan.to_version,
        "target": plan.target or None,
        "who": who(first.actor if first else None),
        "reason": _text(created.get("reason")),
        "ticket": _text(created.get("ticket")),
        "started_at": tz.iso(run.created_at),
        "ended_at": tz.iso(run.ended_at),
        "duration_ms": between_ms(run.created_at, run.ended_at),
        "last_event_at": tz.iso(run.last_at),
        "steps": steps,
        "transitions": [{"at": tz.iso(t["at"]), "trigger": t["trigger"], "from": t["from"],
                         "to": t["to"], "reason": t.get("reason")} for t in run.transitions],
        "backup": backup_of(backup_step.result if backup_step else None),
        "migrations": migrations_of(tz, run.steps, {m.id: m.checksum for m in plan.migrations}),
        "release": _release(run),
        "health": _health(run),
        "errors": errors,
        "sessions": sessions,
        "resumes": run.resumes,
        "takeovers": run.takeovers,
        "crashes": crashes,
        "rollback": _rollback(run),
        "downtime": _downtime(tz, run),
        "rehearsal": rehearsal_section(
            tz, run, created, _text(((pre.result or {}) if pre else {}).get(
                "fingerprint_digest")), steps, between_ms(run.created_at, run.ended_at),
            rehearsals),
        "truncated": trusted_through is not None,
        "problem": None,
    }


# -- operations ------------------------------------------------------------------------------
def op_entry(tz: TimeZone, op: Operation) -> dict[str, Any]:
    """An operation's entry (``ops/<id>``, replayed by :mod:`statekeeper.opreplay`). Its
    steps are never settled after an interruption (an operation has no resume): a kill
    leaves it ``interrupted``, its last step in doubt."""
    errors = [{"step": s.name, "at": tz.iso(s.ended_at), "message": s.error}
              for s in op.steps if s.status == "failed" and s.error]
    if op.error is not None and not any(e["message"] == op.error for e in errors):
        errors.append({"step": None, "at": tz.iso(op.ended_at), "message": op.error})
    restored = op.restore
    restore = None if restored is None else {
        "backup_id": _text(restored.get("backup_id")),
        "fingerprint_before": _text(restored.get("fingerprint_before")),
        "fingerprint_after": _text(restored.get("fingerprint_after")),
        "undone": [str(x) for x in restored.get("undone") or []]}
    return {
        "type": "operation",
        "id": op.op_id,
        "readable": True,
        "op": op.op,
        "state": op.status,
        "outcome": op.status,
        "target": op.target,
        "args": dict(op.args),
        "who": who(op.actor),
        "reason": op.reason,
        "ticket": op.ticket,
        "confirmed": op.confirmed,
        "version": op.version,
        "started_at": tz.iso(op.created_at),
        "ended_at": tz.iso(op.ended_at),
        "duration_ms": (op.duration_ms if op.duration_ms is not None
                        else between_ms(op.created_at, op.ended_at)),
        "steps": [step_entry(tz, s.name, s.kind, s.attempt, s.status, s.started_at, s.ended_at,
                             s.duration_ms, s.args, s.result, s.error, False, False)
                  for s in op.steps],
        "backup": backup_of(op.backup),
        "restore": restore,
        "migrations": migrations_of(tz, op.steps),
        "rehearsal": rehearsal_of(tz, op) if op.op == REHEARSE_OP else None,
        "errors": errors,
        "problem": None,
    }


def _host(w: Mapping[str, Any]) -> str:
    return f"{w.get('user') or '?'}@{w.get('host') or '?'}"


def unreadable_entry(tz: TimeZone, kind: str, ident: str, reason: str, seq: int,
                     created_at: str | None, actor: Mapping[str, Any] | None) -> dict[str, Any]:
    """A run or operation whose events cannot be replayed: shown, never hidden."""
    return {"type": kind, "id": ident, "readable": False, "state": "unreadable",
            "outcome": "unreadable", "started_at": tz.iso(created_at), "who": who(actor),
            "problem": {"seq": seq, "reason": reason}}


# -- summary ---------------------------------------------------------------------------------
class Summary:
    """Counts accumulated entry by entry (so the CSV and JSON writers can stream)."""

    def __init__(self) -> None:
        self.runs = dict.fromkeys(RUN_STATES, 0)
        self.ops = dict.fromkeys(OP_OUTCOMES, 0)
        self.rollbacks: list[dict[str, Any]] = []
        self.downtime_ms = 0
        self.still_down: list[str] = []
        self.first: str | None = None
        self.last: str | None = None

    def add(self, entry: Mapping[str, Any]) -> None:
        at = entry.get("started_at")
        if at:
            self.first = at if self.first is None else min(self.first, at)
            self.last = at if self.last is None else max(self.last, at)
        if entry["type"] == "operation":
            self.ops[entry["outcome"]] += 1
            return
        self.runs[entry["outcome"]] += 1
        if not entry["readable"]:
            return
        rb = entry["rollback"]
        if rb is not None:
            self.rollbacks.append({"run": entry["id"], "state": entry["state"],
                                   "mode": rb["mode"], "reason": rb["reason"],
                                   "verdict": rb["verdict"]})
        dt = entry["downtime"]
        self.downtime_ms += dt["ms"] or 0
        if dt["still_down"]:
            self.still_down.append(entry["id"])

    def to_dict(self) -> dict[str, Any]:
        return {"runs": dict(self.runs), "runs_total": sum(self.runs.values()),
                "operations": dict(self.ops), "operations_total": sum(self.ops.values()),
                "rollbacks": list(self.rollbacks), "downtime_ms": self.downtime_ms,
                "downtime_definition": {"release": DOWNTIME_RELEASE, "run": DOWNTIME_RUN},
                "still_down": list(self.still_down),
                "first_started_at": self.first, "last_started_at": self.last}


# -- integrity -------------------------------------------------------------------------------
def integrity_entry(*, ok: bool, events: int, head_seq: int, bad_seq: int | None = None,
                    reason: str | None = None, detail: str | None = None) -> dict[str, Any]:
    """The verification result the report opens with. On failure only the events before the
    first bad seq are trusted, and only those are in the report."""
    trusted = head_seq if ok else max((bad_seq or 1) - 1, 0)
    if ok:
        message = (f"VERIFIED: every hash, link and seal of the ledger checks, {events} events "
                   f"through seq {head_seq}.")
    else:
        where = f"seq {bad_seq}" if bad_seq is not None else "the ledger"
        message = (f"INTEGRITY VIOLATION: the ledger failed verification at {where}: {reason}"
                   f"{': ' + detail if detail else ''}. Only events before seq {trusted + 1} "
                   "are trusted, and only those are in this report.")
    return {"ok": ok, "message": message, "events_verified": events,
            "first_bad_seq": bad_seq, "reason": reason, "detail": detail,
            "trusted_through_seq": trusted}


def reverify_steps(ledger_id: str | None, checkpoint_file: str | None) -> list[str]:
    cp = checkpoint_file or "CHECKPOINT"
    return [
        "statekeeper ledger export --out ledger.jsonl   (on the ledger's host)",
        f"statekeeper ledger verify-export ledger.jsonl --against {cp} --trusted-key KEY.pub",
        "The export carries the public keys and a checkpoint; verify-export needs no database "
        "and no private key. docs/compliance.md describes the algorithm step by step.",
        f"ledger id: {ledger_id or 'unknown'}",
    ]
