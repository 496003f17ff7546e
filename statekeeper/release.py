"""The release side of an upgrade: the code (a directory per version and a ``current``
symlink switched atomically), its configuration files (snapshotted before anything changes,
restored byte for byte), its stop and start commands and extra deploy commands with their undo.

``[deploy]`` in statekeeper.toml is validated here, up front, with one-line errors naming the
file and the key. The step kinds (:mod:`statekeeper.steps`) do the work through the functions
below; nothing here knows about the ledger.
"""

from __future__ import annotations

import glob
import os
import re
import stat
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ConfigError, IntegrityError, TargetError
from .files import describe_os_error, fsync_path, private_dir, publish, write_private
from .keyed import fingerprint as keyed_fingerprint
from .keyed import same as same_digest

DEFAULT_TIMEOUT_MS = 60_000
TIMEOUT_MS = (1, 86_400_000)
_COMMAND_KEYS = ("name", "run", "undo", "timeout", "rehearsal_run", "rehearsal_undo")


@dataclass(frozen=True)
class Command:
    """A command as it runs (``argv``, variables filled in) and as it is recorded (``text``,
    as written in the file: ``${VAR}`` references, never their values)."""

    argv: tuple[str, ...]
    text: str


@dataclass(frozen=True)
class DeployCommand:
    name: str
    run: Command
    undo: Command
    timeout_ms: int
    #: what a rehearsal runs instead (rehearsal_run, rehearsal_undo); None: not rehearsed
    rehearsal: tuple[Command, Command] | None = None


@dataclass(frozen=True)
class ReleaseConfig:
    base_dir: Path
    releases_dir: Path
    current_link: Path
    config_files: tuple[Path, ...]
    config_from: str | None  # template with {version}, relative to base_dir
    stop: Command | None
    start: Command | None
    timeout_ms: int
    commands: tuple[DeployCommand, ...]
    #: what a rehearsal runs instead of stop and start (rehearsal_stop, rehearsal_start): the
    #: real ones act on the live service; None: they are not rehearsed
    rehearsal_service: tuple[Command, Command] | None = None

    def release_dir(self, version: str) -> Path:
        return self.releases_dir / version

    def config_dir(self, version: str) -> Path | None:
        if self.config_from is None:
            return None
        p = Path(self.config_from.replace("{version}", version)).expanduser()
        return p if p.is_absolute() else self.base_dir / p

    def config_source(self, version: str, path: Path) -> Path | None:
        d = self.config_dir(version)
        return None if d is None else d / path.name

    def link_target(self, version: str) -> str:
        """What ``current`` points to for ``version``: relative to the link's directory, so
        the tree can be moved as a whole."""
        return os.path.relpath(self.release_dir(version), self.current_link.parent)


# -- configuration -------------------------------------------------------------------------

