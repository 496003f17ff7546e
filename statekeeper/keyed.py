"""Keyed fingerprints: what the ledger records of a file that may hold a secret.

A configuration file holds broker API keys; a plain sha256 of a short secret can be searched
for, so the ledger records ``HMAC-SHA256(secret, content)`` instead, with a per-ledger secret
kept beside the signing key (``signing-key.pem`` -> ``signing-key.hmac``, 32 random bytes,
0600, created on first use). Whoever holds the secret can check that a file is the one
recorded; the ledger, an export or a report alone reveal nothing of the content. The secret's
id (a digest of it, not the secret) is recorded with the fingerprints, so a fingerprint is
never compared under the wrong secret.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import stat
from pathlib import Path

from .errors import ConfigError
from .files import describe_os_error, fsync_path, private_dir, write_private

SECRET_BYTES = 32


def secret_path(key_path: Path) -> Path:
    return key_path.with_suffix(".hmac")


def load_or_create(path: Path) -> bytes:
    """The secret at ``path``, created (0600) when missing. Refused, like the signing key,
    when another user owns it or group or others may use it."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        return _create(path)
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the fingerprint secret: {e.strerror}") from e
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ConfigError(f"{path}: the fingerprint secret is not a regular file")
        if st.st_uid != os.geteuid():
            raise ConfigError(f"{path}: the fingerprint secret is owned by uid {st.st_uid}, "
                              "not by the user running statekeeper")
        if stat.S_IMODE(st.st_mode) & 0o077:
            raise ConfigError(f"{path}: the fingerprint secret is open to group or others "
                              f"(mode {stat.S_IMODE(st.st_mode):04o}); fix it with "
                              f"'chmod 600 {path}'")
        data = os.read(fd, 4096)
    finally:
        os.close(fd)
    if len(data) != SECRET_BYTES:
        raise ConfigError(f"{path}: the fingerprint secret is not {SECRET_BYTES} bytes")
    return data


def _create(path: Path) -> bytes:
    data = secrets.token_bytes(SECRET_BYTES)
    try:
        private_dir(path.parent)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.unlink(missing_ok=True)
        write_private(tmp, data)
        try:
            os.link(tmp, path)  # never replaces a secret another process made meanwhile
        except FileExistsError:
            return load_or_create(path)
        finally:
            tmp.unlink(missing_ok=True)
        fsync_path(path.parent)
    except OSError as e:
        raise ConfigError(f"{path}: cannot create the fingerprint secret: "
                          f"{describe_os_error(e)}") from e
    return data


def secret_id(secret: bytes) -> str:
    return hashlib.sha256(b"statekeeper fingerprint secret\n" + secret).hexdigest()[:16]


def fingerprint(secret: bytes, data: bytes) -> str:
    return hmac.new(secret, data, hashlib.sha256).hexdigest()


def same(a: str, b: str) -> bool:
    return hmac.compare_digest(a, b)
