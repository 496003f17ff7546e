"""Files that are either wholly written or not there: a crash leaves the old file or the new."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO


def fsync_path(path: Path) -> None:
    """fsync a file or a directory (a rename is durable once its directory is)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def publish(tmp: Path, final: Path) -> None:
    """Make a complete temporary file durable, then give it its final name, durably."""
    fsync_path(tmp)
    os.replace(tmp, final)
    fsync_path(final.parent)


@contextlib.contextmanager
def atomic_file(path: Path) -> Iterator[IO[str]]:
    """Write to a temporary file beside ``path``; on success fsync it, rename it over ``path``
    and fsync the directory; on any failure remove it. OSErrors propagate unchanged."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_path(path.parent)


def write_atomic(path: Path, text: str) -> None:
    with atomic_file(path) as f:
        f.write(text)
