"""Where the statements of a SQL text begin and end: the statements a migration is executed
as, and refusing a migration's own transaction control when the files are loaded.

PostgreSQL migrations are executed one statement at a time, on the boundaries
:func:`pg_statements` finds, as ``psql -f`` splits a file (the simple query protocol parses a
whole multi-statement string before running any of it, so the first failure would not be the
one reported, and runs it as one implicit transaction block).

The scanner follows psql's lexer: ``--`` and nested ``/* */`` comments, ``'...'`` and
``E'...'`` strings, ``"..."`` identifiers, ``$tag$...$tag$`` bodies, parentheses, and the
``BEGIN``/``CASE`` ... ``END`` depth of SQL-standard function bodies (``BEGIN ATOMIC``), so a
file is split where ``psql -f`` splits it; a statement split in the wrong place is a syntax
error from the server (in a transactional file, nothing of the file stays). :func:`pg_scan`
also reports the ``;`` inside bodies and parentheses, so that transaction control after one
is refused whatever the depth.

SQLite migrations are executed statement by statement on boundaries found by SQLite's own
tokenizer (:func:`sqlite3.complete_statement`, exactly what the ``sqlite3`` shell uses), so a
failing statement is known precisely. SQLite block comments do not nest: pass
``nested=False`` when skipping comments in a SQLite text.
"""

from __future__ import annotations

import re
import sqlite3

_DOLLAR = re.compile(r"\$([A-Za-z_\u0080-\U0010ffff][A-Za-z0-9_\u0080-\U0010ffff]*)?\$")
_IDENT = re.compile(r"[A-Za-z_\u0080-\U0010ffff][A-Za-z0-9_$\u0080-\U0010ffff]*")
_NUMBER = re.compile(r"[0-9][0-9A-Za-z_.]*")
_WORD = re.compile(r"[A-Za-z_]+")


def skip_space_and_comments(text: str, i: int, *, nested: bool = True) -> int:
    """Index of the first character at or after ``i`` that is not blank or in a comment.
    ``nested``: block comments nest (PostgreSQL); SQLite's end at the first ``*/``."""
    n = len(text)
    while i < n:
        if text[i].isspace():
            i += 1
        elif text.startswith("--", i):
            j = text.find("\n", i)
            i = n if j < 0 else j + 1
        elif text.startswith("/*", i):
            if nested:
                i = _skip_block_comment(text, i)
            else:
                j = text.find("*/", i + 2)
                i = n if j < 0 else j + 2
        else:
            break
    return i


def _skip_block_comment(text: str, i: int) -> int:
    depth, i, n = 0, i, len(text)
    while i < n:
        if text.startswith("/*", i):
            depth += 1
            i += 2
        elif text.startswith("*/", i):
            depth -= 1
            i += 2
            if depth == 0:
                return i
        else:
            i += 1
    return n


def _skip_quoted(text: str, i: int, quote: str, backslash: bool = False) -> int:
    """``i`` is at the opening quote; return the index after the closing one."""
    n, j = len(text), i + 1
    while j < n:
        c = text[j]
        if backslash and c == "\\":
            j += 2
        elif c == quote:
            if text.startswith(quote, j + 1):  # doubled quote: an escaped one
                j += 2
            else:
                return j + 1
        else:
            j += 1
    return n


def pg_statements(text: str) -> list[tuple[int, int]]:
    """``(start, end)`` of each non-empty statement of a PostgreSQL text, ``start`` at its
    first token (0-based), ``end`` after its ``;`` (or the end of the text)."""
    return pg_scan(text)[0]


#: After these a keyword is a name: ``AS begin``, ``t.end``, ``RENAME x TO begin``.
_NAME_AFTER = ("as", ".", "to")
_ROUTINE = ("function", "procedure")


def _is_routine(head: list[str]) -> bool:
    """Does a statement starting with these words create a function or procedure, the only
    statement whose body (``BEGIN ATOMIC ... END``) may contain semicolons?"""
    if head[:1] != ["create"] or len(head) < 2:
        return False
    if head[1] in _ROUTINE:
        return True
    return head[1:3] == ["or", "replace"] and len(head) > 3 and head[3] in _ROUTINE


