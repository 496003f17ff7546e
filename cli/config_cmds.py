"""``statekeeper config show``: the effective configuration and where each value came from."""

from __future__ import annotations

import json

import click
from click.core import ParameterSource

from statekeeper import command

from .root import Obj, json_option, pass_obj, target_option


@click.group("config")
def config_group() -> None:
    """The configuration: flags > environment (STATEKEEPER_*) > statekeeper.toml > defaults."""


@config_group.command("show")
@target_option
@json_option
@pass_obj
def show(obj: Obj, target_url: str | None, as_json: bool) -> None:
    """The effective configuration, each value with its origin (flag, env, file, default);
    passwords masked, ${VAR} references shown as written. Nothing is connected to."""
    settings = obj.load(target_url)
    entries = command.config_show(settings)
    path = settings.config.path
    # how the file was found: --config, $STATEKEEPER_CONFIG, or ./statekeeper.toml
    source = click.get_current_context().find_root().get_parameter_source("config")
    found = ("--config" if source is ParameterSource.COMMANDLINE else
             "env STATEKEEPER_CONFIG" if source is ParameterSource.ENVIRONMENT else
             "the working directory")
    if as_json:
        obj.emit(file=None if path is None else str(path), file_from=found,
                 values={e.name: e.to_dict() for e in entries})
        return
    click.echo(f"# configuration file: {path} (from {found})" if path else
               "# configuration file: (none: defaults)")
    width = max(len(e.name) for e in entries)
    for e in entries:
        value = "(not set)" if e.value is None else json.dumps(e.value, ensure_ascii=False)
        origin = e.origin if e.source is None else f"{e.origin} {e.source}"
        click.echo(f"{e.name:<{width}} = {value}  # {origin}")
        if e.resolved is not None and e.resolved != e.value:
            click.echo(f"{'':<{width}}   # -> {e.resolved}")
