"""JSON: the whole model, written as it is read (one entry at a time), deterministic.

The document is one object in this key order: ``schema_version``, ``generated_at``, ``tool``,
``timezone``, ``scope``, ``integrity``, ``entries`` (runs and operations in the order they
were created), ``summary``, ``ledger``. docs/report.schema.json is its JSON Schema.
"""

from __future__ import annotations

import json
from typing import IO, Any

from .source import Report


def _dump(value: Any) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def write_json(report: Report, out: IO[str]) -> None:
    out.write("{")
    for key, value in report.header.items():
        out.write(f"{_dump(key)}:{_dump(value)},\n")
    out.write('"entries":[')
    for i, entry in enumerate(report.entries()):
        out.write(("\n" if i == 0 else ",\n") + _dump(entry))
    out.write("],\n")
    out.write(f'"summary":{_dump(report.summary.to_dict())},\n')
    out.write(f'"ledger":{_dump(report.footer)}}}\n')