def pg_scan(text: str) -> tuple[list[tuple[int, int]], list[tuple[int, bool]]]:
    """:func:`pg_statements`, and each ``;`` that does not end a statement (inside
    parentheses or a ``BEGIN ATOMIC`` body): the index after it, and whether it is inside a
    body, where ``END`` may follow it to close the body.

    Only ``BEGIN ATOMIC`` at parenthesis depth 0 of ``CREATE [OR REPLACE] FUNCTION|PROCEDURE``
    opens a block, and ``CASE`` ... ``END`` is counted only inside one (as psql does):
    ``BEGIN`` is not a reserved word, so elsewhere it is a name (``CREATE TABLE t (begin
    int)``) and counting it would hide every later ``;``, and with it any ``COMMIT``, from
    the transaction-control check."""
    spans: list[tuple[int, int]] = []
    inner: list[tuple[int, bool]] = []
    n = len(text)
    i = 0
    start: int | None = None
    paren = begin_depth = 0
    head: list[str] = []  # the statement's first words, enough for _is_routine
    prev = ""  # the previous token: a lower-cased word, a punctuation character, or "lit"
    while i < n:
        c = text[i]
        if c.isspace() or c == "-" or c == "/":  # only these can start blanks or a comment
            j = skip_space_and_comments(text, i)
            if j != i:
                i = j
                continue
        if start is None:
            start = i
        if c == "'":
            i = _skip_quoted(text, i, "'")
            prev = "lit"
        elif c == '"':
            i = _skip_quoted(text, i, '"')
            prev = "lit"
        elif c == "$":
            m = _DOLLAR.match(text, i)
            if m:
                close = text.find(m.group(0), m.end())
                i = n if close < 0 else close + len(m.group(0))
            else:
                i += 1
            prev = "lit"
        elif "0" <= c <= "9":  # not str.isdigit: "²" is a digit to Python, not to SQL
            m = _NUMBER.match(text, i)
            assert m
            i = m.end()
            prev = "lit"
        elif c.isalpha() or c == "_" or ord(c) >= 0x80:
            m = _IDENT.match(text, i)
            assert m
            word = m.group(0).lower()
            i = m.end()
            if word == "e" and text.startswith("'", i):
                i = _skip_quoted(text, i, "'", backslash=True)
                prev = "lit"
                continue
            if len(head) < 4:
                head.append(word)
            if paren == 0 and prev not in _NAME_AFTER:
                if word == "begin":
                    if _is_routine(head) and leading_words(text, i, 1) == ["atomic"]:
                        begin_depth += 1
                elif word == "case":
                    if begin_depth > 0:
                        begin_depth += 1
                elif word == "end" and begin_depth > 0:
                    begin_depth -= 1
            prev = word
        elif c == "(":
            paren += 1
            i += 1
            prev = c
        elif c == ")":
            paren = max(0, paren - 1)
            i += 1
            prev = c
        elif c == ";":
            i += 1
            if paren == 0 and begin_depth == 0:
                if start != i - 1:
                    spans.append((start, i))
                start = None
                head = []
                prev = ""
            else:
                inner.append((i, begin_depth > 0 and paren == 0))
                prev = c
        else:
            i += 1
            prev = c
    if start is not None:
        spans.append((start, n))
    return spans, inner


def sqlite_statements(text: str) -> list[tuple[int, int]]:
    """``(start, end)`` chunks of a SQLite text, each one complete statement (leading comments
    included) as SQLite's tokenizer sees it; a trailing chunk may be comments only."""
    spans: list[tuple[int, int]] = []
    start = 0
    i = text.find(";")
    while i >= 0:
        if sqlite3.complete_statement(text[start : i + 1]):
            spans.append((start, i + 1))
            start = i + 1
        i = text.find(";", i + 1)
    if text[start:].strip():
        spans.append((start, len(text)))
    return spans


def sqlite_inner_semicolons(text: str) -> list[int]:
    """The index after each ``;`` of a SQLite text that does not end one of
    :func:`sqlite_statements`' chunks (outside strings, quoted names and comments): only a
    trigger body has them, and there ``END`` after one closes the body."""
    out: list[int] = []
    for start, end in sqlite_statements(text):
        i = start
        while i < end:
            c = text[i]
            if c in "'\"`":
                i = _skip_quoted(text, i, c)
            elif c == "[":
                j = text.find("]", i + 1)
                i = end if j < 0 else j + 1
            elif c in "-/":
                j = skip_space_and_comments(text, i, nested=False)
                i = j if j != i else i + 1
            else:
                if c == ";" and i + 1 < end:
                    out.append(i + 1)
                i += 1
    return out


def leading_words(text: str, start: int, count: int = 2, *, nested: bool = True) -> list[str]:
    """The first ``count`` words of the statement at ``start``, lower-cased (``nested``: as
    for :func:`skip_space_and_comments`)."""
    out: list[str] = []
    i = start
    while len(out) < count:
        i = skip_space_and_comments(text, i, nested=nested)
        m = _WORD.match(text, i)
        if not m:
            break
        out.append(m.group(0).lower())
        i = m.end()
    return out


def is_transaction_control(words: list[str]) -> bool:
    """Does a statement starting with these words begin or end a transaction?"""
    if not words:
        return False
    first = words[0]
    second = words[1] if len(words) > 1 else ""
    if first in ("begin", "commit", "end", "abort"):
        return True
    if first == "rollback":
        return second != "to"  # ROLLBACK TO SAVEPOINT keeps the transaction
    if first == "start":
        return second == "transaction"
    if first == "prepare":
        return second == "transaction"
    return False