def validate_deploy(section: Mapping[str, Any] | None, written: Mapping[str, Any], source: str,
                    base: Path) -> ReleaseConfig | None:
    """``[deploy]`` validated (``section`` with variables filled in, ``written`` as in the
    file); None when the section is absent."""
    if section is None:
        return None
    from .durations import parse_duration

    where = f"{source}: [deploy]"

    def path(key: str, value: Any) -> Path:
        if not isinstance(value, str) or not value.strip():
            raise ConfigError(f"{where} {key} must be a non-empty string")
        if "\0" in value:
            raise ConfigError(f"{where} {key} contains a NUL byte")
        try:
            p = Path(value).expanduser()
        except RuntimeError as e:  # ~user of a user that does not exist
            raise ConfigError(f"{where} {key}: {e}") from e
        return p if p.is_absolute() else base / p

    if "releases_dir" not in section:
        raise ConfigError(f'{where} releases_dir is not set (the directory holding one '
                          'directory per version, e.g. releases_dir = "releases")')
    releases = path("releases_dir", section["releases_dir"])
    link = path("current_link", section.get("current_link", "current"))
    cfg_files: list[Path] = []
    for i, f in enumerate(section.get("config_files", [])):
        p = path(f"config_files[{i}]", f)
        if p in cfg_files:
            raise ConfigError(f"{where} config_files[{i}] {f!r} is listed twice")
        cfg_files.append(p)
    config_from = section.get("config_from")
    if config_from is not None:
        path("config_from", config_from)
        if not re.fullmatch(r"[^{}]*\{version\}[^{}]*", config_from):
            raise ConfigError(f'{where} config_from must contain {{version}} once and no other '
                              f'braces (e.g. "releases/{{version}}/config"), not {config_from!r}')
        if not cfg_files:
            raise ConfigError(f"{where} config_from is set but config_files is empty")
        names = [p.name for p in cfg_files]
        dup = next((n for n in names if names.count(n) > 1), None)
        if dup is not None:
            raise ConfigError(f"{where} config_files has two files named {dup!r}: with "
                              "config_from, each file's source is found by its name")
    timeout = parse_duration(section.get("timeout", DEFAULT_TIMEOUT_MS / 1000),
                             f"{where} timeout", TIMEOUT_MS)

    def command(key: str, value: Any, text: Any, where_: str) -> Command:
        from .procs import split

        if not isinstance(value, str):
            raise ConfigError(f"{where_} {key} must be a string")
        return Command(tuple(split(value, f"{where_} {key}")), str(text))

    stop = start = None
    if "stop" in section:
        stop = command("stop", section["stop"], written.get("stop"), where)
    if "start" in section:
        start = command("start", section["start"], written.get("start"), where)
    if (stop is None) != (start is None):
        missing = "start" if start is None else "stop"
        raise ConfigError(f"{where} {missing} is not set: stop and start go together (the "
                          "rollback stops the new release and starts the old one)")
    service = _rehearsal_pair(section, written, where, ("rehearsal_stop", "rehearsal_start"),
                              command)
    commands = []
    raw_cmds = section.get("command", [])
    written_cmds = written.get("command", [])
    for i, c in enumerate(raw_cmds):
        w = f"{source}: [[deploy.command]] #{i + 1}"
        if not isinstance(c, dict):
            raise ConfigError(f"{w} must be a table")
        unknown = sorted(set(c) - set(_COMMAND_KEYS))
        if unknown:
            raise ConfigError(f"{w} has unknown key {unknown[0]} (known: "
                              f"{', '.join(_COMMAND_KEYS)})")
        for key in ("run", "undo"):
            if key not in c:
                hint = ' (undo = "true" when nothing needs undoing)' if key == "undo" else ""
                raise ConfigError(f'{w} needs {key} = "..."{hint}')
        name = c.get("name", f"command {i + 1}")
        if not isinstance(name, str) or not name.strip():
            raise ConfigError(f"{w} name must be a non-empty string")
        wc = written_cmds[i] if i < len(written_cmds) else {}
        commands.append(DeployCommand(
            name, command("run", c["run"], wc.get("run"), w),
            command("undo", c["undo"], wc.get("undo"), w),
            parse_duration(c.get("timeout", timeout / 1000), f"{w} timeout", TIMEOUT_MS),
            _rehearsal_pair(c, wc, w, ("rehearsal_run", "rehearsal_undo"), command)))
    names = [c.name for c in commands]
    dup = next((n for n in names if names.count(n) > 1), None)
    if dup is not None:
        raise ConfigError(f"{source}: [[deploy.command]] name {dup!r} is used twice")
    return ReleaseConfig(base, releases, link, tuple(cfg_files), config_from, stop, start,
                         timeout, tuple(commands), service)


def _rehearsal_pair(section: Mapping[str, Any], written: Mapping[str, Any], where: str,
                    keys: tuple[str, str], command: Callable[..., Command]
                    ) -> tuple[Command, Command] | None:
    """A rehearsal's variant of a pair of commands (stop and start, run and undo): both or
    neither, since the rehearsal's rollback runs the second after the first."""
    one, two = keys
    if one not in section and two not in section:
        return None
    if (one in section) != (two in section):
        missing = two if one in section else one
        raise ConfigError(f"{where} {missing} is not set: {one} and {two} go together (the "
                          "rehearsal's rollback runs the second after the first)")
    return (command(one, section[one], written.get(one), where),
            command(two, section[two], written.get(two), where))


# -- preflight -----------------------------------------------------------------------------

