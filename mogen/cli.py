"""The `mogen` command line. It only parses arguments and dispatches; logic lives in the modules."""

from __future__ import annotations

import typer

from mogen import __version__

app = typer.Typer(
    name="mogen",
    help="Align flow-matching text-to-image models with Flow-DPPO against a mixture of rewards.",
    no_args_is_help=True,
    add_completion=False,
)


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"mogen {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: bool = typer.Option(
        False, "--version", callback=_version_callback, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Align flow-matching text-to-image models with Flow-DPPO against a mixture of rewards."""


from reward_zoo.cli import app as rewards_app  # noqa: E402  (the `mogen rewards` command group)

app.add_typer(rewards_app, name="rewards")
