"""``statekeeper keys``: signing keys."""

from __future__ import annotations

from pathlib import Path

import click

from statekeeper import command

from .root import Obj, OpNote, PathArg, emit_json, json_option, pass_obj, why_options


@click.group()
def keys() -> None:
    """Manage Ed25519 signing keys."""


@keys.command("generate")
@click.option("--out", required=True, type=PathArg, help="Where to write the private key (0600).")
@json_option
@pass_obj
def keys_generate(obj: Obj, out: Path, as_json: bool) -> None:
    """Generate a signing key: OUT (mode 0600) and OUT.pub (the public key, to share)."""
    signer = command.keys_generate(out)
    if as_json:
        obj.emit(path=str(out), public_key_path=f"{out}.pub", key_id=signer.key_id)
        return
    click.echo(f"wrote {out} (private, mode 0600) and {out}.pub")
    click.echo(f"key id {signer.key_id}")


@keys.command("rotate")
@click.option("--new-key", required=True, type=PathArg, help="The key that takes over signing.")
@why_options
@json_option
@pass_obj
def keys_rotate(obj: Obj, new_key: Path, reason: str | None, ticket: str | None,
                as_json: bool) -> None:
    """Introduce a new signing key, in an event signed by the current key (--key).

    Recorded as an operation (stream ops/ID) with the old and new key ids."""
    note = OpNote(obj)
    ev = command.keys_rotate(obj.settings, new_key, reason=reason, ticket=ticket,
                             observer=note)
    if as_json:
        obj.emit(seq=ev.seq, new_key=str(new_key), op_id=note.op_id)
        return
    click.echo(f"rotated signing key at seq {ev.seq}; sign with {new_key} from now on")
    note.echo()


@keys.command("list")
@json_option
@pass_obj
def keys_list(obj: Obj, as_json: bool) -> None:
    """List the public keys recorded in the ledger, oldest first."""
    recs = command.keys_list(obj.settings)
    if as_json:
        emit_json([{"key_id": k.key_id, "public_key": k.public_key} for k in recs])
        return
    for k in recs:
        click.echo(f"{k.key_id}  {k.public_key}")
