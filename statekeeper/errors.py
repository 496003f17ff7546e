"""The one exception tree of the ``statekeeper`` package, its exit codes, and the boundary
where the errors of the packages below become statekeeper's.

::

    StatekeeperError                exit 1
     ├── ConfigError                exit 2  bad statekeeper.toml, flag, path, URL, key file or
     │                                      checkpoint/export file (ledger ConfigurationError)
     ├── TargetError                exit 1  the target database refused or failed an operation
     │    ├── TargetUnreachable     exit 6  the target's server does not accept connections
     │    │                                 (down, starting, shutting down, no such host)
     │    ├── TargetRefused         exit 6  the server refused the connection (bad password,
     │    │                                 no such role or database)
     │    ├── MigrationError        exit 1  a migration failed (id, position, server message)
     │    ├── ValidationError       exit 2  an applied migration was edited or removed
     │    └── IrreversibleError     exit 2  rollback to a tag crosses a migration with no down part
     ├── BackupError                exit 1  a backup or restore failed
     │    ├── BackupNotFound        exit 2  no complete backup with that id
     │    ├── WrongDatabase         exit 2  a restore into another database than the one backed up
     │    ├── RestoreMismatch       exit 3  restored, but the fingerprint differs from the backup's
     │    ├── RestoreIncomplete     exit 3  a cluster restore stopped half-way (server may be down)
     │    └── BackupCorrupt         exit 4  an artifact does not match its manifest
     ├── RehearsalFailed            exit 1  a rehearsal found the upgrade would fail or roll back
     │                                      lossily (production untouched)
     ├── NeedsAttention             exit 3  a run is failed or in an unknown state: a human decides
     │    ├── IllegalTransition     exit 3  a trigger the state machine does not allow
     │    ├── LedgerUnavailable     exit 3  the ledger's database failed mid-way (ledger
     │    │    │                            OperationalError)
     │    │    └── LedgerUnreachable exit 6 no connection to the ledger could be made (ledger
     │    │                                 LedgerUnreachable: closed port, bad host or login)
     │    └── OSFailure             exit 3  an operating-system error nothing below expected
     ├── IntegrityError             exit 4  the ledger or a run's history does not verify
     │    │                                 (ledger IntegrityViolation: seq, reason, detail)
     │    └── HistoryError          exit 4  a run's events cannot be replayed (position, seq)
     └── LockHeld                   exit 5  another run or process holds the target
          └── StreamConflict        exit 5  another writer appended to the stream first
                                            (ledger StreamConflict: stream, expected, actual)

Exit codes 2, 5 and 6 say that nothing was done; raised after the command recorded progress
(a run's state change or step, an operation's step), the code is 3 instead
(:func:`exit_code_after`): something was done, and a human finishes it. For ``start``,
``resume`` and ``rollback``, 1 is only their run's ``rolled_back``.

Exit codes live in :data:`EXIT_CODES`, one row per class; a class not in it (a subclass
defined elsewhere) has its nearest listed base's code. :data:`EXIT_FOR_STATE` gives the code
of a run that ended otherwise than the command intended. docs/cli.md documents the same
table (tests/test_docs_cli.py compares them).

The public verbs (:mod:`statekeeper.command`) raise only this tree: each runs inside
:func:`error_boundary` (written as the :func:`boundary` decorator), which translates ledger's
errors (:mod:`ledger.errors`) once, chained (``raise X(str(e)) from e``: same message, the
original as ``__cause__``, its attributes such as the first bad ``seq`` copied), and turns a
stray :class:`OSError` into :class:`OSFailure` naming the file. The CLI maps this tree only.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import ParamSpec, TypeVar

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_ATTENTION = 3
EXIT_INTEGRITY = 4
EXIT_LOCKED = 5
EXIT_UNREACHABLE = 6
# Ended by a signal (as a shell reports it, 128 + the signal's number): no error class, a run
# left in flight is for ``resume``.
EXIT_INTERRUPTED = 130  # SIGINT (Ctrl-C): "error: interrupted"
EXIT_KILLED = 137  # SIGKILL, or a failpoint
EXIT_TERMINATED = 143  # SIGTERM: statekeeper dies of it, after stopping the tool it ran


class StatekeeperError(Exception):
    @property
    def exit_code(self) -> int:
        return exit_code_for(self)


class ConfigError(StatekeeperError):
    pass


class TargetError(StatekeeperError):
    pass


class TargetUnreachable(TargetError):
    """No connection to the target's server: it is down, starting up or shutting down, or
    its host does not resolve. Nothing was done on the target."""


class TargetRefused(TargetError):
    """The target's server refused the connection (a bad password, no such role or
    database): no session could be opened, so nothing was done on the target."""


class MigrationError(TargetError):
    """A migration failed; the database is as it was before that migration (a transactional
    one; a no-transaction migration keeps the statements that completed before the failing
    one).

    The message is one line: ``migration ID failed at FILE:LINE:COLUMN: <server message>``
    once the migrator has placed it in its file (:meth:`locate`), ``... failed at character N``
    before. The structured fields are for a richer display (:meth:`display_lines`, which the
    CLI prints under the error line): ``position`` (1-based character in the file),
    ``path``/``line``/``column``, ``source_line`` (the file's line there), the server's
    ``detail``/``hint``/``context`` and the ``notices`` (NOTICE and WARNING messages) the
    server raised while the migration ran, each ``"SEVERITY: message (line N)"``."""

    def __init__(self, migration_id: str, message: str, position: int | None = None, *,
                 detail: str | None = None, hint: str | None = None,
                 context: str | None = None,
                 notices: tuple[tuple[str, str, int], ...] = ()) -> None:
        self.migration_id = migration_id
        self.position = position
        self.server_message = message
        self.detail, self.hint, self.context = detail, hint, context
        #: (severity, message, 1-based character of the statement that raised it)
        self.raised = tuple(notices)
        self.notices = tuple(f"{sev}:  {msg}" for sev, msg, _pos in self.raised)
        self.path: str | None = None
        self.line: int | None = None
        self.column: int | None = None
        self.source_line: str | None = None
        super().__init__(self._message())

    def _message(self) -> str:
        if self.path is not None and self.line is not None:
            where = f" at {self.path}:{self.line}:{self.column}"
        else:
            where = f" at character {self.position}" if self.position else ""
        return f"migration {self.migration_id} failed{where}: {self.server_message}"

    def locate(self, path: str, where: Callable[[int], tuple[int, int, str]]) -> None:
        """Name the file, and the line and column of :attr:`position` and of each notice
        (``where``: a 1-based character of the file to its line, column and line text; the
        migrator knows the file)."""
        self.path = path
        if self.position:
            self.line, self.column, self.source_line = where(self.position)
        self.notices = tuple(f"{sev}:  {msg} (line {where(pos)[0]})"
                             for sev, msg, pos in self.raised)
        self.args = (self._message(),)

    #: The structured fields, by the names :meth:`fields` and docs/result.schema.json use.
    _FIELDS = ("migration_id", "server_message", "position", "path", "line", "column",
               "source_line", "detail", "hint", "context")

    def fields(self) -> dict[str, object]:
        """The structured fields as plain values (recorded with a failed step, printed by
        ``--json``): those in :attr:`_FIELDS` that are known, and ``notices``."""
        out: dict[str, object] = {k: getattr(self, k) for k in self._FIELDS
                                  if getattr(self, k) is not None}
        out["notices"] = list(self.notices)
        return out

    @classmethod
    def from_fields(cls, f: Mapping[str, object]) -> MigrationError:
        """The error :meth:`fields` describes (from a step's recorded failure), to display."""
        e = cls(str(f.get("migration_id", "?")), str(f.get("server_message", "")))
        for k in cls._FIELDS[2:]:
            v = f.get(k)
            if v is not None:
                setattr(e, k, v)
        notices = f.get("notices")
        if isinstance(notices, list):
            e.notices = tuple(str(n) for n in notices)
        e.args = (e._message(),)
        return e

    def display_lines(self) -> list[str]:
        """What psql shows after its ERROR line: the statement's line with a caret under the
        column, then DETAIL, HINT, CONTEXT and the NOTICEs/WARNINGs raised before the error.
        Each entry is one line (tabs in the source line shown as one space each, so the caret
        stays under its column)."""
        out: list[str] = []
        if self.source_line is not None and self.line is not None and self.column:
            label = f"{self.line} | "
            src = self.source_line.replace("\t", " ")
            out.append(label + src)
            out.append(" " * (len(label) - 2) + "| " + " " * (self.column - 1) + "^")
        for name, value in (("DETAIL", self.detail), ("HINT", self.hint),
                            ("CONTEXT", self.context)):
            if value:
                lines = value.splitlines() or [""]
                out.append(f"{name}:  {lines[0]}")
                out.extend(f"{' ' * (len(name) + 3)}{x}" for x in lines[1:])
        out.extend(self.notices)
        return out


class ValidationError(TargetError):
    pass


class IrreversibleError(TargetError):
    pass


class BackupError(StatekeeperError):
    pass


class BackupNotFound(BackupError):
    pass


class WrongDatabase(BackupError):
    pass


class RestoreMismatch(BackupError):
    def __init__(self, message: str, lines: list[str]) -> None:
        super().__init__(message)
        self.lines = lines  # the differences, table by table


class RestoreIncomplete(BackupError):
    pass


class BackupCorrupt(BackupError):
    pass


class RehearsalFailed(StatekeeperError):
    """A rehearsal ran and found that the upgrade would fail, that its rollback would not give
    the database back as it was, or that a second forward pass fails. Production is untouched;
    ``result`` is the rehearsal's whole result (what ``rehearse --json`` prints)."""

    def __init__(self, message: str, result: dict[str, object] | None = None) -> None:
        super().__init__(message)
        self.result = result or {}


class NeedsAttention(StatekeeperError):
    pass


class LedgerUnavailable(NeedsAttention):
    """The ledger database cannot be reached (``where``, ``reason`` when the ledger said), or
    failed mid-way."""

    where: str | None = None
    reason: str | None = None


class LedgerUnreachable(LedgerUnavailable):
    """No connection to the ledger's database could be made (ledger LedgerUnreachable, with
    ``where`` and ``reason``): nothing was recorded, so nothing was done."""


class OSFailure(NeedsAttention):
    """An operating-system error (a file, a directory, a process) that no code below turned
    into a better error; ``filename`` names the file when the system said which."""

    errno: int | None = None
    filename: str | None = None


class IntegrityError(StatekeeperError):
    """The ledger, an export or a run's history does not verify. From the ledger's
    verification: ``seq`` (the first bad event, None when the fault is not at one event),
    ``reason`` and ``detail``."""

    seq: int | None = None
    reason: str | None = None
    detail: str | None = None


class HistoryError(IntegrityError):
    """A run's events describe something the machine does not allow, or that this version
    cannot read (an unknown event type or step kind, a payload without its fields)."""

    def __init__(self, position: int, message: str, seq: int = 0) -> None:
        super().__init__(f"event #{position}: {message}")
        self.position = position
        self.seq = seq  # the event's global ledger seq (0 when unknown)
        self.reason = message


class IllegalTransition(NeedsAttention):
    """A trigger the state machine's table does not allow from the run's state."""

    def __init__(self, trigger: str, state: str) -> None:
        super().__init__(f"transition {trigger!r} is not allowed from state {state!r}")
        self.trigger = trigger
        self.state = state


class LockHeld(StatekeeperError):
    pass


class StreamConflict(LockHeld):
    """An append expected a stream position that another writer already took."""

    stream: str | None = None
    expected: int | None = None
    actual: int | None = None


#: The exit code of every error class, the one table (docs/cli.md shows the same).
EXIT_CODES: dict[type[StatekeeperError], int] = {
    StatekeeperError: EXIT_FAILED,
    ConfigError: EXIT_USAGE,
    TargetError: EXIT_FAILED,
    TargetUnreachable: EXIT_UNREACHABLE,
    TargetRefused: EXIT_UNREACHABLE,
    MigrationError: EXIT_FAILED,
    ValidationError: EXIT_USAGE,
    IrreversibleError: EXIT_USAGE,
    BackupError: EXIT_FAILED,
    BackupNotFound: EXIT_USAGE,
    WrongDatabase: EXIT_USAGE,
    RestoreMismatch: EXIT_ATTENTION,
    RestoreIncomplete: EXIT_ATTENTION,
    BackupCorrupt: EXIT_INTEGRITY,
    RehearsalFailed: EXIT_FAILED,
    NeedsAttention: EXIT_ATTENTION,
    IllegalTransition: EXIT_ATTENTION,
    LedgerUnavailable: EXIT_ATTENTION,
    LedgerUnreachable: EXIT_UNREACHABLE,
    OSFailure: EXIT_ATTENTION,
    IntegrityError: EXIT_INTEGRITY,
    HistoryError: EXIT_INTEGRITY,
    LockHeld: EXIT_LOCKED,
    StreamConflict: EXIT_LOCKED,
}


#: The exit code of a command that ran a run to its end (start, resume, rollback) and saw it
#: end otherwise than it intended; a state not listed needs attention.
EXIT_FOR_STATE: dict[str, int] = {
    "completed": EXIT_OK,
    "rolled_back": EXIT_FAILED,
    "failed": EXIT_ATTENTION,
}


def exit_code_for_state(state: str) -> int:
    return EXIT_FOR_STATE.get(state, EXIT_ATTENTION)


def exit_code_for(e: BaseException) -> int:
    """The documented exit code of ``e``: its class's row of :data:`EXIT_CODES`, else its
    nearest listed base's; anything outside the tree is unexpected, and needs attention."""
    for cls in type(e).__mro__:
        code = EXIT_CODES.get(cls)
        if code is not None:
            return code
    return EXIT_ATTENTION


def failure_fields(e: BaseException) -> dict[str, object]:
    """What a failed step records of its error besides the message: the class in this tree
    (an OSError is the environment's :class:`OSFailure`) and, for a migration, its
    structured fields, so that ``--json`` and the failure display have them after the fact
    (``status``, ``resume``) as well as live."""
    name = "OSFailure" if isinstance(e, OSError) else type(e).__name__
    return {"class": name, **(e.fields() if isinstance(e, MigrationError) else {})}


#: The codes that say nothing was done (bad input, another holder, nothing reachable): an
#: error with one of them after the command recorded progress (a run's state change or step,
#: an operation's step) exits :data:`EXIT_ATTENTION` instead: something was done, and a run
#: or operation is left for a human (``resume``) to finish.
NOTHING_DONE = frozenset({EXIT_USAGE, EXIT_LOCKED, EXIT_UNREACHABLE})


def exit_code_after(e: BaseException, progressed: bool, run_command: bool = False) -> int:
    """The exit code of ``e`` ending a command that did (``progressed``) or did not record
    progress before it. For ``start``, ``resume`` and ``rollback`` (``run_command``), 1 is
    the run's ``rolled_back`` (:data:`EXIT_FOR_STATE`) and nothing else: a failure that
    escapes the run (a target refusing a query before the run began) needs attention."""
    code = exit_code_for(e)
    if progressed and code in NOTHING_DONE:
        return EXIT_ATTENTION
    if run_command and code == EXIT_FAILED:
        return EXIT_ATTENTION
    return code


def _from_ledger(e: Exception) -> StatekeeperError | None:
    """The statekeeper error for a ledger error (None if ``e`` is not one). Imported here, on
    the failure path: a ledger error cannot exist unless ledger was imported, and the CLI's
    start-up must not pay for ledger (tests/test_cli_startup.py)."""
    from ledger import errors as le

    if not isinstance(e, le.LedgerError):
        return None
    new: StatekeeperError
    if isinstance(e, le.IntegrityViolation):
        new = IntegrityError(str(e))
    elif isinstance(e, le.ConfigurationError):
        new = ConfigError(str(e))
    elif isinstance(e, le.StreamConflict):
        new = StreamConflict(str(e))
    elif isinstance(e, le.LedgerUnreachable):
        new = LedgerUnreachable(str(e))
    elif isinstance(e, le.OperationalError):
        new = LedgerUnavailable(str(e))
    else:  # a LedgerError no branch above knows: what the CLI did with one before
        new = NeedsAttention(str(e))
    # What the caller may inspect (seq, reason, where, ...), whichever the ledger error has.
    for k, v in vars(e).items():
        if not k.startswith("_"):
            setattr(new, k, v)
    return new


def _from_os(e: OSError) -> OSFailure:
    names = [n for n in (e.filename, e.filename2) if n is not None]
    what = e.strerror or str(e)
    new = OSFailure(f"{' -> '.join(map(str, names))}: {what}" if names else what)
    new.errno = e.errno
    new.filename = None if e.filename is None else str(e.filename)
    return new


@contextmanager
def error_boundary() -> Iterator[None]:
    """Inside, any error becomes one of this module's tree: ledger errors by their kind, a
    stray OSError as :class:`OSFailure` (a last resort: the code that knows which file it
    touched should say more). Other exceptions (bugs) pass unchanged."""
    try:
        yield
    except StatekeeperError:
        raise
    except OSError as e:
        raise _from_os(e) from e
    except Exception as e:
        new = _from_ledger(e)
        if new is None:
            raise
        raise new from e


P = ParamSpec("P")
R = TypeVar("R")


def boundary(f: Callable[P, R]) -> Callable[P, R]:
    """``f`` run inside :func:`error_boundary`: the decorator of every public verb."""

    @functools.wraps(f)
    def inner(*args: P.args, **kwargs: P.kwargs) -> R:
        with error_boundary():
            return f(*args, **kwargs)

    return inner
