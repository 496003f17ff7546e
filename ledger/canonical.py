"""Canonical JSON (RFC 8785 for the values the ledger allows).

Allowed: str, int (within +-(2**53-1), the I-JSON range), bool, None, list, dict with str keys.
Floats are refused: their text form is not stable across languages. Object keys are sorted by
UTF-16 code units as RFC 8785 requires; Python's ``sort_keys`` sorts by code point, which only
differs for keys holding characters above U+FFFF, so that case takes the slow path.
"""

from __future__ import annotations

import json
from json.encoder import c_make_encoder as _c_make_encoder  # type: ignore[attr-defined]
from json.encoder import encode_basestring as _encode_basestring
from typing import Any

from .errors import CanonicalError

__all__ = ["MAX_SAFE_INT", "CanonicalError", "dumps", "is_canonical", "loads"]

MAX_SAFE_INT = 2**53 - 1

_encoder = json.JSONEncoder(
    ensure_ascii=False, sort_keys=True, separators=(",", ":"), allow_nan=False
)
# The same encoder, made once rather than on every call (JSONEncoder.encode builds it anew).
# No circular-reference markers: _check has walked the whole value before it is encoded.
_c_encode = (
    None if _c_make_encoder is None else _c_make_encoder(
        None, _encoder.default, _encode_basestring, None, ":", ",", True, False, False
    )
)


def _check(value: Any, path: str) -> bool:
    """Validate ``value``; return True when a key needs UTF-16 ordering."""
    t = type(value)
    if t is str:
        return False
    if t is bool or value is None:
        return False
    if t is int:
        if -MAX_SAFE_INT <= value <= MAX_SAFE_INT:
            return False
        raise CanonicalError(f"{path}: integer {value} is outside the I-JSON range")
    if t is dict:
        slow = False
        for k, v in value.items():
            if type(k) is not str:
                raise CanonicalError(f"{path}: object key {k!r} is not a string")
            # Scalars are checked inline (this runs for every value appended); the recursive
            # call, and the path text for its error message, only for anything else.
            tv = type(v)
            if tv is str or tv is bool or v is None:
                continue
            if tv is int and -MAX_SAFE_INT <= v <= MAX_SAFE_INT:
                continue
            if _check(v, f"{path}.{k}"):
                slow = True
        # Only a key with a character above U+FFFF sorts differently (all keys at once).
        keys = "".join(value)
        if not keys.isascii() and any(ord(c) > 0xFFFF for c in keys):
            slow = True
        return slow
    if t is list or t is tuple:
        slow = False
        for i, v in enumerate(value):
            tv = type(v)
            if tv is str or tv is bool or v is None:
                continue
            if tv is int and -MAX_SAFE_INT <= v <= MAX_SAFE_INT:
                continue
            if _check(v, f"{path}[{i}]"):
                slow = True
        return slow
    if t is float:
        raise CanonicalError(f"{path}: floats are not allowed (use a string or an integer)")
    raise CanonicalError(f"{path}: {t.__name__} is not a JSON value")


def _utf16_sorted(value: Any) -> Any:
    if isinstance(value, dict):
        return {
            k: _utf16_sorted(value[k])
            for k in sorted(value, key=lambda s: s.encode("utf-16-be"))
        }
    if isinstance(value, list | tuple):
        return [_utf16_sorted(v) for v in value]
    return value


def dumps(value: Any) -> str:
    """Return the canonical text of ``value``."""
    if _check(value, "$"):
        text = json.dumps(
            _utf16_sorted(value), ensure_ascii=False, separators=(",", ":"), allow_nan=False
        )
    elif _c_encode is not None and type(value) is dict:
        text = "".join(_c_encode(value, 0))
    else:
        text = _encoder.encode(value)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise CanonicalError("$: string holds a lone surrogate, not valid UTF-8") from e
    return text


def loads(text: str) -> Any:
    """Parse JSON, refusing floats and duplicate keys (both break canonical round trips)."""

    def no_float(s: str) -> Any:
        raise CanonicalError(f"floats are not allowed: {s}")

    def no_dupes(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in pairs:
            if k in out:
                raise CanonicalError(f"duplicate key {k!r}")
            out[k] = v
        return out

    return json.loads(text, parse_float=no_float, object_pairs_hook=no_dupes)


def is_canonical(text: str) -> bool:
    try:
        return dumps(loads(text)) == text
    except (CanonicalError, ValueError):
        return False
