"""``statekeeper keys`` and ``statekeeper ledger`` against real temporary databases: exit codes,
the exact one-line messages, configuration discovery, and no password or traceback, ever."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

import ledger
from cli.main import cli
from tests.pgcluster import PgCluster
from tests.test_ledger_support import RawDB

ROOT = Path(__file__).resolve().parent.parent
Invoke = Callable[..., Result]


def run(*args: str, env: dict[str, str] | None = None) -> Result:
    """Invoke the CLI in-process; a Python exception escaping it is a test failure."""
    result = CliRunner(env={"STATEKEEPER_CONFIG": None, **(env or {})}).invoke(
        cli, list(args), prog_name="statekeeper"
    )
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"statekeeper {' '.join(args)} raised") from result.exception
    assert "Traceback" not in result.output
    return result


def error(result: Result, code: int) -> str:
    """The one-line error message of a failed command (asserting the exit code)."""
    assert result.exit_code == code, (result.exit_code, result.output)
    # nothing on stdout, or under --json the document of the error
    assert result.stdout == "" or json.loads(result.stdout)["exit_code"] == code
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.fixture
def work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty working directory (no statekeeper.toml) with a signing key ``k.pem``."""
    d = tmp_path / "work"
    d.mkdir()
    monkeypatch.chdir(d)
    monkeypatch.delenv("STATEKEEPER_CONFIG", raising=False)
    ledger.generate_key_file(d / "k.pem")
    return d


@pytest.fixture
def sk(work: Path, db_url: str) -> Invoke:
    """``statekeeper --ledger <db_url> --key k.pem ...`` on each backend."""

    def invoke(*args: str) -> Result:
        return run("--ledger", db_url, "--key", "k.pem", *args)

    return invoke


def OK(command: str) -> dict[str, object]:
    """The members every --json result of a command that succeeded has."""
    return {"ok": True, "exit_code": 0, "command": command, "error": None}


def _head(db_url: str) -> tuple[int, str]:
    with ledger.Ledger(db_url, create=False) as lg:
        h = lg.head()
    return h.seq, h.hash


# -- keys -------------------------------------------------------------------------------------
def test_keys_generate(work: Path) -> None:
    r = run("keys", "generate", "--out", "new.pem")
    key_id = ledger.load_signer(work / "new.pem").key_id
    assert r.exit_code == 0
    assert r.stdout == f"wrote new.pem (private, mode 0600) and new.pem.pub\nkey id {key_id}\n"
    assert (work / "new.pem").stat().st_mode & 0o777 == 0o600
    assert ledger.load_public_key(work / "new.pem.pub").key_id == key_id
    assert error(run("keys", "generate", "--out", "new.pem"), 2) == (
        "error: new.pem: already exists; refusing to overwrite a signing key"
    )
    assert error(run("keys", "generate", "--out", "no/such/k.pem"), 2) == (
        "error: no/such/k.pem: directory no/such does not exist"
    )


def test_keys_rotate_and_list(sk: Invoke, work: Path, db_url: str) -> None:
    assert sk("ledger", "append", "--stream", "s", "--type", "t").exit_code == 0
    old = ledger.load_signer(work / "k.pem").key_id
    new = ledger.generate_key_file(work / "k2.pem").key_id
    r = sk("keys", "rotate", "--new-key", "k2.pem")
    assert r.exit_code == 0
    # seq 3 and 4: the keys.rotate operation's op.created and step.started (ops/<id>)
    line, op = r.stdout.splitlines()
    assert line == "rotated signing key at seq 5; sign with k2.pem from now on"
    assert op.startswith("recorded as operation ")
    listed = json.loads(sk("keys", "list", "--json").stdout)
    assert [k["key_id"] for k in listed] == [old, new]
    assert sk("keys", "list").stdout.splitlines()[1].startswith(f"{new}  ")
    assert error(sk("ledger", "append", "--stream", "s", "--type", "t"), 2).startswith(
        f"error: key {old[:16]}... is a retired key of this ledger; its active key is "
    )
    r = run("--ledger", db_url, "--key", "k2.pem",
            "ledger", "append", "--stream", "s", "--type", "t")
    assert r.exit_code == 0
    assert sk("ledger", "verify").exit_code == 0


