"""Verify one pgBackRest backup set, and the WAL its restore needs, from the repository's own
files, so that the check before a restore does not grow with the repository.

pgBackRest's ``verify`` reads every backup and every WAL segment of the repository; ``verify
--set`` (one backup set and the WAL that makes it consistent) arrived in 2.55.0, and older
versions accept ``--set`` but ignore it (2.45 verifies everything anyway). So, from the set's
``backup.manifest`` (the copy statekeeper keeps, already compared with the repository's):

* every file of ``[target:file]`` is read where pgBackRest keeps it: ``<repo>/backup/<stanza>/
  <reference, else the label>/<name><compression extension>``, or ``bni``/``bno``/``repo-size``
  into ``<label>/bundle/<bni>`` when bundled (zero-length files are not stored in bundles). Its
  stored bytes must have the sha1 ``rck`` and the length ``repo-size`` (defaults to ``size``):
  what ``pgbackrest verify`` checks itself since 2.44, whatever the compression or encryption.
  A file without ``rck`` (written by an older pgBackRest) is decompressed (none, gz, bz2) and
  must have the sha1 ``checksum`` and the length ``size``;
* every WAL segment from ``backup-archive-start`` through the one holding the restore point
  (``pg_walfile_name`` of its LSN: the segment that holds the record ending there) must be in
  ``<repo>/archive/<stanza>/<db-version>-<db-id>/<first 16 of the name>/<segment>-<sha1>[.ext]``,
  once, and its decompressed content must be one segment long with that sha1 (gz and bz2 in
  process, lz4 and zst through the ``lz4``/``zstd`` programs). The segment size is the one
  that maps ``backup-lsn-start`` and ``backup-lsn-stop`` onto the archive start and stop
  segments' names (16 MiB unless a cluster was initialized otherwise).

What this module cannot do raises :class:`NotVerifiable` with the reason; the caller then falls
back to ``pgbackrest verify`` of the whole repository and says so. Damage raises BackupCorrupt,
one line naming the backup id, the pgBackRest label and the file; a file the repository holds
that this process may not read raises BackupError naming it (the repository belongs to the
cluster's owner: statekeeper reads it as root or as that user).
"""

from __future__ import annotations

import bz2
import hashlib
import json
import os
import re
import shutil
import subprocess
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from .. import children
from ..errors import BackupCorrupt, BackupError

#: the first pgBackRest whose ``verify --set`` verifies only that set
VERIFY_SET_SINCE = (2, 55, 0)
EXTENSIONS = {"none": "", "gz": ".gz", "bz2": ".bz2", "lz4": ".lz4", "zst": ".zst"}
PROGRAMS = {"lz4": "lz4", "zst": "zstd"}  # decompressed by a program (no stdlib module)
DEFAULT_SEGMENT = 16 << 20
SEGMENT_SIZES = [1 << n for n in range(20, 31)]  # initdb --wal-segsize: 1 MiB to 1 GiB
EMPTY_SHA1 = hashlib.sha1(b"").hexdigest()
CHUNK = 1 << 20


class NotVerifiable(Exception):
    """The set cannot be verified from its files here (the reason is the message)."""


@dataclass(frozen=True)
class SetFile:
    name: str  # as in the manifest: pg_data/base/1/1259, pg_tblspc/16385/...
    size: int
    checksum: str  # sha1 of the content
    repo_checksum: str | None  # rck: sha1 of the bytes stored
    repo_size: int
    reference: str | None  # the earlier backup that holds it
    bundle_id: int | None
    bundle_offset: int
    block_incremental: bool


@dataclass(frozen=True)
class SetManifest:
    label: str
    compress_type: str
    bundle: bool
    bundle_raw: bool  # bundled files compressed without headers (pgBackRest 2.46 on)
    encrypted: bool
    archive_start: str
    archive_stop: str
    lsn_start: str | None
    lsn_stop: str | None
    archive_id: str  # <db-version>-<db-id>
    files: tuple[SetFile, ...]


@dataclass(frozen=True)
class Verified:
    """What was verified, and how: ``scope`` is ``set`` or ``repository``; ``how`` one line."""

    scope: str
    how: str
    files: int = 0
    stored_bytes: int = 0
    wal: tuple[str, ...] = ()


