"""Fuzzing statekeeper.toml loading (hypothesis).

Whatever the file holds (random bytes, random TOML documents with wrong types, unknown
sections and keys, ``${`` edge cases, undefined variables, URL metacharacters in the
environment, mutations of a valid file), ``load_config`` either returns a Config whose URLs a
Target/ledger then accepts, or raises ConfigError: one line, naming the file. Never another
exception type, and never the value of an environment variable used in a URL's password.

Example counts: random bytes 300, random documents 500, mutations of a valid file 300.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from ledger import normalize_url
from statekeeper.config import SCHEMA, UNSUPPORTED, load_config
from statekeeper.errors import ConfigError
from statekeeper.targets import Target

SECRET = "Zq9Secr3tW"
FUZZ = settings(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

# Names of variables the environment defines; others are undefined on purpose.
DEFINED = ("PW", "HOST", "DB", "A_1")
ENV_VALUE = st.text(
    alphabet=st.sampled_from(list("@/#%:? &=+;'\"\\[]{}$\n\t\x00é") + list("abcXYZ019")),
    max_size=12,
)

PIECES = [
    "${PW}", "${HOST}", "${DB}", "${A_1}", "${UNDEFINED}", "${", "$${", "$$", "$", "}", "${}",
    "${1X}", "${A-B}", "${ PW}", "${PW", "://", "@", "/", ":", "?", "#", "%", "%2F", "=", "&",
    "postgresql://", "postgres://u:", "sqlite:///", "mysql://", "~", "~nouser/", "..", " ",
    "\n", "\x00", "db", "5432", "[::1]", "?sslmode=require", "?a=1&a=2", "?bogus=1",
]
FRAGMENT = st.lists(st.sampled_from(PIECES) | st.text(max_size=4), max_size=8).map("".join)

SECTIONS = [*SCHEMA, *UNSUPPORTED, "ledgr", "", "a b", "x\ny", "[", "é"]
KEYS = [*sorted({k for keys in SCHEMA.values() for k in keys}), "bogus", "", "x\ny", '"', "é"]

scalars = st.one_of(
    FRAGMENT,
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.dates(),
    st.datetimes(),
    st.times(),
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3)
    | st.dictionaries(st.sampled_from(["name", "sql", "expect", "x", ""]), inner, max_size=3),
    max_leaves=6,
)


def toml_key(k: str) -> str:
    return json.dumps(k)  # a TOML basic string is a valid key, whatever it holds


def toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, dt.datetime | dt.date | dt.time):
        return v.isoformat()
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{toml_key(k)} = {toml_value(x)}" for k, x in v.items()) + "}"
    raise AssertionError(type(v))


documents = st.dictionaries(
    st.sampled_from(SECTIONS),
    st.dictionaries(st.sampled_from(KEYS), values, max_size=5) | values,
    max_size=5,
)
environments = st.dictionaries(st.sampled_from(DEFINED), ENV_VALUE, max_size=len(DEFINED))


def render(doc: dict[str, Any]) -> str:
    top, tables = [], []
    for name, body in doc.items():
        if isinstance(body, dict):
            tables.append(f"[{toml_key(name)}]\n"
                          + "".join(f"{toml_key(k)} = {toml_value(v)}\n" for k, v in body.items()))
        else:
            top.append(f"{toml_key(name)} = {toml_value(body)}\n")
    return "".join(top) + "\n".join(tables)


def check(path: Path, data: bytes, env: dict[str, str]) -> None:
    path.write_bytes(data)
    try:
        cfg = load_config(str(path), env=env, cwd=path.parent)
    except ConfigError as e:
        msg = str(e)
        assert msg and "\n" not in msg and "\r" not in msg, repr(msg)
        assert str(path) in msg, msg
        assert SECRET not in msg, msg
        event("refused")
        return
    event("loaded")
    # What loaded is usable: the URLs are accepted where they are used.
    if cfg.target_url is not None:
        Target.from_url(cfg.target_url, cfg.base_dir)
    normalize_url(cfg.ledger.url, cfg.base_dir)


@pytest.fixture
def cfg_path(tmp_path: Path) -> Path:
    return tmp_path / "statekeeper.toml"


@settings(FUZZ, max_examples=300)
@given(data=st.binary(max_size=200) | st.binary(max_size=40).map(lambda b: b"\xef\xbb\xbf" + b))
def test_random_bytes(cfg_path: Path, data: bytes) -> None:
    check(cfg_path, data, {})


@settings(FUZZ, max_examples=500)
@given(doc=documents, env=environments, bom=st.booleans())
def test_random_documents(cfg_path: Path, doc: dict[str, Any], env: dict[str, str],
                          bom: bool) -> None:
    text = render(doc)
    check(cfg_path, (b"\xef\xbb\xbf" if bom else b"") + text.encode("utf-8", "surrogatepass"),
          env)


VALID = """[upgrade]
application = "app"

[ledger]
url = "postgresql://audit:${PW}@${HOST}:5432/${DB}?sslmode=require"
key = "keys/signing.pem"

[target]
url = "postgresql://app:${PW}@db:5432/trading"

[migrations]
dir = "migrations"

[backup]
method = "pg_dump"
dir = ".statekeeper/backups"
enabled = true
stop_command = "systemctl stop $${UNIT}"

[health]
checks = [{ name = "users", sql = "SELECT 1", expect = "1" }]
retries = 3
interval = 1
timeout = 10
"""


@settings(FUZZ, max_examples=300)
@given(
    edits=st.lists(st.tuples(st.integers(0, len(VALID)), st.integers(0, 3),
                             st.sampled_from([*PIECES, '"', "'", "[", "]", "=", "\n", "{"])),
                   min_size=1, max_size=4),
    pw=ENV_VALUE | st.just(SECRET + "@/#%"),
)
def test_mutations_of_a_valid_file(cfg_path: Path, edits: list[tuple[int, int, str]],
                                   pw: str) -> None:
    text = VALID
    for at, cut, insert in edits:
        at = min(at, len(text))
        text = text[:at] + insert + text[at + cut:]
    check(cfg_path, text.encode("utf-8", "surrogatepass"),
          {"PW": pw, "HOST": "db.internal", "DB": "audit"})


def test_the_valid_file_loads(cfg_path: Path) -> None:
    """The mutations start from a file that loads: they attack a real configuration."""
    cfg_path.write_text(VALID)
    cfg = load_config(str(cfg_path), env={"PW": SECRET + "@/#%", "HOST": "h", "DB": "d"})
    assert Target.from_url(cfg.ledger.url).url.password == SECRET + "@/#%"
    assert cfg.backup.stop_command == "systemctl stop ${UNIT}"
