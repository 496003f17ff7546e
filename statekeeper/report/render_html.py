"""HTML: one self-contained file (inline CSS; no script, font or image from outside), a
timeline per run, readable printed (``@media print``). Jinja2 with autoescaping on for every
template: payloads are data from the field, and a migration named ``<script>`` is text."""

from __future__ import annotations

from pathlib import Path
from typing import IO, Any

from .source import Report
from .text import duration, shown, size, timeline, when, who

TEMPLATES = Path(__file__).with_name("templates")


def environment() -> Any:
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES)),
        autoescape=True,  # every template, whatever its name
        undefined=jinja2.ChainableUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters.update(when=when, duration=duration, shown=shown, size=size, who=who,
                       timeline=timeline)
    return env


def write_html(report: Report, out: IO[str]) -> None:
    entries = list(report.entries())  # the summary is complete once they are read
    template = environment().get_template("report.html.j2")
    for chunk in template.generate(header=report.header, integrity=report.header["integrity"],
                                   entries=entries, summary=report.summary.to_dict(),
                                   footer=report.footer):
        out.write(chunk)