def problems(rc: ReleaseConfig, version: str) -> list[str]:
    """What stops ``version`` from being deployed, checked before any backup: its directory,
    the link, the configuration files and their sources, the commands."""
    from .procs import not_executable

    out: list[str] = []
    rel = rc.release_dir(version)
    if not rel.is_dir():
        out.append(f"release directory {rel} does not exist")
    link = rc.current_link
    if link.exists() or link.is_symlink():
        if not link.is_symlink():
            out.append(f"{link} is not a symlink: statekeeper switches the release by "
                       "replacing a symlink (move the directory into releases_dir)")
    elif not link.parent.is_dir():
        out.append(f"the directory of current_link {link} does not exist")
    for f in rc.config_files:
        if f.is_symlink():
            out.append(f"configuration file {f} is a symlink: name the file it points to")
        elif f.exists() and not f.is_file():
            out.append(f"configuration file {f} is not a regular file")
        elif not f.parent.is_dir():
            out.append(f"the directory of configuration file {f} does not exist")
        src = rc.config_source(version, f)
        if src is not None and not src.is_file():
            out.append(f"the new configuration {src} for {f} does not exist")
    if rc.stop is not None and rc.start is not None:
        for what, cmd in (("stop", rc.stop), ("start", rc.start)):
            why = not_executable(list(cmd.argv), rc.base_dir)
            if why:
                out.append(f"[deploy] {what}: {why}")
    if rel.is_dir():
        for c in rc.commands:
            for what, cmd in (("run", c.run), ("undo", c.undo)):
                why = not_executable(list(cmd.argv), rel)
                if why:
                    out.append(f"[[deploy.command]] {c.name!r} {what}: {why}")
    return out


# -- files ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class FileState:
    """A configuration file as the ledger records it: never its content."""

    path: str
    exists: bool
    size: int = 0
    mode: int = 0
    uid: int = -1
    gid: int = -1
    hmac: str = ""

    def to_dict(self) -> dict[str, Any]:
        if not self.exists:
            return {"path": self.path, "exists": False}
        return {"path": self.path, "exists": True, "size": self.size, "mode": f"{self.mode:04o}",
                "uid": self.uid, "gid": self.gid, "hmac": self.hmac}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> FileState:
        if not d.get("exists"):
            return cls(str(d["path"]), False)
        return cls(str(d["path"]), True, int(d["size"]), int(str(d["mode"]), 8),
                   int(d["uid"]), int(d["gid"]), str(d["hmac"]))


def file_state(path: Path, secret: bytes) -> tuple[FileState, bytes | None]:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        return FileState(str(path), False), None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise TargetError(f"configuration file {path} is not a regular file")
        with os.fdopen(os.dup(fd), "rb") as f:
            data = f.read()
    finally:
        os.close(fd)
    return FileState(str(path), True, len(data), stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid,
                     keyed_fingerprint(secret, data)), data


def snapshot_files(rc: ReleaseConfig, secret: bytes, into: Path,
                   hook: Callable[[], None]) -> list[FileState]:
    """Copy each configuration file into ``into`` (0600) and return what the ledger records."""
    private_dir(into)
    out = []
    for i, f in enumerate(rc.config_files):
        if i == 1:
            hook()
        state, data = file_state(f, secret)
        copy = into / _copy_name(i, f)
        if data is not None:
            tmp = copy.with_name(copy.name + ".tmp")
            tmp.unlink(missing_ok=True)
            write_private(tmp, data)
            publish(tmp, copy)
        else:
            copy.unlink(missing_ok=True)
        out.append(state)
    if len(rc.config_files) < 2:
        hook()
    return out


def _copy_name(i: int, f: Path) -> str:
    return f"{i:02d}-{f.name}"


