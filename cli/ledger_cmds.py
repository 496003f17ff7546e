"""``statekeeper ledger``: append, verify, checkpoint, export, verify-export."""

from __future__ import annotations

from pathlib import Path

import click

from statekeeper import command
from statekeeper.errors import ConfigError, IntegrityError, exit_code_for

from .root import Obj, PathArg, exception_doc, json_option, pass_obj

trusted_opt = click.option(
    "--trusted-key", "trusted", multiple=True, type=PathArg, metavar="PUBKEY",
    help="Only accept seals by this public key (PEM; repeatable).",
)


@click.group("ledger")
def ledger_group() -> None:
    """The signed, hash-chained audit ledger."""


@ledger_group.command("append")
@click.option("--stream", required=True, help="Stream name, e.g. upgrade/<run id>.")
@click.option("--type", "type_", required=True, help="Event type.")
@click.option("--payload", default="{}", show_default=True, help="JSON object.")
@click.option("--expected-position", type=int, default=None,
              help="Refuse unless the stream's last position is this (0: a new stream).")
@json_option
@pass_obj
def ledger_append(
    obj: Obj, stream: str, type_: str, payload: str, expected_position: int | None, as_json: bool
) -> None:
    """Append one event (for scripts and tests)."""
    import ledger.canonical

    try:
        data = ledger.canonical.loads(payload)
    except ledger.canonical.CanonicalError as e:
        raise ConfigError(f"--payload: {e}") from e
    except ValueError as e:
        raise ConfigError(f"--payload is not valid JSON: {e}") from e
    except RecursionError as e:
        raise ConfigError("--payload is nested too deeply") from e
    if not isinstance(data, dict):
        raise ConfigError("--payload must be a JSON object")
    ev = command.ledger_append(obj.settings, stream, type_, data, expected_position)
    if as_json:
        obj.emit(seq=ev.seq, stream=ev.stream, stream_seq=ev.stream_seq, hash=ev.hash)
    else:
        click.echo(f"appended seq {ev.seq} ({stream} #{ev.stream_seq}) {ev.hash}")


def _violation(obj: Obj, e: IntegrityError) -> click.exceptions.Exit:
    """Under --json, the document of a verification that failed (with the first bad ``seq``,
    the ``reason`` and ``detail`` at the top, as before there was one document for all)."""
    code = exit_code_for(e)
    obj.emit(code, exception_doc(e, code), seq=e.seq, reason=e.reason, detail=e.detail)
    return click.exceptions.Exit(code)


@ledger_group.command("verify")
@click.option("--against", type=PathArg, metavar="CHECKPOINT",
              help="A checkpoint saved earlier: prove the ledger still extends it.")
@trusted_opt
@json_option
@pass_obj
def ledger_verify(obj: Obj, against: Path | None, trusted: tuple[Path, ...], as_json: bool) -> None:
    """Verify every hash, link and seal (exit 4 names the first bad seq)."""
    try:
        r = command.ledger_verify(obj.settings, against, list(trusted))
    except IntegrityError as e:
        if as_json:
            raise _violation(obj, e) from e
        raise
    if as_json:
        obj.emit(events=r.events, head_seq=r.head.seq, head_hash=r.head.hash,
                 ledger_id=r.ledger_id, keys=r.keys,
                 against=({"seq": r.checkpoint.seq, "hash": r.checkpoint.head_hash}
                          if r.checkpoint else None))
        return
    msg = f"ok: {r.events} events verified, head seq {r.head.seq} {r.head.hash}"
    if r.checkpoint:
        msg += f"; extends checkpoint at seq {r.checkpoint.seq}"
    click.echo(msg)


@ledger_group.command("checkpoint")
@click.option("--out", required=True, type=PathArg, help="Where to write the checkpoint.")
@json_option
@pass_obj
def ledger_checkpoint(obj: Obj, out: Path, as_json: bool) -> None:
    """Sign the verified head into a C2SP checkpoint file; keep it outside the ledger."""
    text = command.ledger_checkpoint(obj.settings, out)
    seq = text.split("\n")[1]
    if as_json:
        obj.emit(path=str(out), seq=int(seq), checkpoint=text)
        return
    click.echo(f"wrote checkpoint at seq {seq} to {out}")


@ledger_group.command("export")
@click.option("--out", required=True, type=PathArg, help="JSON Lines file to write.")
@click.option("--stream", default=None, help="Export one stream (one upgrade run) only.")
@json_option
@pass_obj
def ledger_export(obj: Obj, out: Path, stream: str | None, as_json: bool) -> None:
    """Export to JSON Lines with the public keys and a closing checkpoint."""
    r = command.ledger_export(obj.settings, out, stream)
    if as_json:
        obj.emit(path=str(out), stream=stream, events=r.events)
        return
    click.echo(f"exported {r.events} events to {out}")


@ledger_group.command("verify-export")
@click.argument("file", type=PathArg)
@click.option("--against", type=PathArg, metavar="CHECKPOINT",
              help="A checkpoint saved earlier: prove the export extends it.")
@trusted_opt
@json_option
@pass_obj
def ledger_verify_export(
    obj: Obj, file: Path, against: Path | None, trusted: tuple[Path, ...], as_json: bool
) -> None:
    """Verify an export file offline, with no database."""
    try:
        r = command.ledger_verify_export(file, against, list(trusted))
    except IntegrityError as e:
        if as_json:
            raise _violation(obj, e) from e
        raise
    if as_json:
        cp = r.checkpoint
        obj.emit(
            events=r.events, head_seq=r.head.seq, head_hash=r.head.hash,
            ledger_id=r.ledger_id, stream=r.stream, keys=list(r.keys),
            trusted_keys=list(r.trusted),
            checkpoint={"seq": cp.seq, "hash": cp.head_hash, "key_id": cp.key_id},
            against=None if r.against is None else {
                "seq": r.against.seq, "hash": r.against.head_hash, "key_id": r.against.key_id,
                "events_after": r.events_after,
            },
            proved=r.proved(), not_proved=r.not_proved(),
        )
        return
    what = f"stream {r.stream}" if r.stream else "ledger"
    click.echo(f"ok: {r.events} events of {what} verified, head seq {r.head.seq} {r.head.hash}")
    for line in r.proved():
        click.echo(f"proved: {line}")
    for line in r.not_proved():
        click.echo(f"not proved: {line}")