# -- the manifest -----------------------------------------------------------------------------
def read_ini(data: bytes) -> dict[str, dict[str, str]]:
    """pgBackRest's INI: ``[section]`` and ``key=value`` (split at the first ``=``; the value is
    JSON). Not configparser: file names may hold ``:`` or start with ``;``."""
    sections: dict[str, dict[str, str]] = {}
    current: dict[str, str] | None = None
    for raw in data.decode("utf-8").splitlines():
        if not raw.strip():
            continue
        if raw.startswith("[") and raw.endswith("]"):
            current = sections.setdefault(raw[1:-1], {})
            continue
        key, sep, value = raw.partition("=")
        if current is None or not sep:
            raise ValueError(f"line {raw[:80]!r} is neither a section nor key=value")
        current[key] = value
    return sections


def parse_manifest(data: bytes) -> SetManifest:
    """The parts of a ``backup.manifest`` that say where the set's files are and what they
    hold. NotVerifiable when this module cannot read it: the bytes are pgBackRest's own (the
    copy kept has its recorded sha256 and equals the repository's), so what fails is the
    reading, not the backup."""
    try:
        ini = read_ini(data)

        def value(section: str, key: str, default: Any = None) -> Any:
            raw = ini.get(section, {}).get(key)
            return default if raw is None else json.loads(raw)

        files = []
        for name, raw in ini.get("target:file", {}).items():
            f = json.loads(raw)
            size = int(f["size"])
            files.append(SetFile(
                name=name, size=size, checksum=str(f.get("checksum", EMPTY_SHA1)),
                repo_checksum=f.get("rck"), repo_size=int(f.get("repo-size", size)),
                reference=f.get("reference"),
                bundle_id=int(f["bni"]) if "bni" in f else None,
                bundle_offset=int(f.get("bno", 0)),
                block_incremental="bi" in f,
            ))
        label = str(value("backup", "backup-label"))
        compress = value("backup:option", "option-compress-type")
        if compress is None:  # manifests before compress-type: option-compress (gz or none)
            compress = "gz" if value("backup:option", "option-compress", False) else "none"
        return SetManifest(
            label=label, compress_type=str(compress),
            bundle=bool(value("backup", "backup-bundle", False)),
            bundle_raw=bool(value("backup", "backup-bundle-raw", False)),
            encrypted="cipher" in ini,
            archive_start=str(value("backup", "backup-archive-start")),
            archive_stop=str(value("backup", "backup-archive-stop")),
            lsn_start=value("backup", "backup-lsn-start"),
            lsn_stop=value("backup", "backup-lsn-stop"),
            archive_id=f"{value('backup:db', 'db-version')}-{value('backup:db', 'db-id')}",
            files=tuple(files),
        )
    except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError) as e:
        raise NotVerifiable(f"statekeeper cannot read this backup.manifest ({e!r})") from e


# -- reading the repository -------------------------------------------------------------------
def _open(path: Path, backup_id: str) -> IO[bytes] | None:
    """The file, None when it does not exist; BackupError when it may not be read."""
    try:
        return path.open("rb")
    except FileNotFoundError:
        return None
    except PermissionError as e:
        raise BackupError(
            f"backup {backup_id}: cannot read {path} in the pgBackRest repository "
            f"({e.strerror}); statekeeper reads it as root or as the repository's owner"
        ) from e
    except OSError as e:
        raise BackupError(f"backup {backup_id}: cannot read {path}: {e.strerror or e}") from e


def _chunks(f: IO[bytes], limit: int | None = None) -> Iterator[bytes]:
    left = limit
    while left is None or left > 0:
        b = f.read(CHUNK if left is None else min(CHUNK, left))
        if not b:
            return
        if left is not None:
            left -= len(b)
        yield b


def _inflate(chunks: Iterator[bytes], compress: str) -> Iterator[bytes]:
    """Decompressed chunks (none, gz, bz2); ValueError when the data is not whole."""
    if compress == "none":
        yield from chunks
        return
    new: Callable[[], Any] = ((lambda: zlib.decompressobj(16 + zlib.MAX_WBITS))
                              if compress == "gz" else bz2.BZ2Decompressor)
    d = new()
    for chunk in chunks:
        while chunk:
            try:
                yield d.decompress(chunk)
            except (zlib.error, OSError, EOFError) as e:
                raise ValueError(f"not valid {compress} data ({e})") from e
            chunk = d.unused_data if d.eof else b""
            if chunk:
                d = new()  # another member follows
    if not d.eof:
        raise ValueError(f"{compress} data cut short")


