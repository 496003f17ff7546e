"""Ed25519 signing keys: files, key ids, and rotation recorded in the ledger."""

from __future__ import annotations

import base64
import hashlib
import os
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

import ledger
from ledger.chain import LEDGER_STREAM, ROTATION_TYPE, seal_message
from tests.test_ledger_support import RawDB

E = ledger.NewEvent


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def test_generated_key_is_0600_pem_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        signer = ledger.generate_key_file(tmp_path / "k.pem")
    finally:
        os.umask(old)
    key = tmp_path / "k.pem"
    assert _mode(key) == 0o600
    pem = key.read_bytes()
    assert pem.startswith(b"-----BEGIN PRIVATE KEY-----\n")
    private = serialization.load_pem_private_key(pem, password=None)
    assert isinstance(private, Ed25519PrivateKey)
    # The public half is written beside it, to share; it holds nothing secret.
    public = serialization.load_pem_public_key((tmp_path / "k.pem.pub").read_bytes())
    assert isinstance(public, Ed25519PublicKey)
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    assert raw == signer.public.raw
    assert b"PRIVATE" not in (tmp_path / "k.pem.pub").read_bytes()


def test_key_id_is_sha256_of_the_raw_public_key(tmp_path: Path) -> None:
    ledger.generate_key_file(tmp_path / "k.pem")
    private = serialization.load_pem_private_key((tmp_path / "k.pem").read_bytes(), None)
    assert isinstance(private, Ed25519PrivateKey)
    raw = private.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    want = hashlib.sha256(raw).hexdigest()
    assert ledger.load_signer(tmp_path / "k.pem").key_id == want
    assert ledger.load_public_key(tmp_path / "k.pem.pub").key_id == want
    assert ledger.load_public_key(tmp_path / "k.pem").key_id == want  # the private file works too


@pytest.mark.parametrize("mode", [0o640, 0o644, 0o604, 0o660, 0o610, 0o602])
def test_group_or_world_readable_key_is_refused_with_the_fix(tmp_path: Path, mode: int) -> None:
    key = tmp_path / "k.pem"
    ledger.generate_key_file(key)
    key.chmod(mode)
    with pytest.raises(ledger.KeyFileError) as ei:
        ledger.load_signer(key)
    what = {0o610: "executable", 0o602: "writable"}.get(mode, "readable")
    assert str(ei.value) == (
        f"{key}: private key is {what} by group or others (mode {mode:04o}); "
        f"fix it with 'chmod 600 {key}'"
    )


@pytest.mark.parametrize("mode", [0o600, 0o400, 0o700])
def test_owner_only_key_loads(tmp_path: Path, mode: int) -> None:
    key = tmp_path / "k.pem"
    want = ledger.generate_key_file(key).key_id
    key.chmod(mode)
    assert ledger.load_signer(key).key_id == want


def test_key_file_errors_say_what_is_wrong(tmp_path: Path) -> None:
    key = tmp_path / "k.pem"
    with pytest.raises(ledger.KeyFileError, match=r"key file not found .*keys generate --out"):
        ledger.load_signer(key)
    ledger.generate_key_file(key)
    with pytest.raises(ledger.KeyFileError, match="already exists; refusing to overwrite"):
        ledger.generate_key_file(key)
    with pytest.raises(ledger.KeyFileError, match="does not exist"):
        ledger.generate_key_file(tmp_path / "nodir" / "k.pem")
    junk = tmp_path / "junk.pem"
    junk.write_text("not a key\n")
    junk.chmod(0o600)
    with pytest.raises(ledger.KeyFileError, match="not an unencrypted PEM private key"):
        ledger.load_signer(junk)
    ecdsa = tmp_path / "ec.pem"
    ecdsa.write_bytes(ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ))
    ecdsa.chmod(0o600)
    with pytest.raises(ledger.KeyFileError, match="not an Ed25519 private key"):
        ledger.load_signer(ecdsa)


def test_signer_never_shows_key_material(tmp_path: Path) -> None:
    signer = ledger.generate_key_file(tmp_path / "k.pem")
    body = b"".join((tmp_path / "k.pem").read_bytes().splitlines()[1:-1]).decode()
    assert body not in repr(signer) and signer.key_id[:16] in repr(signer)


