"""The ``statekeeper`` entry point: the root group (:mod:`cli.root`) with every command
module's commands registered on it, here and only here."""

from __future__ import annotations

import atexit
import gc
import sys

from . import (
    backup_cmds,
    completion_cmds,
    config_cmds,
    health_cmds,
    keys_cmds,
    ledger_cmds,
    migrate_cmds,
    rehearse_cmds,
    report_cmds,
    upgrade_cmds,
)
from .root import cli

__all__ = ["cli", "main"]

for _command in (backup_cmds.backup, completion_cmds.completion, config_cmds.config_group,
                 health_cmds.health, keys_cmds.keys, ledger_cmds.ledger_group,
                 migrate_cmds.migrate, rehearse_cmds.rehearse, report_cmds.report,
                 *upgrade_cmds.COMMANDS):
    cli.add_command(_command)


def main() -> None:
    # Exit cost: with SQLAlchemy and psycopg loaded, the interpreter's last garbage collection
    # at shutdown takes ~80 ms, after the command has finished, committed and flushed. Frozen
    # objects are skipped by that collection; atexit handlers, flushing of the standard
    # streams and weakref finalizers still run. Registered first, so it runs after the
    # handlers that libraries register while the command runs (atexit is last in, first out).
    atexit.register(gc.freeze)
    try:
        cli.main(prog_name="statekeeper")
    except SystemExit:
        raise
    except BrokenPipeError:
        sys.exit(1)