def _digest(chunks: Iterator[bytes]) -> tuple[str, int]:
    h, n = hashlib.sha1(), 0
    for chunk in chunks:
        h.update(chunk)
        n += len(chunk)
    return h.hexdigest(), n


def _program_digest(program: str, fh: IO[bytes]) -> tuple[str, int]:
    """sha1 and length of ``fh`` decompressed by ``program -dc`` (lz4, zstd)."""
    proc = children.popen([program, "-dc"], stdin=fh, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE)
    with children.supervised(proc):
        assert proc.stdout is not None and proc.stderr is not None
        result = _digest(_chunks(proc.stdout))
        err = proc.stderr.read()
        proc.wait()
    if proc.returncode != 0:
        msg = err.decode("utf-8", "replace").strip().splitlines()
        raise ValueError(f"{program} -d failed: {msg[-1] if msg else proc.returncode}")
    return result


# -- the backup set ---------------------------------------------------------------------------
def verify_files(backup_id: str, m: SetManifest, backup_dir: Path) -> tuple[int, int]:
    """Every file of the set, where it is stored (``backup_dir`` is ``<repo>/backup/<stanza>``);
    (files read, bytes read)."""
    if any(f.block_incremental for f in m.files):
        raise NotVerifiable("the set has block-incremental files")
    ext = EXTENSIONS.get(m.compress_type)
    if ext is None:
        raise NotVerifiable(f"unknown compress type {m.compress_type}")
    if any(f.repo_checksum is None for f in m.files) and (
            m.encrypted or m.bundle_raw or m.compress_type in PROGRAMS):
        raise NotVerifiable("files without a repository checksum in an encrypted, raw-bundled "
                            f"or {m.compress_type}-compressed set")

    def where(f: SetFile) -> tuple[Path, int | None]:
        holder = backup_dir / (f.reference or m.label)
        if f.bundle_id is not None:
            return holder / "bundle" / str(f.bundle_id), f.bundle_offset
        return holder / (f.name + ext), None

    def damaged(f: SetFile, path: Path, offset: int | None, what: str) -> BackupCorrupt:
        held = f" (held by {f.reference})" if f.reference else ""
        at = f" at offset {offset}" if offset is not None else ""
        return BackupCorrupt(f"backup {backup_id}: pgBackRest backup {m.label}: {f.name}"
                             f"{held} {what}: {path}{at}")

    todo = [f for f in m.files if not (f.bundle_id is None and m.bundle and f.size == 0)]
    todo.sort(key=lambda f: (str(where(f)[0]), f.bundle_offset))
    read = 0
    handle: tuple[Path, IO[bytes] | None] | None = None
    try:
        for f in todo:
            path, offset = where(f)
            if handle is None or handle[0] != path:
                if handle is not None and handle[1] is not None:
                    handle[1].close()
                handle = (path, _open(path, backup_id))
            fh = handle[1]
            if fh is None:
                raise damaged(f, path, None, "is missing from the repository")
            fh.seek(offset or 0)
            limit = f.repo_size if offset is not None else None
            if f.repo_checksum is not None:
                digest, n = _digest(_chunks(fh, limit))
                expected, expected_n = f.repo_checksum, f.repo_size
            else:
                try:
                    digest, n = _digest(_inflate(_chunks(fh, limit), m.compress_type))
                except ValueError as e:
                    raise damaged(f, path, offset, f"cannot be decompressed ({e})") from e
                expected, expected_n = f.checksum, f.size
            read += f.repo_size
            if n != expected_n:
                raise damaged(f, path, offset, f"is {n} bytes, the manifest says {expected_n}")
            if digest != expected:
                raise damaged(f, path, offset, f"is damaged (sha1 {digest[:12]}..., the "
                                               f"manifest says {expected[:12]}...)")
    finally:
        if handle is not None and handle[1] is not None:
            handle[1].close()
    return len(todo), read


# -- WAL --------------------------------------------------------------------------------------
def lsn_value(text: str) -> int:
    hi, lo = text.split("/")
    return (int(hi, 16) << 32) | int(lo, 16)


def segment_name(timeline: str, segno: int, segment_size: int) -> str:
    per = 0x100000000 // segment_size
    return f"{timeline}{segno // per:08X}{segno % per:08X}"


