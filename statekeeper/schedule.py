"""The entries of a nightly backup, for ``statekeeper backup schedule``: a crontab line, or a
systemd service with its timer. Pure text: nothing is installed, nothing recorded.

The job runs ``backup create --reason scheduled`` (a ``backup.create`` operation in the ledger,
like any other), then, when ``[backup] keep`` or ``keep_days`` is set, ``backup prune --yes
--reason scheduled``. Each word of a command is quoted for where it goes: the shell for cron
(whose ``%`` is a newline unless escaped), systemd's own rules for ``ExecStart=`` (``%``
specifiers and ``$`` variables doubled).
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass

from .errors import ConfigError

_AT = re.compile(r"([01]?\d|2[0-3]):([0-5]\d)")
_SAFE = re.compile(r"[A-Za-z0-9_@%+=:,./-]+")


@dataclass(frozen=True)
class Job:
    """What the scheduled job runs: ``program`` (the statekeeper executable, as words) with
    ``--config``, in ``workdir``, as ``user``, at ``hour``:``minute`` every night."""

    program: tuple[str, ...]
    config: str
    workdir: str
    user: str
    hour: int
    minute: int
    prune: bool
    ticket: str | None = None
    name: str = "statekeeper-backup"

    def commands(self) -> list[list[str]]:
        base = [*self.program, "--config", self.config, "backup"]
        why = ["--reason", "scheduled", *(["--ticket", self.ticket] if self.ticket else [])]
        out = [[*base, "create", *why]]
        if self.prune:
            out.append([*base, "prune", "--yes", *why])
        return out


def parse_at(text: str) -> tuple[int, int]:
    """``HH:MM`` (24-hour, local time of the host) -> (hour, minute); ConfigError otherwise."""
    m = _AT.fullmatch(text.strip())
    if m is None:
        raise ConfigError(f"--at {text!r} is not a time of day (HH:MM, 24-hour, e.g. 02:15)")
    return int(m.group(1)), int(m.group(2))


def cron(job: Job) -> str:
    """One crontab line (for ``crontab -e`` of ``job.user``): the commands joined by ``&&``,
    so that a failed backup is not followed by a prune; cron mails what they print."""
    line = " && ".join(shlex.join(c) for c in [["cd", job.workdir], *job.commands()])
    line = line.replace("%", "\\%")  # a bare % ends the command in a crontab
    return (f"# {job.name}: nightly backup at {job.hour:02d}:{job.minute:02d} "
            f"(crontab -e as {job.user})\n{job.minute} {job.hour} * * * {line}\n")


def _systemd_word(w: str) -> str:
    """One word of ``ExecStart=``: specifiers (``%``) and variables (``$``) doubled; quoted
    when it holds anything but plain characters."""
    w = w.replace("%", "%%").replace("$", "$$")
    if _SAFE.fullmatch(w):
        return w
    return '"' + w.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _systemd_line(words: Sequence[str]) -> str:
    return " ".join(_systemd_word(w) for w in words)


def _systemd_path(p: str) -> str:
    """A path setting (``WorkingDirectory=``): absolute, specifiers doubled, no newline."""
    return p.replace("%", "%%")


def systemd(job: Job) -> dict[str, str]:
    """``{unit file name: text}``: a oneshot service (its ``ExecStart=`` lines run in order,
    each only if the previous one succeeded) and the timer that starts it every night
    (``Persistent=true``: a night missed while the host was down runs at the next boot)."""
    if "\n" in job.workdir or "\n" in job.config:
        raise ConfigError("a path with a newline cannot go into a systemd unit")
    execs = "\n".join(f"ExecStart={_systemd_line(c)}" for c in job.commands())
    service = (
        "[Unit]\n"
        "Description=statekeeper nightly backup\n"
        "Wants=network-online.target\n"
        "After=network-online.target\n"
        "\n"
        "[Service]\n"
        "Type=oneshot\n"
        f"User={job.user}\n"
        f"WorkingDirectory={_systemd_path(job.workdir)}\n"
        "UMask=0077\n"
        "# the ${VAR}s of statekeeper.toml (a password, say), one NAME=value a line, 0600:\n"
        f"# EnvironmentFile=/etc/statekeeper/{job.name}.env\n"
        f"{execs}\n"
    )
    timer = (
        "[Unit]\n"
        "Description=statekeeper nightly backup\n"
        "\n"
        "[Timer]\n"
        f"OnCalendar=*-*-* {job.hour:02d}:{job.minute:02d}:00\n"
        "Persistent=true\n"
        f"Unit={job.name}.service\n"
        "\n"
        "[Install]\n"
        "WantedBy=timers.target\n"
    )
    return {f"{job.name}.service": service, f"{job.name}.timer": timer}
