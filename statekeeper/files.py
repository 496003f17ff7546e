"""Files statekeeper writes: private (directories 0700, files 0600, whatever the umask), and
either wholly written or not there (a crash leaves the old file or the new).

Every file and directory statekeeper creates goes through these helpers, so the modes are
decided in one place: backups, manifests, checkpoints, exports and the ledger's directory
hold what an outsider must not read (a dump is the whole database) or must not swap. The mode
is given at creation (``os.open``/``os.mkdir``: nothing is ever readable by others, not even
for a moment) and then set exactly (``fchmod``/``chmod``), because the umask can only take
bits away: under umask 0277 a file created 0600 would otherwise be 0400. Existing files and
directories are never re-moded: an operator's deliberate ``chmod`` stays.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

PRIVATE_DIR = 0o700
PRIVATE_FILE = 0o600
PUBLIC_FILE = 0o644  # a public key: anyone may read it, only its owner may change it

# Children that write files (pg_dump) run with this umask, so whatever they create is private.
CHILD_UMASK = 0o077


def fsync_path(path: Path) -> None:
    """fsync a file or a directory (a rename is durable once its directory is)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def private_dir(path: Path) -> Path:
    """Create ``path`` and its missing parents with mode 0700 (exactly); directories that
    already exist are left as they are. Returns ``path``. OSErrors propagate unchanged."""
    missing: list[Path] = []
    p = path
    while not p.is_dir() and p != p.parent:
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        try:
            os.mkdir(d, PRIVATE_DIR)
        except FileExistsError:
            if d.is_dir():  # another process made it first: theirs, not ours to re-mode
                continue
            raise
        os.chmod(d, PRIVATE_DIR)
    return path


def create_private(path: Path, mode: int = PRIVATE_FILE) -> int:
    """Create a new file (never an existing one, never through a symlink) with exactly
    ``mode``; return its descriptor, open for writing."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    try:
        os.fchmod(fd, mode)
    except BaseException:
        os.close(fd)
        raise
    return fd


def touch_private(path: Path) -> Path:
    """Create an empty 0600 file for a child program or SQLite to write into: the mode of an
    existing file is kept by ``open(..., "w")``, by pg_dump and by SQLite."""
    os.close(create_private(path))
    return path


def write_private(path: Path, data: bytes) -> None:
    """Create ``path`` 0600 holding ``data`` (flushed to disk, not yet renamed: see publish)."""
    with os.fdopen(create_private(path), "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def publish(tmp: Path, final: Path) -> None:
    """Make a complete temporary file private and durable, then give it its final name,
    durably. (The chmod is a second line: the file was created private.)"""
    os.chmod(tmp, PRIVATE_FILE)
    fsync_path(tmp)
    os.replace(tmp, final)
    fsync_path(final.parent)


def publish_dir(tmp: Path, final: Path) -> None:
    """:func:`publish` for a directory a child filled (pg_dump's directory format): every file
    in it 0600 and durable, the directory 0700 and durable, then renamed, durably."""
    for p in tmp.iterdir():
        if p.is_file() and not p.is_symlink():
            os.chmod(p, PRIVATE_FILE)
            fsync_path(p)
    os.chmod(tmp, PRIVATE_DIR)
    fsync_path(tmp)
    os.replace(tmp, final)
    fsync_path(final.parent)


@contextlib.contextmanager
def atomic_file(path: Path, mode: int = PRIVATE_FILE) -> Iterator[IO[str]]:
    """Write to a temporary file beside ``path`` (created with ``mode``, 0600 by default); on
    success fsync it, rename it over ``path`` and fsync the directory; on any failure remove
    it. OSErrors propagate unchanged."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            os.fchmod(f.fileno(), mode)
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_path(path.parent)


def write_atomic(path: Path, text: str, mode: int = PRIVATE_FILE) -> None:
    with atomic_file(path, mode) as f:
        f.write(text)


def describe_os_error(e: OSError) -> str:
    """An OSError as one line naming the file: "No space left on device: /backups/x"."""
    what = e.strerror or str(e)
    return f"{what}: {e.filename}" if e.filename else what