def segment_number(name: str, segment_size: int) -> int:
    return int(name[8:16], 16) * (0x100000000 // segment_size) + int(name[16:24], 16)


def segment_size(m: SetManifest) -> int:
    """The size that maps the backup's start and stop LSNs onto its archive start and stop
    segments (pgBackRest names them ``lsn / size``)."""
    if not (m.lsn_start and m.lsn_stop):
        return DEFAULT_SEGMENT
    pairs = [(lsn_value(m.lsn_start), m.archive_start), (lsn_value(m.lsn_stop), m.archive_stop)]
    fits = [s for s in SEGMENT_SIZES
            if all(segment_name(name[:8], lsn // s, s) == name for lsn, name in pairs)]
    if not fits:
        raise NotVerifiable(f"no WAL segment size maps LSN {m.lsn_start} to segment "
                            f"{m.archive_start}")
    return DEFAULT_SEGMENT if DEFAULT_SEGMENT in fits else fits[0]


def wal_needed(m: SetManifest, restore_point_lsn: str | None) -> tuple[list[str], int]:
    """The segments a restore to the restore point replays, oldest first, and their size."""
    if not all(re.fullmatch(r"[0-9A-F]{24}", x) for x in (m.archive_start, m.archive_stop)):
        raise NotVerifiable(f"the backup records no WAL range ({m.archive_start!r}, "
                            f"{m.archive_stop!r})")
    try:
        size = segment_size(m)
        first = segment_number(m.archive_start, size)
        last = segment_number(m.archive_stop, size)
        if restore_point_lsn:  # the segment that holds the record ending there
            last = max(last, (lsn_value(restore_point_lsn) - 1) // size)
    except ValueError as e:
        raise NotVerifiable(f"an LSN that cannot be read ({e})") from e
    timeline = m.archive_start[:8]
    return [segment_name(timeline, n, size) for n in range(first, last + 1)], size


def verify_wal(backup_id: str, m: SetManifest, archive_dir: Path,
               restore_point_lsn: str | None, *, content: bool = True) -> list[str]:
    """Every segment the restore needs is in the archive (``<repo>/archive/<stanza>``), once,
    and (``content``) decompresses to one segment with the sha1 its name carries."""
    if content and m.encrypted:
        raise NotVerifiable("the WAL archive is encrypted")
    names, size = wal_needed(m, restore_point_lsn)
    listing: dict[Path, list[str]] = {}
    for seg in names:
        where = archive_dir / m.archive_id / seg[:16]
        if where not in listing:
            try:
                listing[where] = sorted(os.listdir(where))
            except FileNotFoundError:
                listing[where] = []
            except PermissionError as e:
                raise BackupError(
                    f"backup {backup_id}: cannot read {where} in the pgBackRest repository "
                    f"({e.strerror}); statekeeper reads it as root or as the repository's owner"
                ) from e
        pattern = re.compile(rf"{seg}-([0-9a-f]{{40}})((?:\.[a-z0-9]+)?)")
        found = [(n, mt) for n in listing[where] if (mt := pattern.fullmatch(n))]
        head = f"backup {backup_id}: pgBackRest backup {m.label}: WAL segment {seg}"
        if not found:
            raise BackupCorrupt(f"{head}, which the restore needs, is missing from {where}")
        if len(found) > 1:
            raise BackupCorrupt(f"{head} is in {where} more than once: "
                                + ", ".join(n for n, _ in found))
        file, mt = found[0]
        if content:
            _check_segment(head, where / file, mt.group(1), mt.group(2), size, backup_id)
    return names


def _check_segment(head: str, path: Path, sha1: str, ext: str, size: int,
                   backup_id: str) -> None:
    compress = next((c for c, e in EXTENSIONS.items() if e == ext), None)
    if compress is None:
        raise NotVerifiable(f"WAL compressed as {ext}")
    program = None
    if compress in PROGRAMS:
        program = shutil.which(PROGRAMS[compress])
        if program is None:
            raise NotVerifiable(f"{PROGRAMS[compress]} is not installed to read "
                                f"{compress}-compressed WAL")
    fh = _open(path, backup_id)
    if fh is None:
        raise BackupCorrupt(f"{head} is missing: {path}")
    try:
        with fh:
            digest, n = (_program_digest(program, fh) if program
                         else _digest(_inflate(_chunks(fh), compress)))
    except ValueError as e:
        raise BackupCorrupt(f"{head} cannot be decompressed ({e}): {path}") from e
    if n != size:
        raise BackupCorrupt(f"{head} is {n} bytes, not one segment ({size}): {path}")
    if digest != sha1:
        raise BackupCorrupt(f"{head} is damaged (sha1 {digest[:12]}..., its name says "
                            f"{sha1[:12]}...): {path}")


# -- the whole check --------------------------------------------------------------------------
def _local(repo_type: str | None, repo_host: str | None) -> None:
    if (repo_type or "posix") not in ("posix", "cifs"):
        raise NotVerifiable(f"the repository is not a file system here (repo1-type={repo_type})")
    if repo_host:
        raise NotVerifiable(f"the repository is on another host (repo1-host={repo_host})")


def verify_set(backup_id: str, manifest: bytes, repo: Path, stanza: str,
               restore_point_lsn: str | None, *, repo_type: str | None = None,
               repo_host: str | None = None, cipher_type: str | None = None) -> Verified:
    """The set of ``manifest`` and the WAL through its restore point, in the repository at
    ``repo`` (``repo1-path``; ``repo1-type`` posix or cifs, on this host, not encrypted), whose
    own copy of the manifest must be the same bytes."""
    _local(repo_type, repo_host)
    m = parse_manifest(manifest)
    if m.encrypted or (cipher_type or "none") != "none":
        raise NotVerifiable("the repository is encrypted")
    here = repo / "backup" / stanza / m.label / "backup.manifest"
    try:
        fh = here.open("rb")
    except FileNotFoundError as e:
        raise NotVerifiable(f"{here} does not exist (is repo1-path set elsewhere?)") from e
    except OSError as e:  # say a repository on NFS that maps root to nobody
        raise NotVerifiable(f"cannot read {here} ({e.strerror}) as uid {os.geteuid()}") from e
    with fh:
        if fh.read() != manifest:
            raise NotVerifiable(f"{here} is not the manifest pgbackrest repo-get returns")
    files, stored = verify_files(backup_id, m, repo / "backup" / stanza)
    wal = verify_wal(backup_id, m, repo / "archive" / stanza, restore_point_lsn)
    return Verified(
        scope="set",
        how=(f"backup set {m.label} alone: {files} files ({stored} bytes as stored, "
             f"{m.compress_type}) and WAL {wal[0]}..{wal[-1]} ({len(wal)} segments)"),
        files=files, stored_bytes=stored, wal=tuple(wal),
    )


def verify_restore_wal(backup_id: str, manifest: bytes, repo: Path, stanza: str,
                       restore_point_lsn: str | None, *, repo_type: str | None = None,
                       repo_host: str | None = None) -> Verified:
    """After ``pgbackrest verify --set`` (which checks the WAL through the backup's end): the
    WAL through the restore point, its content where it can be read here, else its presence."""
    _local(repo_type, repo_host)
    m = parse_manifest(manifest)
    archive = repo / "archive" / stanza
    if not archive.is_dir():
        raise NotVerifiable(f"{archive} does not exist (is repo1-path set elsewhere?)")
    try:
        wal, how = verify_wal(backup_id, m, archive, restore_point_lsn), "content"
    except NotVerifiable:
        wal, how = verify_wal(backup_id, m, archive, restore_point_lsn, content=False), "presence"
    return Verified("set", f"and WAL {wal[0]}..{wal[-1]} ({how})", wal=tuple(wal))


def parse_version(text: str) -> tuple[int, ...]:
    """``pgBackRest 2.45`` -> (2, 45); ``2.55.1`` -> (2, 55, 1)."""
    m = re.search(r"pgBackRest\s+(\d+(?:\.\d+)*)", text)
    if m is None:
        raise BackupError(f"pgbackrest version printed {text.strip()[:80]!r}")
    return tuple(int(x) for x in m.group(1).split("."))


def read_verify_report(out: str, backup_id: str, label: str) -> None:
    """``pgbackrest verify --output=text --verbose`` exits 0 even when it finds damage: its
    summary for ``label`` must say valid."""
    m = re.search(rf"backup: {re.escape(label)}, status: ([\w-]+)(.*)", out)
    if m is None:
        raise BackupCorrupt(f"backup {backup_id}: pgbackrest verify did not report backup {label}")
    if m.group(1) != "valid":
        details = [ln.strip() for ln in out[m.end():].splitlines()[1:3]
                   if ln.strip() and not ln.strip().startswith(("backup:", "stanza:"))]
        raise BackupCorrupt(
            f"backup {backup_id}: pgbackrest verify finds backup {label} "
            f"{m.group(1)}{m.group(2)}" + (f" ({'; '.join(details)})" if details else "")
        )
