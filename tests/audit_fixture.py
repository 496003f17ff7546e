"""A small, real ledger export for verifiers written from docs/compliance.md alone.

``make_audit_fixture(directory)`` builds a SQLite ledger through the real appender and writes,
beside it:

- ``export.jsonl``: the whole ledger (7 events): the genesis (seq 1, key A), one append of
  three events to ``upgrade/20260101-000000-aaaaaa`` (seqs 2..4, one seal whose extent is
  2..4), an operation ``ops/20260101-000100-bbbbbb`` (seq 5), a key rotation A -> B (seq 6,
  sealed by A), and a last event of the upgrade stream sealed by B (seq 7) whose payload holds
  non-ASCII text, control characters and a key above U+FFFF;
- ``stream.jsonl``: the export of the upgrade stream alone (4 events, positions 1..4);
- ``checkpoint-5.txt``: a checkpoint of the ledger at seq 5, taken before the rotation
  (``export.jsonl`` extends it: ``verify-export export.jsonl --against checkpoint-5.txt``);
- ``checkpoint-7.txt``: a checkpoint of the head (seq 7);
- ``a.pem.pub``, ``b.pem.pub``: the two public keys (PEM), for ``--trusted-key``.

Run it as ``python -m tests.audit_fixture DIR`` (from the repository root) to get the files.
Timestamps come from a fixed clock; keys and the ledger id are new on every call.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import ledger

UPGRADE = "upgrade/20260101-000000-aaaaaa"
OPS = "ops/20260101-000100-bbbbbb"


@dataclass(frozen=True)
class AuditFixture:
    directory: Path
    export: Path
    stream_export: Path
    checkpoint_5: Path
    checkpoint_7: Path
    key_a: Path  # public keys (PEM)
    key_b: Path
    key_id_a: str
    key_id_b: str


def make_audit_fixture(directory: Path) -> AuditFixture:
    directory.mkdir(parents=True, exist_ok=True)
    a = ledger.generate_key_file(directory / "a.pem")
    b = ledger.generate_key_file(directory / "b.pem")
    t = [datetime(2026, 1, 1, tzinfo=UTC)]

    def clock() -> datetime:
        t[0] += timedelta(seconds=1, microseconds=250)
        return t[0]

    E = ledger.NewEvent
    with ledger.Ledger(f"sqlite:///{directory / 'ledger.db'}", signer=a, clock=clock,
                       tool="statekeeper/fixture") as lg:
        lg.append(UPGRADE, [
            E("run.created", {"run_id": UPGRADE.split("/")[1], "from_version": "v1",
                              "to_version": "v2", "migrations": []}),
            E("state.changed", {"trigger": "begin", "from": "planned", "to": "preflight"}),
            E("step.started", {"step": "preflight", "kind": "preflight"}),
        ], expected_position=0)
        lg.append(OPS, E("op.created", {"op_id": OPS.split("/")[1], "op": "migrate.tag",
                                        "target": None, "args": {"tag": "v1"}}),
                  expected_position=0)
        (directory / "checkpoint-5.txt").write_text(lg.checkpoint(), encoding="utf-8")
        lg.rotate_key(b)
        lg.append(UPGRADE, E("step.failed", {
            "step": "preflight", "kind": "preflight", "duration_ms": 12,
            "error": "größe \"quoted\" \\ tab\tnewline\n\x01 \u2028 \U0001f600",
            "\U0001f600": True, "\ufb33": None, "n": -9007199254740991,
        }), expected_position=3)
        (directory / "checkpoint-7.txt").write_text(lg.checkpoint(), encoding="utf-8")
        with (directory / "export.jsonl").open("w", encoding="utf-8") as f:
            ledger.export(lg, f)
        with (directory / "stream.jsonl").open("w", encoding="utf-8") as f:
            ledger.export(lg, f, stream=UPGRADE)
    return AuditFixture(
        directory, directory / "export.jsonl", directory / "stream.jsonl",
        directory / "checkpoint-5.txt", directory / "checkpoint-7.txt",
        directory / "a.pem.pub", directory / "b.pem.pub", a.key_id, b.key_id,
    )


if __name__ == "__main__":  # pragma: no cover
    out = make_audit_fixture(Path(sys.argv[1] if len(sys.argv) > 1 else "audit-fixture"))
    print(f"wrote {out.export}, {out.stream_export}, {out.checkpoint_5}, {out.checkpoint_7}")
