"""Ed25519 signing keys: generation, safe loading, key ids.

A key id is the SHA-256 fingerprint (hex) of the raw 32-byte public key, so an id can never be
paired with another key without the mismatch showing.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from .errors import KeyFileError

# Loading a key costs a few percent of a verification, once per seal without this; a chain
# has a handful of keys and a seal per append.
_loaded = functools.lru_cache(maxsize=64)(Ed25519PublicKey.from_public_bytes)


def key_id_of(raw_public: bytes) -> str:
    return hashlib.sha256(raw_public).hexdigest()


@dataclass(frozen=True)
class PublicKey:
    """A verifier: the raw public key and its id."""

    raw: bytes

    @property
    def key_id(self) -> str:
        return key_id_of(self.raw)

    @property
    def b64(self) -> str:
        return base64.b64encode(self.raw).decode("ascii")

    @classmethod
    def from_b64(cls, text: str) -> PublicKey:
        try:
            raw = base64.b64decode(text, validate=True)
        except ValueError as e:
            raise KeyFileError(f"public key is not valid base64: {text[:20]!r}") from e
        if len(raw) != 32:
            raise KeyFileError("public key is not a 32-byte Ed25519 key")
        return cls(raw)

    def verify(self, signature: bytes, message: bytes) -> bool:
        try:
            _loaded(self.raw).verify(signature, message)
        except InvalidSignature:
            return False
        return True

    def pem(self) -> bytes:
        return Ed25519PublicKey.from_public_bytes(self.raw).public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )


class Signer:
    """A loaded private key. Holds the key in memory only; never serialises it."""

    def __init__(self, private: Ed25519PrivateKey) -> None:
        self._private = private
        self.public = PublicKey(
            private.public_key().public_bytes(
                serialization.Encoding.Raw, serialization.PublicFormat.Raw
            )
        )

    @property
    def key_id(self) -> str:
        return self.public.key_id

    def sign(self, message: bytes) -> bytes:
        return self._private.sign(message)

    def __repr__(self) -> str:  # never show key material
        return f"Signer(key_id={self.key_id[:16]}...)"


def _create(path: Path, mode: int) -> int:
    """A new file (never an existing one, never through a symlink) with exactly ``mode``,
    whatever the umask (which can only take bits away)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    try:
        os.fchmod(fd, mode)
    except BaseException:
        os.close(fd)
        raise
    return fd


def generate_key_file(path: Path) -> Signer:
    """Write a new PEM private key with mode 0600 (created so, never widened) and its public
    half beside it (``<path>.pub``, 0644: readable by all, writable by its owner only)."""
    if path.exists():
        raise KeyFileError(f"{path}: already exists; refusing to overwrite a signing key")
    if not path.parent.is_dir():
        raise KeyFileError(f"{path}: directory {path.parent} does not exist")
    private = Ed25519PrivateKey.generate()
    pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    try:
        fd = _create(path, 0o600)
    except OSError as e:
        raise KeyFileError(f"{path}: cannot create key file: {e.strerror}") from e
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
        f.flush()
        os.fsync(f.fileno())
    signer = Signer(private)
    pub_path = path.with_name(path.name + ".pub")
    if not pub_path.exists():
        try:
            pub_fd = _create(pub_path, 0o644)
        except OSError as e:
            raise KeyFileError(f"{pub_path}: cannot create public key file: {e.strerror}") from e
        with os.fdopen(pub_fd, "wb") as f:
            f.write(signer.public.pem())
            f.flush()
            os.fsync(f.fileno())
    return signer


def _owner(uid: int) -> str:
    try:
        import pwd

        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except (ImportError, KeyError):
        return f"uid {uid}"


def _unsafe(path: Path, st: os.stat_result) -> str | None:
    """Why a private key file must not be used, or None: it must belong to the user running
    statekeeper (another user could replace it) and give group and others no access at all
    (reading it steals the key; writing it swaps the key; either defeats the seals)."""
    me = os.geteuid()
    if st.st_uid != me:
        return (
            f"{path}: private key is owned by {_owner(st.st_uid)}, not by the user running "
            f"statekeeper ({_owner(me)}); use a key file of your own (mode 0600)"
        )
    mode = stat.S_IMODE(st.st_mode)
    if mode & (stat.S_IRGRP | stat.S_IROTH):
        what = "readable"
    elif mode & (stat.S_IWGRP | stat.S_IWOTH):
        what = "writable"
    elif mode & (stat.S_IXGRP | stat.S_IXOTH):
        what = "executable"
    else:
        return None
    return (
        f"{path}: private key is {what} by group or others (mode {mode:04o}); "
        f"fix it with 'chmod 600 {path}'"
    )


def load_signer(path: Path) -> Signer:
    """Load a private key, refusing one that another user owns or that group or others can
    read, write or execute. The checks are made on the open file, so what is checked is what
    is read."""
    try:
        # O_NONBLOCK: a FIFO in the key's place must not hang the command (no effect on files)
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError as e:
        raise KeyFileError(
            f"{path}: key file not found (create one with 'statekeeper keys generate --out {path}')"
        ) from e
    except OSError as e:
        raise KeyFileError(f"{path}: cannot read key file: {e.strerror}") from e
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise KeyFileError(f"{path}: key file is not a regular file")
        problem = _unsafe(path, st)
        if problem is not None:
            raise KeyFileError(problem)
        with os.fdopen(os.dup(fd), "rb") as f:
            data = f.read(1 << 16)
    except OSError as e:
        raise KeyFileError(f"{path}: cannot read key file: {e.strerror}") from e
    finally:
        os.close(fd)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as e:
        raise KeyFileError(f"{path}: not an unencrypted PEM private key") from e
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"{path}: not an Ed25519 private key")
    return Signer(key)


def load_public_key(path: Path) -> PublicKey:
    """Load a public key from a PEM file (or the private key file, whose public half is used)."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise KeyFileError(f"{path}: cannot read public key: {e.strerror}") from e
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError:
        return load_signer(path).public
    if not isinstance(key, Ed25519PublicKey):
        raise KeyFileError(f"{path}: not an Ed25519 public key")
    return PublicKey(key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw))
