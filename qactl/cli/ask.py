"""`qactl ask "question"`: submit a question and, with --follow, narrate its journey live."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Annotated, Optional

import typer
from rich.markup import escape
from rich.panel import Panel

from qactl.cli.common import console, settings
from services.common.schemas import Hop, Stage

if TYPE_CHECKING:
    from qactl.client.api import QuestionStatus, StorageApiClient, Submission

app = typer.Typer()

# Exit codes: 0 validated (or accepted, without --follow); QactlError -> 1 (at the CLI edge).
EXIT_CODES = {Stage.validated: 0, Stage.low_quality: 2, Stage.failed: 3}
EXIT_TIMEOUT = 4


def _print_submission(submission: Submission) -> None:
    if submission.answered:
        console.print(
            f"[bold green]answered at once[/] from the {submission.source} "
            f"in {submission.latency_ms:.0f} ms ({submission.question_id}, {submission.status})"
        )
        _print_answer(submission.status, submission.answer, submission.score, submission.model)
        return
    joined = " (joined the identical question already in flight)" if submission.coalesced else ""
    console.print(
        f"[bold cyan]accepted[/] in {submission.latency_ms:.0f} ms as [bold]{submission.question_id}[/]{joined}; "
        f"status at {submission.status_url}"
    )


def _print_answer(state: str, answer: str | None, score: float | None, model: str | None) -> None:
    title = f"{state}" + (f" - score {score:.3f}" if score is not None else " - unscored") + (f" - {model}" if model else "")
    style = "green" if state == Stage.validated.value else "yellow" if state == Stage.low_quality.value else "red"
    console.print(Panel(escape(answer or ""), title=title, border_style=style, expand=False))


def follow(client: StorageApiClient, question_id: str, timeout: float, as_json: bool) -> QuestionStatus:
    """Follow the question until a terminal state or the timeout, narrating each new hop."""
    from qactl.client.api import POLL_SECONDS
    from qactl.journey import hop_line

    started: float | None = None

    def narrate(hop: Hop) -> None:
        nonlocal started
        started = hop.at.timestamp() if started is None else started
        if not as_json:
            console.print(hop_line(hop, started))

    with console.status("following...", spinner="dots") as spinner:

        def waiting(status: QuestionStatus) -> None:
            if not as_json:
                spinner.update(f"[dim]{status.state.value}... (polling every {POLL_SECONDS * 1000:.0f} ms)[/]")

        return client.follow(question_id, timeout, on_hop=narrate, on_wait=waiting)


@app.command()
def ask(
    ctx: typer.Context,
    question: Annotated[str, typer.Argument(help="The question to ask.")],
    reference: Annotated[
        Optional[str], typer.Option("--reference", "-r", help="A reference answer to score against.")
    ] = None,
    follow_: Annotated[
        bool, typer.Option("--follow", "-f", help="Narrate every hop live until a terminal state.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of narration.")] = False,
    timeout: Annotated[float, typer.Option("--timeout", help="Give up following after this many seconds.")] = 900.0,
) -> None:
    """Ask the pipeline a question: an answer at once if it is known, else its id (202).

    Exit code: 0 validated (or accepted, without --follow), 2 low_quality, 3 failed,
    4 still in flight at --timeout, 1 when the API is not up or refuses the question.
    """
    from qactl.client.api import StorageApiClient

    with StorageApiClient(settings(ctx).api.base_url) as client:
        submission = client.submit(question, reference)
        if as_json and not (follow_ and not submission.answered):
            console.print_json(json.dumps(submission.__dict__, default=str))
        elif not as_json:
            _print_submission(submission)
        if submission.answered:
            raise typer.Exit(EXIT_CODES.get(Stage(submission.status), 1))
        if not follow_:
            return
        final = follow(client, submission.question_id, timeout, as_json)
    if as_json:
        console.print_json(json.dumps(final.raw, default=str))
    elif final.terminal:
        if final.state is Stage.failed:
            console.print(f"[bold red]failed[/]: {escape(final.reason or 'no reason recorded')}")
        else:
            _print_answer(final.state.value, final.answer, final.score, final.model)
    else:
        console.print(f"[yellow]still {final.state.value} after {timeout:.0f}s[/]; ask again later with the same question")
    if not final.terminal:
        raise typer.Exit(EXIT_TIMEOUT)
    raise typer.Exit(EXIT_CODES[final.state])
