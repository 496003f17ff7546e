"""The migration file format: what a file of the migrations directory says, read and checked
before anything runs.

A migrations directory holds ``.sql`` files applied in natural file-name order (``2_x`` before
``10_y``); the id of a migration is its file name without ``.sql``. A line
``-- statekeeper:down`` splits a file into its up part (above) and its down part (below); a
first line ``-- statekeeper:no-transaction`` runs it outside a transaction. Directives match
in any case; a comment line whose first word is ``statekeeper`` but that is not exactly a
directive is refused, as are NUL bytes, invalid UTF-8 and (in a transactional file) statements
that begin or end a transaction: all when the files are loaded, before anything runs; so is a
directory entry that looks like a migration but would never run (``0004_x.SQL``,
``0004_x.sql.orig``). How a text is lexed (where statements start, whether comments nest) is
the target's dialect's. :func:`version_of` is the version a name starts with (two pending
files of one version are the migrator's to refuse: it knows which are applied).
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..dialects import dialect_for
from ..errors import ConfigError
from ..sqltext import is_transaction_control, leading_words, skip_space_and_comments

DOWN_MARKER = "-- statekeeper:down"
NO_TRANSACTION_MARKER = "-- statekeeper:no-transaction"
DIRECTIVES = (DOWN_MARKER, NO_TRANSACTION_MARKER)

_TAG_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/@+-]{0,199}")
_DIGITS = re.compile(r"(\d+)")


def natural_key(name: str) -> tuple[Any, ...]:
    """Sort key that orders digit runs by value: ``2_x`` < ``10_x``; ties broken by the name."""
    parts: list[tuple[int, int, str]] = []
    for chunk in _DIGITS.split(name):
        if not chunk:
            continue
        if chunk.isdigit():
            parts.append((0, int(chunk), ""))
        else:
            parts.append((1, 0, chunk.casefold()))
    return (tuple(parts), name)


@dataclass(frozen=True)
class Migration:
    """One migration file. ``up``/``down`` are the exact texts sent to the server; positions
    in errors count characters from the start of the file (``down_offset`` is where ``down``
    starts)."""

    id: str
    path: Path
    up: str
    down: str | None
    checksum: str
    no_transaction: bool = False
    down_offset: int = 0
    #: sha256 of the whole file's bytes, what ``sha256sum FILE`` prints (an auditor matches it
    #: against git); ``checksum`` is what statekeeper compares: the up part only, decoded and
    #: with its newlines normalised, so an edited down part or a CRLF checkout is no "edit"
    file_sha256: str = ""

    def locate(self, position: int) -> tuple[int, int, str]:
        """``(line, column, the line's text)`` of a 1-based character ``position`` in the
        file (as :attr:`up` and :attr:`down` count it: newlines normalised, BOM dropped)."""
        pos = max(position - 1, 0)
        if self.down is None or pos < len(self.up):
            part, start, first = self.up, 0, 1
        else:  # the down part: after the up part's lines and the directive's line
            part, start, first = self.down, self.down_offset, self.up.count("\n") + 2
        i = min(max(pos - start, 0), len(part))
        line_start = part.rfind("\n", 0, i) + 1
        line_end = part.find("\n", i)
        text = part[line_start: len(part) if line_end < 0 else line_end]
        return first + part.count("\n", 0, i), i - line_start + 1, text

    @property
    def reversible(self) -> bool:
        return self.down is not None


def check_tag_name(name: object, what: str = "tag name") -> str:
    """``name`` if it is a valid tag name, else ConfigError naming ``what`` (the same rule for
    ``migrate tag`` and for ``--to``/``--from``, which become tags)."""
    if not isinstance(name, str) or not _TAG_NAME.fullmatch(name):
        raise ConfigError(
            f"{what} {name!r} is not valid (letters, digits and . _ : / @ + -, "
            f"starting with a letter or digit, at most 200 characters)"
        )
    return name


def checksum_of(up: str) -> str:
    return hashlib.sha256(up.encode("utf-8")).hexdigest()


def _squash(s: str) -> str:
    """Letters and digits only, compatibility-normalised and case-folded: what a directive
    line reads as to a human (``-- Statekeeper : Down``, fullwidth letters, a Kelvin sign)."""
    return "".join(c for c in unicodedata.normalize("NFKC", s).casefold() if c.isalnum())


_KNOWN = {_squash(d): d for d in DIRECTIVES}


def _lstrip_blank(s: str) -> str:
    """``s`` without leading white space and invisible format characters (a zero-width
    space, a stray byte-order mark)."""
    i = 0
    while i < len(s) and (s[i].isspace() or unicodedata.category(s[i]) == "Cf"):
        i += 1
    return s[i:]


def _directive(line: str) -> str | None:
    """The directive a line is, ``None`` if it is an ordinary line; ConfigError (without the
    file name) for a line that looks meant as a directive but is not exactly one."""
    if "--" not in line and "/*" not in line:  # most lines: no comment, so no directive
        return None
    if line.isascii() and line.rstrip(" \t").lower() in DIRECTIVES:
        return line.rstrip(" \t").lower()
    # A comment whose first word is "statekeeper" is reserved: a near miss must not be taken
    # for a comment, which would silently make a migration irreversible or transactional.
    body = _lstrip_blank(line)
    if not body.startswith(("--", "/*")):
        return None
    body = _lstrip_blank(body.lstrip("-/*"))
    word = unicodedata.normalize("NFKC", body[:24]).casefold()
    if not word.startswith("statekeeper") or word[11:12].isalnum() or word[11:12] == "_":
        return None
    shown = line.rstrip(" \t")
    shown = repr(shown if len(shown) <= 60 else shown[:57] + "...")
    squashed = _squash(line)
    if squashed in _KNOWN:
        raise ConfigError(f"malformed directive {shown}: write it exactly as "
                          f"{_KNOWN[squashed]!r}, at the start of its line")
    for key, d in _KNOWN.items():
        if squashed.startswith(key):
            raise ConfigError(f"malformed directive {shown}: nothing may follow {d!r} on "
                              f"its line")
    raise ConfigError(
        f"unknown directive {shown} (known: {', '.join(DIRECTIVES)}; a comment whose first "
        f"word is 'statekeeper' is reserved for directives)"
    )


#: The first words of every statement is_transaction_control accepts.
_TXN_WORDS = ("begin", "commit", "end", "abort", "rollback", "start", "prepare")
_txn_checked: dict[tuple[str, bytes], tuple[int, str] | None] = {}


def find_transaction_control(text: str, backend: str) -> tuple[int, str] | None:
    """The first statement of ``text`` that begins or ends a transaction: its 0-based position
    and its first words (upper-cased), or ``None``. Statements are found with the backend's
    lexing, so ``BEGIN`` in a function body, string or comment is not one."""
    # Lexing is Python, character by character: a multi-megabyte data migration takes seconds,
    # and the files are loaded several times per command. Most files contain none of the
    # words at all, and a text already checked is not lexed again.
    lowered = text.lower()
    if not any(w in lowered for w in _TXN_WORDS):
        return None
    key = (backend, hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest())
    if key in _txn_checked:
        return _txn_checked[key]
    d = dialect_for(backend)
    # Statement starts, and as a backstop every other place a statement starts after a ";"
    # (inside parentheses, a BEGIN ATOMIC or trigger body): no transaction control is valid
    # there, so a mistake in tracking depth cannot hide a COMMIT that PostgreSQL would run.
    # END is the one word that may follow such a ";", inside a body: it closes the body.
    starts = d.statement_starts(text)
    found: tuple[int, str] | None = None
    for start, in_body in starts:
        s = skip_space_and_comments(text, start, nested=d.nested_comments)
        words = leading_words(text, s, nested=d.nested_comments)
        legal = in_body and words[:1] == ["end"]
        if is_transaction_control(words) and not legal and (found is None or s < found[0]):
            found = (s, " ".join(words).upper())
    if len(_txn_checked) >= 4096:
        _txn_checked.clear()
    _txn_checked[key] = found
    return found


def _transaction_control_message(words: str) -> str:
    return (f"{words} starts or ends a transaction: statekeeper runs each migration in a "
            f"transaction of its own (remove it, or make the first line "
            f"{NO_TRANSACTION_MARKER})")


def parse_migration(path: Path, text: str, backend: str = "postgresql",
                    file_sha256: str | None = None) -> Migration:
    """Split one file's text (decoded, BOM dropped, newlines normalised to ``\\n``) into a
    :class:`Migration`; ConfigError naming the file for anything malformed. ``backend``
    (``postgresql`` or ``sqlite``) decides how statements are lexed for the
    transaction-control check. ``file_sha256``: the digest of the file's bytes as read
    (default: of ``text`` encoded as UTF-8, for a text that is the whole file)."""
    if "\0" in text:  # read_migration refuses it with the byte offset; a direct caller too
        raise ConfigError(f"{path}: contains a NUL character at character {text.index(chr(0))}")
    if not text.strip():
        raise ConfigError(f"{path}: migration file is empty")
    # Only "\n" ends a line: str.splitlines would also split at \x0b, \x0c, \x1c-\x1e, \x85,
    # U+2028 and U+2029, which no editor shows as a line break.
    lines = text.split("\n")
    no_transaction = False
    down_at: int | None = None
    for n, line in enumerate(lines):
        try:
            name = _directive(line)
        except ConfigError as e:
            raise ConfigError(f"{path}: line {n + 1}: {e}") from None
        if name is None:
            continue
        if name == DOWN_MARKER:
            if down_at is not None:
                raise ConfigError(
                    f"{path}: line {n + 1}: a second {DOWN_MARKER} line "
                    f"(the first is on line {down_at + 1})"
                )
            down_at = n
        else:
            if n != 0:
                raise ConfigError(
                    f"{path}: line {n + 1}: {NO_TRANSACTION_MARKER} must be the first line"
                )
            no_transaction = True
    if down_at is None:
        up, down, down_offset = text, None, 0
    else:
        up = "".join(line + "\n" for line in lines[:down_at])
        down = "\n".join(lines[down_at + 1 :])
        down_offset = len(up) + len(lines[down_at]) + (down_at + 1 < len(lines))
    if not dialect_for(backend).has_sql(up):
        raise ConfigError(f"{path}: the up part has no SQL")
    if not no_transaction:
        for part, offset in ((up, 0), (down, down_offset)):
            found = find_transaction_control(part, backend) if part is not None else None
            if found is not None:
                pos, words = found
                line_no = text.count("\n", 0, offset + pos) + 1
                raise ConfigError(
                    f"{path}: line {line_no}: {_transaction_control_message(words)}"
                )
    mid = path.name[: -len(".sql")]
    digest = file_sha256 or hashlib.sha256(text.encode("utf-8")).hexdigest()
    return Migration(mid, path, up, down, checksum_of(up), no_transaction, down_offset, digest)


def _line_of(data: bytes, offset: int) -> int:
    head = data[:offset]
    return head.count(b"\n") + head.count(b"\r") - head.count(b"\r\n") + 1


def read_migration(path: Path, backend: str = "postgresql") -> Migration:
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read migration: {e.strerror or e}") from e
    # libpq sends a statement as a C string: everything after a NUL would silently never
    # reach PostgreSQL while the migration is recorded as applied.
    nul = data.find(b"\0")
    if nul >= 0:
        raise ConfigError(f"{path}: NUL byte at byte offset {nul} (line {_line_of(data, nul)}); "
                          f"a migration must be text")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text: invalid byte at byte offset {e.start} "
                          f"(line {_line_of(data, e.start)})") from e
    text = text.removeprefix("\ufeff").replace("\r\n", "\n").replace("\r", "\n")
    return parse_migration(path, text, backend, hashlib.sha256(data).hexdigest())


#: the version prefix of a file name: ``0003`` of ``0003_users``, ``1.10`` of ``V1.10__x``
_VERSION = re.compile(r"[Vv]?(\d+(?:\.\d+)*)(?=[^0-9.]|\.sql$|$)")


def version_of(migration_id: str) -> tuple[int, ...] | None:
    """The version a migration's name starts with, as numbers (``0003`` and ``3`` are the
    same version); None for a name without one."""
    m = _VERSION.match(migration_id)
    return tuple(int(x) for x in m.group(1).split(".")) if m else None


def _looks_like_a_migration(p: Path) -> bool:
    """A directory entry that is not run but was surely meant to be: ``0004_x.SQL``,
    ``0004_x.sql.orig``, ``0004_x.psql``, a file starting with a version, a directory with
    ``.sql`` files in it. (README.md and other notes are left alone.)"""
    name = p.name.lower()
    if not p.exists():  # a dangling link: not a file, ignored as before
        return False
    if p.is_dir():
        try:
            return any(c.name.lower().endswith(".sql") for c in p.iterdir())
        except OSError:
            return False
    return ".sql" in name or name.endswith((".psql", ".pgsql")) or version_of(p.name) is not None


def load_migrations(dir: Path, backend: str = "postgresql") -> list[Migration]:
    """Every ``*.sql`` file of ``dir`` (not hidden, not in subdirectories), natural order.
    ``backend``: the target's (``postgresql`` or ``sqlite``), for the statement lexing of the
    transaction-control check."""
    try:
        if not dir.exists():
            raise ConfigError(f"migrations directory {dir} does not exist")
        if not dir.is_dir():
            raise ConfigError(f"migrations directory {dir} is not a directory")
        entries = [p for p in dir.iterdir() if not p.name.startswith(".")]
        paths = [p for p in entries if p.name.endswith(".sql") and p.is_file()]
        for p in entries:
            if p not in paths and _looks_like_a_migration(p):
                raise ConfigError(
                    f"{p} is not a migration but looks like one: only *.sql files directly "
                    f"in {dir} run (rename it to end in .sql to run it, or move it out of "
                    f"the directory)"
                )
    except OSError as e:
        raise ConfigError(f"migrations directory {dir}: cannot list: {e.strerror or e}") from e
    paths.sort(key=lambda p: natural_key(p.name))
    return [read_migration(p, backend) for p in paths]