# -- append -----------------------------------------------------------------------------------
def test_append(sk: Invoke, db_url: str) -> None:
    r = sk("ledger", "append", "--stream", "run/1", "--type", "planned",
           "--payload", '{"b":1,"a":"é"}')
    seq, h = _head(db_url)
    assert (r.exit_code, r.stdout) == (0, f"appended seq 2 (run/1 #1) {h}\n")
    assert seq == 2
    with ledger.Ledger(db_url, create=False) as lg:
        assert next(lg.read(2, 2)).payload == '{"a":"é","b":1}'
    r = sk("ledger", "append", "--stream", "run/1", "--type", "t", "--json")
    assert json.loads(r.stdout) == {"seq": 3, "stream": "run/1", "stream_seq": 2,
                                    "hash": _head(db_url)[1], **OK("ledger append")}
    r = sk("ledger", "append", "--stream", "run/1", "--type", "t", "--expected-position", "2")
    assert r.exit_code == 0


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--payload", "{bad"], 2, "error: --payload is not valid JSON: Expecting property name "
                                   "enclosed in double quotes: line 1 column 2 (char 1)"),
        (["--payload", '{"a":1.5}'], 2, "error: --payload: floats are not allowed: 1.5"),
        (["--payload", '{"a":1,"a":2}'], 2, "error: --payload: duplicate key 'a'"),
        (["--payload", "[1]"], 2, "error: --payload must be a JSON object"),
        (["--payload", '{"n":9007199254740992}'], 2,
         "error: payload of 't': $.n: integer 9007199254740992 is outside the I-JSON range"),
        (["--expected-position", "0"], 5,
         "error: stream 's' is at position 1, expected 0: another writer appended first"),
        (["--payload", '{"a":' + "[" * 5000 + "]" * 5000 + "}"], 2,
         "error: --payload is nested too deeply"),
        (["--expected-position", "x"], 2, None),
    ],
    ids=["bad-json", "float", "duplicate-key", "not-an-object", "big-int", "conflict",
         "too-deep", "bad-position"],
)
def test_append_refused(
    sk: Invoke, db_url: str, args: list[str], code: int, message: str | None
) -> None:
    assert sk("ledger", "append", "--stream", "s", "--type", "t").exit_code == 0
    head = _head(db_url)
    r = sk("ledger", "append", "--stream", "s", "--type", "t", *args)
    if message is None:  # click's own usage error
        assert r.exit_code == code and "Error: Invalid value for '--expected-position'" in r.stderr
    else:
        assert error(r, code) == message
    assert _head(db_url) == head  # nothing written


@pytest.mark.parametrize("stream", ["upgrade/20260101-000000-abcdef", "ops/1", "Upgrade/x"])
def test_append_refuses_the_streams_statekeeper_replays(
    sk: Invoke, db_url: str, stream: str
) -> None:
    assert sk("ledger", "append", "--stream", "s", "--type", "t").exit_code == 0
    head = _head(db_url)
    r = sk("ledger", "append", "--stream", stream, "--type", "run.created")
    assert error(r, 2) == (
        f"error: --stream {stream}: streams under upgrade/, ops/ are reserved for "
        "statekeeper's own runs and operations, which it replays"
    )
    assert _head(db_url) == head


# -- verify -----------------------------------------------------------------------------------
def _tamper_payload(db_url: str, seq: int) -> None:
    with RawDB(db_url) as db:
        db.disable_triggers()
        db.execute("UPDATE ledger_events SET payload = ? WHERE seq = ?", ['{"x":2}', seq])


