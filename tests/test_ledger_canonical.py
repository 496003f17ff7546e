"""Canonical JSON (ledger/canonical.py): sorted keys, no whitespace, UTF-8, RFC 8785 for the
values allowed; floats and integers outside +-(2**53-1) refused."""

from __future__ import annotations

from typing import Any

import pytest

from ledger.canonical import MAX_SAFE_INT, CanonicalError, dumps, is_canonical, loads


@pytest.mark.parametrize(
    ("value", "text"),
    [
        ({"b": 1, "a": 2}, '{"a":2,"b":1}'),
        (
            {"z": {"y": [1, {"d": None, "c": True}]}, "a": False},
            '{"a":false,"z":{"y":[1,{"c":true,"d":null}]}}',
        ),
        ({}, "{}"),
        ([], "[]"),
        ({"s": "größe ✓ 日本"}, '{"s":"größe ✓ 日本"}'),  # UTF-8, not \u escapes
        ({"s": 'q"b\\'}, '{"s":"q\\"b\\\\"}'),
        # RFC 8785 / ECMAScript escaping: short forms for \b\t\n\f\r, lowercase \u00xx for the
        # other controls; "/" and U+2028 and DEL are not escaped.
        (
            {"s": "\b\t\n\f\r\x00\x1f/\u2028\x7f"},
            '{"s":"\\b\\t\\n\\f\\r\\u0000\\u001f/\u2028\x7f"}',
        ),
        (
            {"n": MAX_SAFE_INT, "m": -MAX_SAFE_INT, "z": 0},
            '{"m":-9007199254740991,"n":9007199254740991,"z":0}',
        ),
        ((1, "a"), '[1,"a"]'),
    ],
    ids=["sorted", "nested", "empty-object", "empty-list", "utf8", "quote-backslash", "controls",
         "safe-ints", "tuple"],
)
def test_dumps(value: Any, text: str) -> None:
    assert dumps(value) == text
    assert is_canonical(text)
    assert dumps(loads(text)) == text


def test_keys_sorted_by_utf16_code_units_as_rfc8785_says() -> None:
    """RFC 8785 section 3.2.3's example: U+1F600 (a surrogate pair, 0xD83D...) sorts before
    U+FB33, although its code point is larger (Python's sort_keys would put it after)."""
    keys = ["\u20ac", "\r", "\ufb33", "1", "\U0001f600", "\u0080", "\u00f6"]
    text = dumps({k: i for i, k in enumerate(keys)})
    order = ["\r", "1", "\u0080", "\u00f6", "\u20ac", "\U0001f600", "\ufb33"]
    assert text == "{" + ",".join(f'"{dumps(k)[1:-1]}":{keys.index(k)}' for k in order) + "}"
    assert text.index("\U0001f600") < text.index("\ufb33")
    assert is_canonical(text)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (1.5, "floats are not allowed"),
        (1.0, "floats are not allowed"),
        ({"a": [0, {"b": 0.1}]}, r"\$\.a\[1\]\.b: floats are not allowed"),
        (float("nan"), "floats are not allowed"),
        (MAX_SAFE_INT + 1, "outside the I-JSON range"),
        (-MAX_SAFE_INT - 1, "outside the I-JSON range"),
        ({"big": 10**30}, r"\$\.big: integer 10{30} is outside"),
        ({1: "x"}, "is not a string"),
        ({"s": {1, 2}}, "set is not a JSON value"),
        ({"b": b"bytes"}, "bytes is not a JSON value"),
        ({"s": "\ud800"}, "lone surrogate"),
    ],
    ids=["float", "integral-float", "nested-float", "nan", "int-above", "int-below", "huge-int",
         "int-key", "set", "bytes", "lone-surrogate"],
)
def test_values_without_canonical_form_are_refused(value: Any, message: str) -> None:
    with pytest.raises(CanonicalError, match=message):
        dumps(value)


def test_booleans_are_not_integers() -> None:
    assert dumps({"t": True, "f": False, "one": 1}) == '{"f":false,"one":1,"t":true}'


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"a":1.5}', "floats are not allowed"),
        ('{"a":1e3}', "floats are not allowed"),
        ('{"a":1,"a":2}', "duplicate key 'a'"),
    ],
)
def test_loads_refuses_floats_and_duplicate_keys(text: str, message: str) -> None:
    with pytest.raises(CanonicalError, match=message):
        loads(text)


@pytest.mark.parametrize(
    "text",
    ['{"b":1,"a":2}', '{"a": 2}', '{"a":"\\u00e9"}', '{"a":1.5}', "{bad", '{"a":1}\n'],
    ids=["unsorted", "whitespace", "escaped-non-ascii", "float", "not-json", "trailing-newline"],
)
def test_is_canonical_rejects_other_texts_of_the_same_value(text: str) -> None:
    assert not is_canonical(text)
