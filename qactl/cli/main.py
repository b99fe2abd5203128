"""The `qactl` command: one Typer sub-app per command group, joined here."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import click
import typer
from typer.core import TyperGroup

from qactl.cli import ask, chaos, container, demo, gateway, llm, metrics, migrate, scale, stack, traffic, watch
from qactl.cli.common import CliContext, err_console
from qactl.errors import QactlError


class QactlGroup(TyperGroup):
    """Turns an expected failure anywhere below into one red line and exit code 1."""

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except QactlError as exc:
            err_console.print(f"[bold red]error:[/] {exc}", highlight=False)
            raise typer.Exit(1) from None


app = typer.Typer(
    name="qactl",
    cls=QactlGroup,
    help="Run and operate the asynchronous LLM question-answering pipeline "
    "(Kafka, Flink, PostgreSQL, Redis and the pipeline services).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
for group in (stack, ask, demo, watch, metrics, traffic, chaos, migrate, gateway, llm, scale, container):
    app.add_typer(group.app)


def _print_version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        typer.echo(f"qactl {version('qactl')}")
        raise typer.Exit()


@app.callback()
def root(
    ctx: typer.Context,
    _version: Annotated[
        bool, typer.Option("--version", callback=_print_version, is_eager=True, help="Print the version.")
    ] = False,
    config: Annotated[
        Optional[Path],
        typer.Option("--config", "-c", help="A TOML config file (see qactl.example.toml).", exists=True, dir_okay=False),
    ] = None,
    state_dir: Annotated[
        Optional[Path], typer.Option("--state-dir", help="Where data, pid files and logs live.")
    ] = None,
) -> None:
    """Global options; they apply to every command."""
    ctx.obj = CliContext(config=config, state_dir=state_dir)


def main() -> None:
    app()