# -- rotation -----------------------------------------------------------------------------------
def _raw_url(lg: ledger.Ledger) -> str:
    u = lg.url
    if u.get_backend_name() == "sqlite":
        return f"sqlite:///{u.database}"
    return u.set(drivername="postgresql").render_as_string(hide_password=False)


def test_rotation_is_an_event_sealed_by_the_old_key(
    ledger_db: ledger.Ledger, db_url: str, tmp_path: Path
) -> None:
    old = ledger_db.signer
    assert old is not None
    ledger_db.append("run/1", [E("a"), E("b")])  # seqs 2, 3
    new = ledger.generate_key_file(tmp_path / "new.pem")
    rot = ledger_db.rotate_key(new)

    assert (rot.seq, rot.stream, rot.type, rot.closes) == (4, LEDGER_STREAM, ROTATION_TYPE, True)
    assert ledger.canonical.loads(rot.payload) == {
        "key_id": new.key_id, "public_key": new.public.b64, "previous_key_id": old.key_id,
    }
    with RawDB(_raw_url(ledger_db)) as db:
        key_id, sig = db.seal(4) or ("", "")
    assert key_id == old.key_id
    assert old.public.verify(base64.b64decode(sig), seal_message(4, 4, rot.hash))
    listed = ledger_db.keys()
    assert [k.key_id for k in listed] == [old.key_id, new.key_id]

    # The ledger object now signs with the new key.
    (ev,) = ledger_db.append("run/1", E("c"))
    with RawDB(_raw_url(ledger_db)) as db:
        assert (db.seal(ev.seq) or ("",))[0] == new.key_id

    # Another process still holding the old key is refused, and writes nothing.
    head = ledger_db.head()
    with ledger.Ledger(db_url, signer=old) as stale:
        with pytest.raises(ledger.ConfigurationError, match="a retired key of this ledger"):
            stale.append("run/1", E("d"))
        with pytest.raises(ledger.ConfigurationError, match="a retired key of this ledger"):
            stale.rotate_key(ledger.generate_key_file(tmp_path / "other.pem"))
    assert ledger_db.head() == head

    r = ledger_db.verify()
    assert (r.events, r.keys) == (5, [old.key_id, new.key_id])
    # Pinning only the new key rejects the history sealed by the old one, at its first seal.
    with pytest.raises(ledger.IntegrityViolation) as ei:
        ledger_db.verify(trusted=[new.public])
    assert (ei.value.seq, ei.value.reason) == (1, "unknown key")
    assert ledger_db.verify(trusted=[old.public, new.public]).events == 5


def test_rotation_survives_export_and_checkpoint(
    ledger_db: ledger.Ledger, tmp_path: Path
) -> None:
    ledger_db.append("s", E("a"))
    before = ledger.parse_checkpoint(ledger_db.checkpoint())
    ledger_db.rotate_key(ledger.generate_key_file(tmp_path / "k2.pem"))
    ledger_db.rotate_key(ledger.generate_key_file(tmp_path / "k3.pem"))
    ledger_db.append("s", E("b"))
    after = ledger.parse_checkpoint(ledger_db.checkpoint())
    assert after.key_id == ledger_db.signer.key_id  # type: ignore[union-attr]
    assert ledger_db.verify(against=before).events == 5
    out = tmp_path / "x.jsonl"
    with out.open("w") as f:
        ledger.export(ledger_db, f)
    r = ledger.verify_export(out, against=before)
    assert (r.events, r.head.seq) == (5, 5)
    assert ledger.verify_export(out, against=after).events == 5


def test_rotating_to_the_same_key_is_refused(ledger_db: ledger.Ledger) -> None:
    assert ledger_db.signer is not None
    with pytest.raises(ledger.ConfigurationError, match="already the signing key"):
        ledger_db.rotate_key(ledger_db.signer)


def test_rotation_on_an_empty_ledger_writes_genesis_first(
    ledger_db: ledger.Ledger, tmp_path: Path
) -> None:
    new = ledger.generate_key_file(tmp_path / "new.pem")
    rot = ledger_db.rotate_key(new)
    assert rot.seq == 2 and rot.stream_seq == 2
    assert ledger_db.verify().keys[1] == new.key_id
