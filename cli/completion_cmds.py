"""``statekeeper completion bash|zsh|fish``: the shell's completion script (click's own)."""

from __future__ import annotations

import click


@click.command("completion")
@click.argument("shell", type=click.Choice(["bash", "zsh", "fish"]))
@click.pass_context
def completion(ctx: click.Context, shell: str) -> None:
    """Print the completion script for SHELL; load it from the shell's start-up file:

    \b
      bash: eval "$(statekeeper completion bash)"    (~/.bashrc)
      zsh:  eval "$(statekeeper completion zsh)"     (~/.zshrc)
      fish: statekeeper completion fish > ~/.config/fish/completions/statekeeper.fish
    """
    from click.shell_completion import get_completion_class

    cls = get_completion_class(shell)
    if cls is None:  # pragma: no cover - click ships all three
        raise click.UsageError(f"no completion for {shell}")
    root = ctx.find_root()
    assert root.command is not None
    click.echo(cls(root.command, {}, "statekeeper", "_STATEKEEPER_COMPLETE").source())
