"""statekeeper/backups/pgbackrest_verify.py on a small repository laid out as pgBackRest 2.45
lays it out (tests/test_backup_pgbackrest.py verifies real ones): what the real test stanza
(lz4, no bundles, every file with a repository checksum) does not reach: gz, a bundle, a file
without ``rck`` (decompressed and checked against ``checksum``), a referenced file, gz WAL, the
segment size and the fallbacks."""

from __future__ import annotations

import gzip
import hashlib
import json
from pathlib import Path

import pytest

from statekeeper.backups import pgbackrest_verify as pgv
from statekeeper.errors import BackupCorrupt

SEG = 16 << 20
L0, L1 = "20260101-000000F", "20260101-000000F_20260102-000000I"


def sha1(b: bytes) -> str:
    return hashlib.sha1(b).hexdigest()


def build(repo: Path) -> bytes:
    """One incremental set L1 over L0 and the WAL it needs; its backup.manifest."""
    sets, files = repo / "backup" / "st", {}
    (sets / L1 / "pg_data").mkdir(parents=True)
    (sets / L0 / "pg_data" / "global").mkdir(parents=True)
    # no rck (an older pgBackRest): decompressed, checked against checksum
    (sets / L1 / "pg_data" / "PG_VERSION.gz").write_bytes(gzip.compress(b"15\n"))
    files["pg_data/PG_VERSION"] = {"checksum": sha1(b"15\n"), "size": 3}
    # two files in a bundle, the second one at an offset; a zero-length one is not stored
    a, b = gzip.compress(b"a" * 9000), gzip.compress(b"b" * 5000)
    (sets / L1 / "bundle").mkdir()
    (sets / L1 / "bundle" / "1").write_bytes(a + b)
    files["pg_data/base/1/1259"] = {"bni": 1, "checksum": sha1(b"a" * 9000), "rck": sha1(a),
                                    "repo-size": len(a), "size": 9000}
    files["pg_data/base/1/1259_fsm"] = {"bni": 1, "bno": len(a), "checksum": sha1(b"b" * 5000),
                                        "rck": sha1(b), "repo-size": len(b), "size": 5000}
    files["pg_data/base/1/2619"] = {"size": 0}
    # held by the earlier backup
    c = gzip.compress(b"c" * 8192)
    (sets / L0 / "pg_data" / "global" / "1262.gz").write_bytes(c)
    files["pg_data/global/1262"] = {"checksum": sha1(b"c" * 8192), "rck": sha1(c),
                                    "reference": L0, "repo-size": len(c), "size": 8192}
    wal = repo / "archive" / "st" / "15-1" / "0000000100000000"
    wal.mkdir(parents=True)
    for n in (2, 3):
        content = bytes([n]) * SEG
        (wal / f"00000001000000000000000{n}-{sha1(content)}.gz").write_bytes(
            gzip.compress(content, 1))
    lines = [
        "[backrest]", 'backrest-format=5', 'backrest-version="2.45"', "",
        "[backup]", 'backup-archive-start="000000010000000000000002"',
        'backup-archive-stop="000000010000000000000002"', "backup-bundle=true",
        f'backup-label="{L1}"', 'backup-lsn-start="0/2000028"', 'backup-lsn-stop="0/2000100"',
        f'backup-prior="{L0}"', 'backup-type="incr"', "",
        "[backup:db]", "db-id=1", 'db-version="15"', "",
        "[backup:option]", 'option-compress-type="gz"', "",
        "[target:file]", *(f"{k}={json.dumps(v, separators=(',', ':'))}"
                           for k, v in sorted(files.items())),
    ]
    manifest = ("\n".join(lines) + "\n").encode()
    (sets / L1 / "backup.manifest").write_bytes(manifest)
    return manifest


def test_verify_set_from_the_files_it_needs(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    repo = tmp_path / "repo"
    manifest = build(repo)
    sets, wal = repo / "backup" / "st", repo / "archive" / "st" / "15-1" / "0000000100000000"

    def verify(**kw: str) -> pgv.Verified:
        return pgv.verify_set("b1", manifest, repo, "st", "0/3000090", **kw)

    done = verify()
    assert (done.scope, done.files, done.wal) == (
        "set", 4, ("000000010000000000000002", "000000010000000000000003"))

    # a valid gzip of other content, in a file without rck: found by its checksum
    pg_version = sets / L1 / "pg_data" / "PG_VERSION.gz"
    pg_version.write_bytes(gzip.compress(b"16\n"))
    with pytest.raises(BackupCorrupt, match=rf"^backup b1: pgBackRest backup {L1}: pg_data/"
                                            rf"PG_VERSION is damaged \(sha1 .*{pg_version}$"):
        verify()
    pg_version.write_bytes(gzip.compress(b"15\n"))

    # one byte of the second file in the bundle
    bundle = sets / L1 / "bundle" / "1"
    data = bytearray(bundle.read_bytes())
    data[-20] ^= 0xFF
    bundle.write_bytes(bytes(data))
    with pytest.raises(BackupCorrupt, match=r"pg_data/base/1/1259_fsm is damaged .* at offset "):
        verify()
    data[-20] ^= 0xFF
    bundle.write_bytes(bytes(data))

    # the file the earlier backup holds, missing
    held = sets / L0 / "pg_data" / "global" / "1262.gz"
    held.rename(tmp_path / "aside")
    with pytest.raises(BackupCorrupt, match=rf"pg_data/global/1262 \(held by {L0}\) is missing "
                                            f"from the repository: {held}$"):
        verify()
    (tmp_path / "aside").rename(held)

    # the restore point's segment, with other content than its name says
    (seg3,) = wal.glob("000000010000000000000003-*")
    seg3.write_bytes(gzip.compress(b"\0" * SEG, 1))
    with pytest.raises(BackupCorrupt, match=r"WAL segment 000000010000000000000003 is damaged "
                                            r"\(sha1 .*, its name says "):
        verify()

    # what the module cannot read: the caller verifies the whole repository instead
    for kw, reason in [({"repo_type": "s3"}, "repo1-type=s3"),
                       ({"repo_host": "backup1"}, "repo1-host=backup1"),
                       ({"cipher_type": "aes-256-cbc"}, "encrypted")]:
        with pytest.raises(pgv.NotVerifiable, match=reason):
            verify(**kw)
    seg3.rename(seg3.with_name(seg3.name.replace(".gz", ".zst")))
    monkeypatch.setattr(pgv.shutil, "which", lambda name: None)
    with pytest.raises(pgv.NotVerifiable, match="zstd is not installed"):
        verify()

    # the segment size from the backup's LSNs and segment names; pg_walfile_name's boundary
    m = pgv.parse_manifest(manifest)
    assert pgv.wal_needed(m, "0/3000000") == (["000000010000000000000002"], SEG)
    small = pgv.SetManifest(**{**m.__dict__, "archive_start": "000000010000000000000040",
                               "archive_stop": "000000010000000000000041",
                               "lsn_start": "0/4000028", "lsn_stop": "0/4100010"})
    assert pgv.wal_needed(small, "0/4200010") == (
        [f"0000000100000000000000{n:X}" for n in (0x40, 0x41, 0x42)], 1 << 20)
    assert pgv.segment_name("00000002", 0x1000, 1 << 20) == "000000020000000100000000"
    assert pgv.segment_name("00000002", 0x100, SEG) == "000000020000000100000000"