def test_verify(sk: Invoke, db_url: str) -> None:
    for i in range(3):
        assert sk("ledger", "append", "--stream", "s", "--type", "t",
                  "--payload", f'{{"x":{i}}}').exit_code == 0
    h = _head(db_url)[1]
    r = sk("ledger", "verify")
    assert (r.exit_code, r.stdout) == (0, f"ok: 4 events verified, head seq 4 {h}\n")
    r = sk("ledger", "verify", "--json")
    data = json.loads(r.stdout)
    with ledger.Ledger(db_url, create=False) as lg:
        ledger_id, listed = lg.ledger_id(), lg.keys()
    keys = [k.key_id for k in listed]
    assert r.exit_code == 0
    assert data == {"events": 4, "head_seq": 4, "head_hash": h,
                    "ledger_id": ledger_id, "keys": keys, "against": None,
                    **OK("ledger verify")}

    _tamper_payload(db_url, 3)
    assert error(sk("ledger", "verify"), 4) == (
        "error: seq 3: hash mismatch: stored hash does not match the event"
    )
    r = sk("ledger", "verify", "--json")
    assert r.exit_code == 4 and r.stderr == ""
    doc = json.loads(r.stdout)
    assert doc.pop("error") == {"class": "IntegrityError", "exit_code": 4, "message":
                                "seq 3: hash mismatch: stored hash does not match the event"}
    assert doc == {"ok": False, "exit_code": 4, "command": "ledger verify", "seq": 3,
                   "reason": "hash mismatch", "detail": "stored hash does not match the event"}


def test_verify_needs_no_key_and_creates_nothing(work: Path) -> None:
    assert error(run("--ledger", "sqlite:///none.db", "ledger", "verify"), 2) == (
        f"error: ledger sqlite:///{work}/none.db: no ledger there ({work}/none.db does not exist)"
    )
    assert not (work / "none.db").exists()


@pytest.mark.postgresql
def test_verify_of_a_database_without_a_ledger(work: Path, pg_url: str) -> None:
    assert error(run("--ledger", pg_url, "ledger", "verify"), 2) == (
        f"error: ledger {pg_url}: no ledger there yet"  # as given, not postgresql+psycopg://
    )
    with RawDB(pg_url) as db:
        assert db.scalar("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'") == 0


# -- checkpoint and --against -----------------------------------------------------------------
def test_checkpoint_and_verify_against(sk: Invoke, db_url: str, work: Path) -> None:
    for _ in range(3):
        sk("ledger", "append", "--stream", "s", "--type", "t")
    r = sk("ledger", "checkpoint", "--out", "cp.txt")
    assert (r.exit_code, r.stdout) == (0, "wrote checkpoint at seq 4 to cp.txt\n")
    cp = ledger.parse_checkpoint((work / "cp.txt").read_text())
    assert (cp.seq, cp.head_hash) == _head(db_url)
    sk("ledger", "append", "--stream", "s", "--type", "t")
    h = _head(db_url)[1]
    r = sk("ledger", "verify", "--against", "cp.txt")
    assert r.stdout == f"ok: 5 events verified, head seq 5 {h}; extends checkpoint at seq 4\n"
    assert json.loads(sk("ledger", "verify", "--against", "cp.txt", "--json").stdout)[
        "against"] == {"seq": 4, "hash": cp.head_hash}

    with RawDB(db_url) as db:  # cut the last two appends, at a seal boundary
        db.disable_triggers()
        db.execute("DELETE FROM ledger_events WHERE seq >= 4")
        db.execute("DELETE FROM ledger_seals WHERE seq >= 4")
    assert sk("ledger", "verify").exit_code == 0  # nothing to see without the checkpoint
    assert error(sk("ledger", "verify", "--against", "cp.txt"), 4) == (
        "error: seq 4: truncated: log ends at seq 3, checkpoint vouches for seq 4"
    )
    assert error(sk("ledger", "verify", "--against", "missing.txt"), 2) == (
        "error: missing.txt: checkpoint file not found"
    )
    (work / "junk.txt").write_text("hello\n")
    assert error(sk("ledger", "verify", "--against", "junk.txt"), 2) == (
        "error: junk.txt: not a signed note (no blank line before the signature)"
    )
    assert error(sk("ledger", "checkpoint", "--out", "nodir/cp.txt"), 2) == (
        "error: nodir/cp.txt: directory nodir does not exist"
    )
    (work / "adir").mkdir()
    assert error(sk("ledger", "checkpoint", "--out", "adir"), 2) == (
        "error: adir: cannot write: Is a directory"
    )
    assert error(sk("ledger", "export", "--out", "adir"), 2) == (
        "error: adir: cannot write: Is a directory"
    )
    assert sorted(p.name for p in (work / "adir").iterdir()) == []


