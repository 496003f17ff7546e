"""Canonical JSON (ledger/canonical.py): sorted keys, no whitespace, UTF-8, RFC 8785 for the
values allowed; floats and integers outside +-(2**53-1) refused."""

from __future__ import annotations

from typing import Any

import pytest
import rfc8785  # the [test] extra: an independent RFC 8785 implementation
from hypothesis import given, settings
from hypothesis import strategies as st

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


# -- cross-check against an independent RFC 8785 implementation -------------------------------
# The `rfc8785` package (Trail of Bits) implements the whole RFC, floats included. On the subset
# statekeeper accepts (strings, integers within +-(2**53-1), booleans, null, lists, objects with
# string keys) the two must give the same bytes; what statekeeper refuses beyond that subset is
# listed in docs/compliance.md ("Canonical JSON").
# Every character but lone surrogates (no UTF-8 form): controls, the escapes, U+2028, DEL,
# non-ASCII and astral characters (a key above U+FFFF sorts by UTF-16 code units).
_chars = st.characters(blacklist_categories=("Cs",))
_text = st.one_of(
    st.text(_chars, max_size=12),
    st.text(st.sampled_from('"\\/\b\t\n\f\r\x00\x1f\x7f\u2028\u00e9\ufb33\U0001f600a'),
            max_size=6),
)
_ints = st.one_of(
    st.integers(-MAX_SAFE_INT, MAX_SAFE_INT),
    st.sampled_from([0, -1, 1, MAX_SAFE_INT, -MAX_SAFE_INT, 2**31, -(2**31), 2**32]),
)
_scalars = st.one_of(st.none(), st.booleans(), _ints, _text)
_values = st.recursive(
    _scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=5), st.dictionaries(_text, inner, max_size=5)
    ),
    max_leaves=12,
)


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(_text, _values, max_size=6))
def test_canonical_equals_rfc8785_on_the_accepted_subset(value: dict[str, Any]) -> None:
    ours = dumps(value)
    theirs = rfc8785.dumps(value)
    assert ours.encode("utf-8") == theirs
    # and rfc8785's text is canonical for statekeeper: it reads back to the same bytes
    assert is_canonical(theirs.decode("utf-8"))


@pytest.mark.parametrize(
    "value",
    [1.5, 1.0, 0.0, -0.0, 1e21, {"a": 0.5}],
    ids=["float", "integral-float", "zero-float", "negative-zero", "big-float", "nested"],
)
def test_floats_rfc8785_encodes_are_refused(value: Any) -> None:
    """RFC 8785 gives every float a text (ECMAScript's); statekeeper refuses them all, so an
    auditor's canonicalizer never has to agree with ours on number formatting."""
    rfc8785.dumps(value)
    with pytest.raises(CanonicalError, match="floats are not allowed"):
        dumps(value)


@pytest.mark.parametrize(
    "value",
    [MAX_SAFE_INT + 1, -MAX_SAFE_INT - 1, 10**30, "\ud800", {1: "x"}],
    ids=["int-above", "int-below", "huge-int", "lone-surrogate", "int-key"],
)
def test_both_refuse_what_has_no_canonical_form(value: Any) -> None:
    with pytest.raises(rfc8785.CanonicalizationError):
        rfc8785.dumps(value)
    with pytest.raises(CanonicalError):
        dumps(value)
