"""PDF (fpdf2): the HTML's content, paginated, with the integrity result in every page's
header. No browser at run time.

Font: DejaVu Sans from Debian's ``fonts-dejavu-core`` (embedded, so any Unicode the ledger
holds is shown) when installed; otherwise the PDF core font Helvetica, which holds latin-1
only: other characters become ``?`` (the JSON and HTML reports carry them exactly).
"""

from __future__ import annotations

from pathlib import Path
from typing import IO, Any

from .source import Report
from .text import duration, shown, when, who
from .text import size as size_shown

FONT_DIRS = (Path("/usr/share/fonts/truetype/dejavu"),)


def _font_files() -> tuple[Path, Path, Path] | None:
    for d in FONT_DIRS:
        files = (d / "DejaVuSans.ttf", d / "DejaVuSans-Bold.ttf", d / "DejaVuSansMono.ttf")
        if all(f.is_file() for f in files):
            return files
    return None


def write_pdf(report: Report, out: IO[bytes], font_files: Any = "auto") -> None:
    from fpdf import FPDF
    from fpdf.enums import XPos, YPos

    entries = list(report.entries())
    summary = report.summary.to_dict()
    integrity = report.header["integrity"]
    fonts = _font_files() if font_files == "auto" else font_files

    class Doc(FPDF):
        def header(self) -> None:
            self.set_font(sans, "B", 8)
            if integrity["ok"]:
                self.set_text_color(27, 110, 46)
                line = "Integrity: VERIFIED (" + integrity["message"].split(": ", 1)[1]
                line = line.rstrip(".") + ")"
            else:
                self.set_text_color(163, 0, 0)
                line = (f"INTEGRITY VIOLATION at seq {integrity['first_bad_seq']}: "
                        f"{integrity['reason']} - only events before seq "
                        f"{integrity['trusted_through_seq'] + 1} are trusted")
            self.multi_cell(0, 4, clean(line), new_x=XPos.LMARGIN, new_y=YPos.NEXT)
            self.set_text_color(0, 0, 0)
            self.set_draw_color(120, 120, 120)
            self.line(self.l_margin, self.get_y() + 1, self.w - self.r_margin, self.get_y() + 1)
            self.ln(3)

        def footer(self) -> None:
            self.set_y(-12)
            self.set_font(sans, "", 7)
            self.cell(0, 5, clean(f"statekeeper audit report - generated "
                                  f"{when(report.header['generated_at'])} - page "
                                  f"{self.page_no()}/{{nb}}"), align="C")

    pdf = Doc(orientation="P", unit="mm", format="A4")
    if fonts is not None:
        pdf.add_font("DejaVu", "", str(fonts[0]))
        pdf.add_font("DejaVu", "B", str(fonts[1]))
        pdf.add_font("DejaVuMono", "", str(fonts[2]))
        sans, mono = "DejaVu", "DejaVuMono"

        def clean(s: str) -> str:
            return s
    else:
        sans, mono = "Helvetica", "Courier"

        def clean(s: str) -> str:
            return s.encode("latin-1", "replace").decode("latin-1")

    pdf.set_title("statekeeper audit report")
    pdf.set_creator(str(report.header.get("tool") or "statekeeper"))
    pdf.set_auto_page_break(True, margin=15)
    pdf.alias_nb_pages()
    pdf.add_page()

    def para(s: str, size: float = 9, style: str = "", font: str | None = None,
             h: float = 4.6) -> None:
        pdf.set_font(font or sans, style, size)
        pdf.multi_cell(0, h, clean(s), new_x=XPos.LMARGIN, new_y=YPos.NEXT)

    def heading(s: str, size: float = 13) -> None:
        pdf.ln(2)
        para(s, size, "B", h=size * 0.55)
        pdf.ln(1)

    def kv(rows: list[tuple[str, str]]) -> None:
        for k, v in rows:
            pdf.set_font(sans, "B", 8.5)
            pdf.cell(42, 4.6, clean(k))
            pdf.set_font(sans, "", 8.5)
            pdf.multi_cell(0, 4.6, clean(v), new_x=XPos.LMARGIN, new_y=YPos.NEXT)

    def table(head: tuple[str, ...], rows: list[tuple[str, ...]],
              widths: tuple[int, ...]) -> None:
        pdf.set_font(sans, "", 7.5)
        with pdf.table(col_widths=widths, text_align="LEFT", line_height=3.8,
                       first_row_as_headings=True) as t:
            for r in [head, *rows]:
                row = t.row()
                for c in r:
                    row.cell(clean(c))
        pdf.ln(1)

    def rehearsal(r: dict[str, Any]) -> None:
        c = r["clone"] or {}
        cmp = r["compare"]
        kv([("Rehearsal", f"{r['id']}: {'passed' if r['passed'] else 'did not pass'} "
             f"({r['outcome']}), {shown(r['from_version'])} -> {shown(r['to_version'])}"),
            ("When", f"{when(r['started_at'])} to {when(r['ended_at'])} "
             f"({duration(r['duration_ms'])}), by {who(r['who'])}"),
            ("Clone", f"{shown(c.get('method'))}: {shown(c.get('why'))}"),
            ("Fingerprint cloned", shown(c.get("fingerprint_digest"))),
            ("After the rollback", "not compared" if cmp is None else (
                "data identical to the clone as made" if cmp["equal"] else
                "differs: " + "; ".join(cmp["differences"]))),
            ("Lossy down parts", ", ".join(r["lossy"]) or "none found")]
           + ([("Problems", "; ".join(r["problems"]))] if r["problems"] else [])
           + [("Ledger seqs", f"ops/{r['id']}: seq {r['seqs'][0]} to {r['seqs'][1]}")])
        if r["passes"]:
            table(("Pass", "Outcome", "Took", "Steps on the clone (duration)"),
                  [(ps["pass"], (ps["state"] or ps["outcome"]).replace("_", " "),
                    duration(ps["ms"]), "; ".join(
                        f"{st['name']} {duration(st['ms'])}"
                        + ("" if st["outcome"] == "succeeded" else f" {st['outcome']}")
                        for st in ps["steps"]) + (f" FAILURE: {ps['failure']}"
                                                  if ps["failure"] else ""))
                   for ps in r["passes"]], (24, 22, 16, 128))

    heading("statekeeper audit report", 16)
    scope = report.header["scope"]
    para(f"Generated {when(report.header['generated_at'])} by {report.header['tool']}; "
         f"times in {report.header['timezone']} with their offset from UTC. Scope: "
         + (f"run or operation {scope['run']}" if scope["run"] else "all runs and operations")
         + (f", created from {scope['since']}" if scope["since"] else "")
         + (f", until {scope['until']} (exclusive)" if scope["until"] else "") + ".")
    pdf.ln(2)
    if integrity["ok"]:
        pdf.set_text_color(27, 110, 46)
        para("Integrity: " + integrity["message"], 10, "B")
    else:
        pdf.set_text_color(163, 0, 0)
        para("WARNING: THIS LEDGER FAILED VERIFICATION.", 14, "B", h=7)
        para(integrity["message"], 10, "B")
    pdf.set_text_color(0, 0, 0)

    heading("Summary")
    para("Runs: " + ", ".join(f"{k.replace('_', ' ')} {n}" for k, n in summary["runs"].items())
         + f" (total {summary['runs_total']})")
    para("Operations: " + ", ".join(f"{k} {n}" for k, n in summary["operations"].items())
         + f" (total {summary['operations_total']})")
    para(f"Time the application was down: {duration(summary['downtime_ms'])}. "
         f"When statekeeper stops the application, "
         f"{summary['downtime_definition']['release']}. Otherwise, "
         f"{summary['downtime_definition']['run']}.", 8.5)
    if summary["rollbacks"]:
        table(("Run", "Ended", "Mode", "Why", "Verdict"),
              [(r["run"], r["state"], r["mode"], shown(r["reason"]), r["verdict"])
               for r in summary["rollbacks"]], (34, 18, 16, 80, 24))

    for e in entries:
        pdf.ln(3)
        if e["type"] == "run":
            heading(f"Run {e['id']}: {e['state'].replace('_', ' ')}", 12)
        else:
            heading(f"Operation {e['id']} {e.get('op') or ''}: {e['state']}", 12)
        if not e["readable"]:
            para(f"Its events cannot be replayed: {e['problem']['reason']} "
                 f"(seq {e['problem']['seq']}).", 9, "B")
            continue
        rows = []
        if e["type"] == "run":
            rows.append(("Versions", f"{e['from_version']} -> {e['to_version']}"))
        else:
            rows.append(("Arguments", " ".join(f"{k}={v}" for k, v in sorted(e["args"].items()))
                         or "-"))
            rows.append(("Confirmed", shown(e.get("confirmed"))))
        rows += [("Target", shown(e.get("target"))), ("Who", who(e["who"])),
                 ("Reason", shown(e.get("reason"))), ("Ticket", shown(e.get("ticket"))),
                 ("Started", when(e["started_at"])), ("Ended", when(e["ended_at"])),
                 ("Duration", duration(e["duration_ms"]))]
        if e["type"] == "run":
            rows.append(("Down time", f"{duration(e['downtime']['ms'])} ("
                         + ("release side" if e["downtime"]["basis"] == "release"
                            else "not stopped by statekeeper: the run's duration") + ")"))
            rows.append(("Resumes, takeovers", f"{e['resumes']}, {e['takeovers']}"))
        if e.get("truncated"):
            rows.append(("NOT TRUSTED", "events after the first bad seq are not shown"))
        kv(rows)
        if e["steps"]:
            table(("Step", "Outcome", "Started", "Ended", "Duration", "What"),
                  [(s["name"] + (f" (#{s['attempt']})" if s["attempt"] > 1 else ""),
                    s["outcome"], when(s["started_at"]), when(s["ended_at"]),
                    duration(s["duration_ms"]),
                    s["detail"] + (f" ERROR: {s['error']}" if s["error"] else ""))
                   for s in e["steps"]], (30, 18, 34, 34, 14, 60))
        b = e.get("backup")
        if b:
            kv([("Backup", f"{b['backup_id']} ({shown(b['method'])}, {size_shown(b['size'])})"),
                ("Backup sha256", shown(b["sha256"]))])
        if e.get("migrations"):
            table(("Migration", "", "checksum", "file sha256"),
                  [(m["migration"], m["direction"], shown(m["checksum"]),
                    shown(m["file_sha256"])) for m in e["migrations"]], (40, 16, 67, 67))
        if e["type"] == "operation" and e.get("rehearsal"):
            heading("Rehearsal on a clone", 10)
            rehearsal(e["rehearsal"])
        rh = e.get("rehearsal") if e["type"] == "run" else None
        if e["type"] == "run" and not rh:
            para("Rehearsal: none of this plan on this target before this run, and none "
                 "required.", 8)
        elif rh:
            heading("Rehearsal", 10)
            drift = {True: " (changed since the rehearsal)", False: " (unchanged)"}.get(
                rh["drift"], "")
            kv([("Required", rh["verdict"]),
                ("Fingerprint", f"cloned {shown(rh['fingerprint_cloned'])}; at the run's "
                 f"preflight {shown(rh['fingerprint_at_start'])}{drift}"),
                ("Expected vs took", f"rehearsal {rh['compared']}'s forward pass "
                 f"{duration(rh['rehearsed_ms'])}; this run {duration(rh['run_ms'])}"),
                ("Not rehearsed", "; ".join(rh["not_rehearsed"]) or "nothing known")]
               + ([("Kind not recorded", ", ".join(rh["checks_kind_not_recorded"]))]
                  if rh["checks_kind_not_recorded"] else []))
            table(("Step", "On the clone", "In this run"),
                  [(t["step"], duration(t["rehearsed_ms"]) if t["rehearsed_ms"] is not None
                    else "not rehearsed", duration(t["run_ms"]) if t["in_run"] else "not run")
                   for t in rh["timings"]], (90, 50, 50))
            for i, r in enumerate(rh["rehearsals"], 1):
                para(f"Rehearsal {i} of {len(rh['rehearsals'])} of this plan"
                     + (" (the one accepted)" if r["id"] == rh["accepted"] else ""), 9, "B")
                rehearsal(r)
        rel = e.get("release")
        if rel:
            kv([("Release link", rel["link"]),
                ("Planned", f"{shown(rel['from'])} -> {rel['to']}")]
               + [(s["step"], f"{shown(s['from'])} -> {shown(s['to'])}")
                  for s in rel["switches"]]
               + [(f"config ({f['step']})", f"{f['path']}: hmac {shown(f['hmac'])}")
                  for f in rel["config_files"]])
        if e.get("health"):
            table(("Step", "Check", "Result", "Message"),
                  [(h["step"], shown(h["name"]), "passed" if h["ok"] else "failed",
                    h["message"] or "") for h in e["health"]], (25, 50, 20, 95))
        rb = e.get("rollback")
        if rb:
            kv([("Rollback: why", shown(rb["reason"])), ("Mode", rb["mode"]),
                ("Fingerprint before", shown(rb["fingerprint_before"])),
                ("Fingerprint after", shown(rb["fingerprint_after"])),
                ("Verdict", rb["verdict"] + (": " + "; ".join(rb["differences"])
                                              if rb["differences"] else ""))]
               + ([("Written before backup", "; ".join(rb["written_before_backup"]))]
                  if rb["written_before_backup"] else []))
        for s in e.get("sessions") or []:
            took = s["took_over"]
            para(f"{s['command']} at {when(s['at'])} by {who(s['who'])}"
                 + (f", took over from {took['from_host']} pid {took['from_pid']}: "
                    f"{took['reason']}" if took else "")
                 + f"; {s['ended']}" + (f": {s['error']}" if s["error"] else ""), 8)
        for c in e.get("crashes") or []:
            para(f"Crash: {when(c['at'])}: {c['what']}", 8, "B")
        for x in e.get("errors") or []:
            para(f"Error{' in ' + x['step'] if x['step'] else ''}: {x['message']}", 8)

    f = report.footer
    heading("Ledger and how to verify it")
    cp = f["verified_against"]
    kv([("Integrity", integrity["message"]), ("Ledger", f["ledger"]),
        ("Ledger id", shown(f["ledger_id"])),
        ("Head", f"seq {f['head']['seq']}, {f['head']['hash']}"),
        ("Verified against", f"{cp['file']}: seq {cp['seq']}, {cp['hash']}" if cp
         else "no outside checkpoint given"),
        ("Public keys (ids)", ", ".join(f["keys"]))])
    for i, line in enumerate(f["reverify"], 1):
        para(f"{i}. {line}", 8, font=mono)
    out.write(bytes(pdf.output()))
