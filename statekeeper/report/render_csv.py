"""CSV: one row per step, the run's (or operation's) columns repeated on each; a run or
operation with no step has one row with the step columns empty. Written as it is read.

Cells are data from the field: one that a spreadsheet would run as a formula (it begins with
``=``, ``+``, ``-``, ``@``, a tab or a carriage return) is prefixed with ``'`` (OWASP's CSV
injection advice), so it is shown, never evaluated.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping
from typing import IO, Any

from .source import Report

ENTRY_COLUMNS = ("type", "id", "state", "op", "from_version", "to_version", "target", "user",
                 "host", "reason", "ticket", "started_at", "ended_at", "duration_ms",
                 "backup_id", "backup_sha256", "integrity_ok", "trusted_through_seq")
STEP_COLUMNS = ("step", "kind", "attempt", "step_outcome", "step_started_at", "step_ended_at",
                "step_duration_ms", "step_detail", "step_error", "recovered")
#: a run's rehearsal (the one --require-rehearsal accepted, else the latest that passed,
#: else the latest) or, on a rehearse operation's rows, the rehearsal itself; last, so that
#: the columns before keep their places
REHEARSAL_COLUMNS = ("rehearsal_id", "rehearsal_required", "rehearsal_accepted",
                     "rehearsal_passed", "rehearsal_started_at", "rehearsal_clone_method",
                     "rehearsal_lossy", "rehearsal_not_rehearsed", "rehearsal_verdict",
                     "rehearsal_ms", "step_rehearsed_ms")
COLUMNS = ENTRY_COLUMNS + STEP_COLUMNS + REHEARSAL_COLUMNS

_FORMULA = ("=", "+", "-", "@", "\t", "\r")


def cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    text = str(value)
    # a negative number stays a number; anything else that looks like a formula is text
    if text.startswith(_FORMULA) and not (
        text.startswith("-") and text[1:].replace(".", "", 1).isdigit()
    ):
        return "'" + text
    return text


def _entry_cells(e: Mapping[str, Any], integrity: Mapping[str, Any]) -> list[str]:
    w = e.get("who") or {}
    b = e.get("backup") or {}
    problem = e.get("problem")
    values = {
        "type": e["type"], "id": e["id"], "state": e["state"], "op": e.get("op"),
        "from_version": e.get("from_version"), "to_version": e.get("to_version"),
        "target": e.get("target"), "user": w.get("user"), "host": w.get("host"),
        "reason": e.get("reason") if problem is None else problem["reason"],
        "ticket": e.get("ticket"), "started_at": e.get("started_at"),
        "ended_at": e.get("ended_at"), "duration_ms": e.get("duration_ms"),
        "backup_id": b.get("backup_id"), "backup_sha256": b.get("sha256"),
        "integrity_ok": integrity["ok"], "trusted_through_seq": integrity["trusted_through_seq"],
    }
    return [cell(values[c]) for c in ENTRY_COLUMNS]


def _rehearsal_cells(e: Mapping[str, Any]) -> tuple[list[str], dict[str, Any]]:
    """The entry's rehearsal columns but the last, and each step's rehearsed duration."""
    rh = e.get("rehearsal") if e.get("readable") else None
    if not rh:
        return [""] * (len(REHEARSAL_COLUMNS) - 1), {}
    if e["type"] == "run":
        r = next((x for x in rh["rehearsals"] if x["id"] == rh["compared"]), None) or {}
        values = {"rehearsal_required": rh["required"], "rehearsal_accepted": rh["accepted"],
                  "rehearsal_not_rehearsed": "; ".join(rh["not_rehearsed"]),
                  "rehearsal_verdict": rh["verdict"], "rehearsal_ms": rh["rehearsed_ms"]}
        per_step = {t["step"]: t["rehearsed_ms"] for t in rh["timings"]}
    else:
        r = rh
        forward: Mapping[str, Any] = next(
            (p for p in r["passes"] if p["pass"] == "forward"), {})
        values = {"rehearsal_not_rehearsed": "; ".join(r["not_rehearsed"] or []),
                  "rehearsal_ms": forward.get("ms")}
        per_step = {}
    values.update({"rehearsal_id": r.get("id"), "rehearsal_passed": r.get("passed"),
                   "rehearsal_started_at": r.get("started_at"),
                   "rehearsal_clone_method": (r.get("clone") or {}).get("method"),
                   "rehearsal_lossy": ", ".join(r.get("lossy") or [])})
    return [cell(values.get(c)) for c in REHEARSAL_COLUMNS[:-1]], per_step


def write_csv(report: Report, out: IO[str]) -> None:
    w = csv.writer(out, lineterminator="\n")
    w.writerow(COLUMNS)
    integrity = report.header["integrity"]
    if not integrity["ok"]:
        # the warning is the first data row too: a CSV read without its header still says it
        row = dict.fromkeys(COLUMNS, "")
        row.update(type="integrity", state="violation", reason=cell(integrity["message"]),
                   integrity_ok="false",
                   trusted_through_seq=cell(integrity["trusted_through_seq"]))
        w.writerow(row.values())
    for e in report.entries():
        head = _entry_cells(e, integrity)
        tail, per_step = _rehearsal_cells(e)
        steps = e.get("steps") or []
        if not steps:
            w.writerow(head + [""] * len(STEP_COLUMNS) + tail + [""])
        for s in steps:
            rehearsed = per_step.get(s["name"]) if s["attempt"] == 1 else None
            w.writerow(head + [cell(s[k]) for k in ("name", "kind", "attempt", "outcome",
                                                      "started_at", "ended_at", "duration_ms",
                                                      "detail", "error", "recovered")]
                       + tail + [cell(rehearsed)])