def test_checkpoint_refuses_to_sign_a_broken_ledger(sk: Invoke, db_url: str, work: Path) -> None:
    sk("ledger", "append", "--stream", "s", "--type", "t")
    _tamper_payload(db_url, 2)
    assert error(sk("ledger", "checkpoint", "--out", "cp.txt"), 4) == (
        "error: seq 2: hash mismatch: stored hash does not match the event"
    )
    assert not (work / "cp.txt").exists()


# -- export and verify-export -----------------------------------------------------------------
def test_export_and_verify_export(sk: Invoke, db_url: str, work: Path) -> None:
    for stream in ("run/a", "run/b", "run/a"):
        sk("ledger", "append", "--stream", stream, "--type", "t")
    sk("ledger", "checkpoint", "--out", "cp.txt")
    h = _head(db_url)[1]

    r = sk("ledger", "export", "--out", "all.jsonl")
    assert (r.exit_code, r.stdout) == (0, "exported 4 events to all.jsonl\n")
    r = sk("ledger", "export", "--out", "a.jsonl", "--stream", "run/a")
    assert (r.exit_code, r.stdout) == (0, "exported 2 events to a.jsonl\n")

    # Verifying an export needs no database and no key: no --ledger, no --key.
    # It says what it proved and what it did not.
    r = run("ledger", "verify-export", "all.jsonl")
    out = r.stdout.splitlines()
    assert (r.exit_code, out[0]) == (0, f"ok: 4 events of ledger verified, head seq 4 {h}")
    assert out[1].startswith("proved: the export is internally consistent: events 1..4 ")
    assert out[2].startswith(f"proved: the closing checkpoint (size 4, hash {h}) is signed")
    assert out[3] == (
        "not proved: that nothing was cut or rewritten: without --against, only internal "
        "consistency and the signatures of the keys in the export are proved; deletion of a "
        "whole tail after the last checkpoint you hold cannot be detected, nor a rewrite by "
        "the holder of the signing key"
    )
    assert out[4].startswith("not proved: who signed: ")
    assert out[5].startswith("not proved: when: recorded_at is the appending host's clock")
    r = run("ledger", "verify-export", "a.jsonl")
    assert r.exit_code == 0
    out = r.stdout.splitlines()
    assert out[0] == f"ok: 2 events of stream run/a verified, head seq 4 {h}"
    assert out[1].startswith("proved: stream run/a is internally consistent: positions 1..2 ")
    assert out[3].startswith("not proved: that the stream has no events after its last ")
    r = run("ledger", "verify-export", "all.jsonl", "--against", "cp.txt", "--json",
            "--trusted-key", "k.pem.pub")
    assert r.exit_code == 0
    doc = json.loads(r.stdout)
    key = ledger.load_public_key(work / "k.pem.pub").key_id
    proved, not_proved = doc.pop("proved"), doc.pop("not_proved")
    assert doc == {**OK("ledger verify-export"), "events": 4, "head_seq": 4, "head_hash": h,
                   "ledger_id": json.loads((work / "all.jsonl").read_text()
                                           .splitlines()[0])["ledger_id"],
                   "stream": None, "keys": [key], "trusted_keys": [key],
                   "checkpoint": {"seq": 4, "hash": h, "key_id": key},
                   "against": {"seq": 4, "hash": h, "key_id": key, "events_after": 0}}
    assert proved[0] == (
        f"extends the checkpoint at seq 4 (hash {h}): the export's first 4 events are the "
        "checkpointed history, unchanged; 0 events after it verify"
    )
    assert proved[-1] == "every seal and the closing checkpoint are by a key given with " \
        "--trusted-key"
    assert not_proved[0].startswith("anything after seq 4: ")
    assert len(not_proved) == 2  # and the clock
    assert error(run("ledger", "verify-export", "a.jsonl", "--against", "cp.txt"), 2) == (
        "error: --against needs a full-ledger export, not a stream export"
    )

    lines = (work / "all.jsonl").read_text().splitlines()
    lines[3] = lines[3].replace('"type":"t"', '"type":"T"')
    (work / "bad.jsonl").write_text("\n".join(lines) + "\n")
    assert error(run("ledger", "verify-export", "bad.jsonl"), 4) == (
        "error: seq 3: hash mismatch: stored hash does not match the event"
    )
    r = run("ledger", "verify-export", "bad.jsonl", "--json")
    assert r.exit_code == 4
    doc = json.loads(r.stdout)
    assert doc.pop("error") == {"class": "IntegrityError", "exit_code": 4, "message":
                                "seq 3: hash mismatch: stored hash does not match the event"}
    assert doc == {"ok": False, "exit_code": 4, "command": "ledger verify-export", "seq": 3,
                   "reason": "hash mismatch", "detail": "stored hash does not match the event"}

    # An export cut short by an insider with the key verifies alone, not against the checkpoint.
    sk("ledger", "append", "--stream", "run/c", "--type", "t")
    sk("ledger", "checkpoint", "--out", "cp5.txt")
    assert error(run("ledger", "verify-export", "all.jsonl", "--against", "cp5.txt"), 4) == (
        "error: seq 5: truncated: log ends at seq 4, checkpoint vouches for seq 5"
    )
    r = sk("ledger", "export", "--out", "all5.jsonl")
    r = run("ledger", "verify-export", "all5.jsonl", "--against", "cp.txt")
    assert r.exit_code == 0
    h5 = _head(db_url)[1]
    assert r.stdout.splitlines()[:2] == [
        f"ok: 5 events of ledger verified, head seq 5 {h5}",
        f"proved: extends the checkpoint at seq 4 (hash {h}): the export's first 4 events "
        "are the checkpointed history, unchanged; 1 event after it verifies",
    ]
    # a stream's checkpoint counts the stream's positions: never read as the ledger's seq
    (work / "a-cp.txt").write_text(json.loads(
        (work / "a.jsonl").read_text().splitlines()[-1])["checkpoint"])
    assert error(run("ledger", "verify-export", "all5.jsonl", "--against", "a-cp.txt"), 4) == (
        "error: ledger: checkpoint mismatch: --against checkpoint is one of stream run/a, not "
        "of the whole ledger (its size counts the stream's positions)"
    )
    assert error(run("ledger", "verify-export", "missing.jsonl"), 2) == (
        "error: missing.jsonl: no such export file"
    )
    (work / "empty.jsonl").write_text("")
    assert error(run("ledger", "verify-export", "empty.jsonl"), 2) == (
        "error: empty.jsonl: empty file, not a ledger export"
    )
    (work / "bin.jsonl").write_bytes(b"\xff\xfe\x00garbage")
    assert error(run("ledger", "verify-export", "bin.jsonl"), 2) == (
        "error: bin.jsonl: not UTF-8 text"
    )
    assert error(run("ledger", "verify-export", "."), 2).startswith("error: .: cannot read")
    assert error(sk("ledger", "export", "--out", "x.jsonl", "--stream", "nobody"), 2) == (
        "error: stream 'nobody' has no events"
    )
    assert not (work / "x.jsonl").exists()


