"""`qactl watch`: the live Textual dashboard of the running stack."""

from __future__ import annotations

from typing import Annotated

import typer

from qactl.cli.common import settings

app = typer.Typer()


@app.command()
def watch(
    ctx: typer.Context,
    refresh: Annotated[
        float,
        typer.Option(
            "--refresh", "-r", min=0.1, max=3600, help="Seconds between the end of one poll and the start of the next."
        ),
    ] = 1.0,
) -> None:
    """Live dashboard: topic flow, consumer lag, retries, scores, outcomes, questions, health.

    Keys: n o u r c a fire demo cases, B T P D inject faults (X clears), enter opens a
    question's journey, ? help, q quit.
    """
    from qactl.tui.app import make_app  # Textual loads only for this command

    make_app(settings(ctx), refresh_seconds=refresh).run()