def _write_like(path: Path, data: bytes, mode: int, uid: int, gid: int) -> None:
    """Replace ``path`` atomically with ``data``, ``mode`` and owner: a reader sees the old
    file or the new, never a half-written one."""
    tmp = path.with_name(f".{path.name}.statekeeper-{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            st = os.fstat(fh.fileno())
            # compared with the new file, not with who runs statekeeper: a setgid directory
            # gives it the directory's group
            if uid >= 0 and (st.st_uid, st.st_gid) != (uid, gid):
                os.fchown(fh.fileno(), uid, gid)
            os.fchmod(fh.fileno(), mode)
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_path(path.parent)


def install_config(rc: ReleaseConfig, version: str, secret: bytes,
                   hook: Callable[[], None]) -> list[FileState]:
    """Put the new version's configuration files in place (mode and owner of the file they
    replace; of the source for a new file)."""
    out = []
    for i, f in enumerate(rc.config_files):
        if i == 1:
            hook()
        src = rc.config_source(version, f)
        if src is None:
            break
        data = src.read_bytes()
        try:
            st = f.lstat()
        except FileNotFoundError:
            # a new file holds what a configuration holds (keys): private, like every file
            # statekeeper writes
            mode, uid, gid = 0o600, -1, -1
        else:
            if not stat.S_ISREG(st.st_mode):
                # replaced since the snapshot (a symlink planted meanwhile): its mode and owner
                # must not become the new file's
                raise TargetError(f"configuration file {f} is no longer a regular file: "
                                  "refusing to replace it")
            mode, uid, gid = stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid
        _write_like(f, data, mode, uid, gid)
        out.append(file_state(f, secret)[0])
    if len(rc.config_files) < 2:
        hook()
    return out


def config_matches(rc: ReleaseConfig, version: str, secret: bytes) -> bool:
    """Do the live files hold the new version's content (the probe of the config step)?"""
    for f in rc.config_files:
        src = rc.config_source(version, f)
        if src is None:
            return True
        live, _ = file_state(f, secret)
        if not src.is_file() or not live.exists or not same_digest(
                live.hmac, keyed_fingerprint(secret, src.read_bytes())):
            return False
    return True


def check_snapshot(recorded: list[FileState], secret: bytes, into: Path) -> list[bytes | None]:
    """Each snapshot copy, after checking it is what the ledger recorded (a copy beside the
    artifacts is never trusted more than the ledger's record of it)."""
    out: list[bytes | None] = []
    for i, rec in enumerate(recorded):
        if not rec.exists:
            out.append(None)
            continue
        copy = into / _copy_name(i, Path(rec.path))
        try:
            data = copy.read_bytes()
        except OSError as e:
            raise IntegrityError(f"snapshot of {rec.path}: cannot read {copy}: "
                                 f"{describe_os_error(e)}; refusing to restore it") from e
        if len(data) != rec.size or not same_digest(keyed_fingerprint(secret, data), rec.hmac):
            raise IntegrityError(f"snapshot of {rec.path}: {copy} is not the file the ledger "
                                 "recorded (keyed fingerprint differs): refusing to restore it")
        out.append(data)
    return out


def restore_files(recorded: list[FileState], copies: list[bytes | None],
                  hook: Callable[[], None]) -> None:
    """Put every configuration file back byte for byte, with its mode and owner; remove one
    that did not exist before."""
    for i, (rec, data) in enumerate(zip(recorded, copies, strict=True)):
        if i == 1:
            hook()
        p = Path(rec.path)
        if data is None:
            p.unlink(missing_ok=True)
            continue
        _write_like(p, data, rec.mode, rec.uid, rec.gid)
    if len(recorded) < 2:
        hook()


def files_restored(recorded: list[FileState], secret: bytes) -> bool:
    for rec in recorded:
        live, _ = file_state(Path(rec.path), secret)
        if live.exists != rec.exists:
            return False
        if rec.exists and ((live.mode, live.uid, live.gid, live.size)
                           != (rec.mode, rec.uid, rec.gid, rec.size)
                           or not same_digest(live.hmac, rec.hmac)):
            return False
    return True


# -- the link ------------------------------------------------------------------------------

def read_link(link: Path) -> str | None:
    try:
        return os.readlink(link)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise TargetError(f"{link}: cannot read the link: {describe_os_error(e)}") from e


def switch_link(link: Path, target: str | None, hook: Callable[[], None]) -> None:
    """Point ``link`` at ``target`` atomically: a new link beside it, renamed over it (there is
    never a moment without one). ``target`` None removes the link (there was none before)."""
    for stale in glob.glob(glob.escape(str(link.parent / f".{link.name}.statekeeper-")) + "*"):
        if os.path.islink(stale):
            os.unlink(stale)
    if target is None:
        hook()
        Path(link).unlink(missing_ok=True)
        fsync_path(link.parent)
        return
    tmp = link.with_name(f".{link.name}.statekeeper-{os.getpid()}")
    os.symlink(target, tmp)
    hook()
    os.replace(tmp, link)
    fsync_path(link.parent)


def version_of(target: str | None) -> str | None:
    """The version a link target names (its last component)."""
    return None if target is None else Path(target).name or None