def test_empty_ledger_has_nothing_to_checkpoint_or_export(sk: Invoke, db_url: str) -> None:
    with ledger.Ledger(db_url):  # the schema, no events
        pass
    assert error(sk("ledger", "checkpoint", "--out", "cp.txt"), 2) == (
        "error: the ledger is empty: nothing to checkpoint"
    )
    assert error(sk("ledger", "export", "--out", "x.jsonl"), 2) == (
        "error: the ledger is empty: nothing to export"
    )


def test_export_of_a_broken_ledger_writes_no_file(sk: Invoke, db_url: str, work: Path) -> None:
    sk("ledger", "append", "--stream", "s", "--type", "t")
    _tamper_payload(db_url, 2)
    assert error(sk("ledger", "export", "--out", "x.jsonl"), 4) == (
        "error: seq 2: hash mismatch: stored hash does not match the event"
    )
    assert sorted(p.name for p in work.iterdir()) == ["k.pem", "k.pem.pub"]


# -- configuration ----------------------------------------------------------------------------
def _project(root: Path) -> Path:
    """A project directory with statekeeper.toml naming a relative ledger and key."""
    (root / "data").mkdir(parents=True)
    (root / "keys").mkdir()
    ledger.generate_key_file(root / "keys" / "sk.pem")
    (root / "statekeeper.toml").write_text(
        '[ledger]\nurl = "sqlite:///data/ledger.db"\nkey = "keys/sk.pem"\n'
    )
    return root / "statekeeper.toml"


def test_config_in_the_working_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _project(tmp_path / "app")
    monkeypatch.chdir(tmp_path / "app")
    assert run("ledger", "append", "--stream", "s", "--type", "t").exit_code == 0
    assert (tmp_path / "app" / "data" / "ledger.db").exists()


@pytest.mark.parametrize("how", ["--config", "STATEKEEPER_CONFIG"])
def test_config_paths_are_relative_to_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    conf = _project(tmp_path / "app")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    args = ["ledger", "append", "--stream", "s", "--type", "t"]
    if how == "--config":
        r = run("--config", "../app/statekeeper.toml", *args)
    else:
        r = run(*args, env={"STATEKEEPER_CONFIG": str(conf)})
    assert r.exit_code == 0, r.output
    assert (tmp_path / "app" / "data" / "ledger.db").exists()
    assert list((tmp_path / "elsewhere").iterdir()) == []


def test_flags_override_the_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _project(tmp_path / "app")
    monkeypatch.chdir(tmp_path / "app")
    other = ledger.generate_key_file(tmp_path / "app" / "other.pem")
    # Relative paths given as flags are relative to the working directory.
    r = run("--ledger", "sqlite:///mine.db", "--key", "other.pem",
            "ledger", "append", "--stream", "s", "--type", "t")
    assert r.exit_code == 0, r.output
    assert not (tmp_path / "app" / "data" / "ledger.db").exists()
    with ledger.Ledger(f"sqlite:///{tmp_path / 'app' / 'mine.db'}", create=False) as lg:
        assert lg.verify().keys == [other.key_id]
    (tmp_path / "sub").mkdir()
    monkeypatch.chdir(tmp_path / "sub")
    r = run("--config", "../app/statekeeper.toml", "--ledger", "sqlite:///here.db",
            "ledger", "append", "--stream", "s", "--type", "t")
    assert r.exit_code == 0, r.output
    assert (tmp_path / "sub" / "here.db").exists()


def test_default_ledger_and_key_live_in_dot_statekeeper(work: Path) -> None:
    assert error(run("ledger", "append", "--stream", "s", "--type", "t"), 2) == (
        f"error: {work}/.statekeeper/signing-key.pem: key file not found (create one with "
        f"'statekeeper keys generate --out {work}/.statekeeper/signing-key.pem')"
    )
    (work / ".statekeeper").mkdir()
    assert run("keys", "generate", "--out", ".statekeeper/signing-key.pem").exit_code == 0
    assert run("ledger", "append", "--stream", "s", "--type", "t").exit_code == 0
    assert (work / ".statekeeper" / "ledger.db").exists()
    assert run("ledger", "verify").stdout.startswith("ok: 2 events verified")


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ("[ledger\n", "not valid TOML"),
        ('[ledger]\nurl = "sqlite:///x.db"\nkye = "k.pem"\n', "unknown key [ledger] kye"),
        ("[ledgr]\n", "unknown section [ledgr]"),
        ("[ledger]\nurl = 5\n", "[ledger] url must be a string, not integer"),
        ('[ledger]\nurl = "${NO_SUCH_VAR_HERE}"\n',
         "environment variable NO_SUCH_VAR_HERE is not set"),
        ('[ledger]\nurl = "mysql://u:secret@h/db"\n', "unsupported scheme 'mysql'"),
    ],
    ids=["bad-toml", "unknown-key", "unknown-section", "wrong-type", "unset-env", "bad-scheme"],
)
def test_bad_config_is_one_line_naming_the_file(work: Path, toml: str, message: str) -> None:
    (work / "statekeeper.toml").write_text(toml)
    line = error(run("ledger", "verify"), 2)
    assert message in line
    assert "secret" not in line
    if "scheme" not in message:
        assert line.startswith(f"error: {work}/statekeeper.toml: ")


def test_named_config_must_exist(work: Path) -> None:
    assert error(run("--config", "nope.toml", "ledger", "verify"), 2) == (
        f"error: {work}/nope.toml: configuration file not found"
    )
    assert error(run("ledger", "verify", env={"STATEKEEPER_CONFIG": "nope.toml"}), 2) == (
        f"error: {work}/nope.toml: configuration file not found"
    )


# -- secrets and bad input --------------------------------------------------------------------
COMMANDS = [
    ["ledger", "verify"],
    ["ledger", "verify", "--json"],
    ["ledger", "append", "--stream", "s", "--type", "t"],
    ["ledger", "checkpoint", "--out", "cp.txt"],
    ["ledger", "export", "--out", "x.jsonl"],
    ["keys", "list"],
    ["keys", "rotate", "--new-key", "k.pem"],
]


@pytest.mark.postgresql
@pytest.mark.parametrize("command", COMMANDS, ids=[" ".join(c[:2]) for c in COMMANDS])
def test_password_never_printed(work: Path, pg_cluster: PgCluster, command: list[str]) -> None:
    urls = {
        # the server answers: no such role
        f"postgresql://nobody:secret@127.0.0.1:{pg_cluster.port}/postgres": 6,
        # nobody listens there
        "postgresql://user:secret@127.0.0.1:1/db": 6,
        "postgresql+psycopg://user:secret@127.0.0.1:1/db?sslmode=disable": 6,
        "postgresql://user@127.0.0.1:1/db?password=secret": 6,
        "postgresql://user:secret@127.0.0.1:notaport/db": 2,
        "postgresql://user:secret@[::1/db": 2,
        "mysql://user:secret@127.0.0.1/db": 2,
        "postgresql://user:secret@127.0.0.1:1/": 2,
    }
    for url, code in urls.items():
        r = run("--ledger", url, "--key", "k.pem", *command)
        line = error(r, code)
        assert "secret" not in r.output, (url, r.output)
        assert line.startswith("error: "), line
    # From the configuration file, with the password interpolated from the environment.
    (work / "statekeeper.toml").write_text(
        '[ledger]\nurl = "postgresql://u:${PGPW}@127.0.0.1:1/db"\nkey = "k.pem"\n'
    )
    r = run(*command, env={"PGPW": "secret"})
    assert "secret" not in r.output and error(r, 6).startswith("error: ledger ")


def test_unreachable_ledger_message(work: Path) -> None:
    r = run("--ledger", "postgresql://user:secret@127.0.0.1:1/db", "ledger", "verify")
    assert error(r, 6) == (
        "error: ledger unreachable: postgresql://user:***@127.0.0.1:1/db: "
        'connection to server at "127.0.0.1", port 1 failed: Connection refused'
    )


@pytest.mark.parametrize(
    ("args", "code"),
    [
        (["ledger", "verify", "--against"], 2),
        (["ledger", "nosuch"], 2),
        (["ledger", "append", "--stream", "s"], 2),
        (["ledger", "append", "--stream", "", "--type", "t"], 2),
        (["ledger", "append", "--stream", "s" * 201, "--type", "t"], 2),
        (["ledger", "append", "--stream", "s", "--type", "t", "--payload", '"\\ud800"'], 2),
        (["ledger", "append", "--stream", "s", "--type", "t", "--payload", '{"a":"\\ud800"}'], 2),
        (["--ledger", "", "ledger", "verify"], 2),
        (["--key", "", "ledger", "append", "--stream", "s", "--type", "t"], 2),
        (["--ledger", "sqlite://", "ledger", "verify"], 2),
        (["--ledger", "sqlite:///no/such/dir/x.db", "ledger", "append", "--stream", "s",
          "--type", "t"], 6),
        (["--key", "missing.pem", "ledger", "append", "--stream", "s", "--type", "t"], 2),
        (["--key", "world.pem", "ledger", "append", "--stream", "s", "--type", "t"], 2),
        (["--key", "junk.pem", "ledger", "append", "--stream", "s", "--type", "t"], 2),
        (["ledger", "verify", "--trusted-key", "missing.pub"], 2),
        (["ledger", "verify-export", "junk.pem"], 2),
        (["ledger", "verify-export", "header-only.jsonl"], 2),
        (["keys", "rotate", "--new-key", "missing.pem"], 2),
    ],
)
def test_bad_input_is_one_line_never_a_traceback(work: Path, args: list[str], code: int) -> None:
    ledger.generate_key_file(work / "world.pem")
    (work / "world.pem").chmod(0o644)
    (work / "junk.pem").write_text("junk\n")
    (work / "junk.pem").chmod(0o600)
    (work / "header-only.jsonl").write_text('{"format":"statekeeper-ledger-export"}\n')
    run("--key", "k.pem", "ledger", "append", "--stream", "s", "--type", "t")
    r = run("--key", "k.pem", *args) if args[0] != "--key" else run(*args)
    assert r.exit_code == code, r.output
    if r.stderr.startswith("error: "):
        assert len(r.stderr.splitlines()) == 1, r.stderr
    else:  # click's usage errors: a usage line, a hint, and the error
        assert "Error: " in r.stderr


def test_world_readable_key_message(work: Path) -> None:
    (work / "k.pem").chmod(0o640)
    r = run("--key", "k.pem", "ledger", "append", "--stream", "s", "--type", "t")
    assert error(r, 2) == (
        f"error: {work}/k.pem: private key is readable by group or others (mode 0640); "
        f"fix it with 'chmod 600 {work}/k.pem'"
    )


def test_console_script_end_to_end(tmp_path: Path) -> None:
    """The installed entry point, in real processes: success, an integrity failure, bad input."""
    env = {k: v for k, v in os.environ.items() if k != "STATEKEEPER_CONFIG"}
    exe = [sys.executable, "-c", "from cli.main import main; main()"]

    def sk(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*exe, *args], cwd=tmp_path, env={**env, "PYTHONPATH": str(ROOT)},
                              capture_output=True, text=True, timeout=60)

    assert sk("keys", "generate", "--out", "k.pem").returncode == 0
    r = sk("--ledger", "sqlite:///l.db", "--key", "k.pem", "ledger", "append", "--stream", "s",
           "--type", "t", "--payload", '{"n":1}')
    assert (r.returncode, r.stderr) == (0, "")
    _tamper_payload(f"sqlite:///{tmp_path / 'l.db'}", 2)
    r = sk("--ledger", "sqlite:///l.db", "ledger", "verify")
    assert (r.returncode, r.stdout, r.stderr) == (
        4, "", "error: seq 2: hash mismatch: stored hash does not match the event\n"
    )
    r = sk("--ledger", "postgresql://u:secret@127.0.0.1:x/db", "ledger", "verify")
    assert (r.returncode, r.stderr) == (
        2, "error: --ledger URL 'postgresql://***' is not a database URL\n"
    )


@pytest.mark.parametrize("args", [["history"], ["status"], ["ledger", "verify"]])
def test_before_init_there_is_no_ledger_yet(work: Path, args: list[str]) -> None:
    assert error(run(*args), 2) == (
        f"error: no ledger yet in {work}/.statekeeper: run 'statekeeper init' "
        "(or pass --ledger URL)"
    )
    assert not (work / ".statekeeper").exists()
