"""`qactl ask "question"`: submit a question and, with --follow, narrate its journey live."""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Annotated, Optional

import typer
from rich.markup import escape
from rich.panel import Panel
from rich.text import Text

from qactl.cli.common import console, settings
from services.common.schemas import Hop, Stage

if TYPE_CHECKING:
    from qactl.client.api import QuestionStatus, StorageApiClient, Submission

app = typer.Typer()

POLL_SECONDS = 0.5

# Exit codes: 0 validated (or accepted, without --follow); QactlError -> 1 (at the CLI edge).
EXIT_CODES = {Stage.validated: 0, Stage.low_quality: 2, Stage.failed: 3}
EXIT_TIMEOUT = 4

_STAGE_STYLE = {
    Stage.queued: "cyan",
    Stage.generating: "blue",
    Stage.retrying_overload: "yellow",
    Stage.retrying_quota: "yellow",
    Stage.scoring: "magenta",
    Stage.regenerating: "yellow",
    Stage.validated: "bold green",
    Stage.low_quality: "bold yellow",
    Stage.failed: "bold red",
}


def describe_hop(hop: Hop, started: float | None = None) -> Text:
    """One line of narration for a hop: when, which stage, and what happened there."""
    line = Text()
    elapsed = f"+{hop.at.timestamp() - started:.2f}s " if started is not None else ""
    line.append(f"{hop.at:%H:%M:%S}.{hop.at.microsecond // 1000:03d} {elapsed}", style="dim")
    line.append(f"{hop.stage.value:<18}", style=_STAGE_STYLE.get(hop.stage, ""))
    if hop.topic:
        line.append(f"-> {hop.topic}  ", style="dim")
    details = []
    if hop.attempt:
        details.append(f"attempt {hop.attempt}")
    if hop.error is not None:
        code = f" {hop.error.status_code}" if hop.error.status_code else ""
        details.append(f"{hop.error.kind.value}{code}: {hop.error.message}".strip())
    if hop.score is not None:
        details.append(f"score {hop.score:.3f}")
    if hop.delay_seconds is not None:
        details.append(f"wait {hop.delay_seconds:.1f}s")
    if hop.note:
        details.append(hop.note)
    line.append(", ".join(details))
    return line


def _hop_id(hop: Hop) -> tuple[str, str, int]:
    return (hop.stage.value, hop.at.isoformat(), hop.attempt)


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


def follow(client: StorageApiClient, question_id: str, timeout: float, as_json: bool) -> QuestionStatus | None:
    """Poll the status every 500 ms, narrating new hops, until a terminal state or the timeout."""
    seen: set[tuple[str, str, int]] = set()
    started: float | None = None
    deadline = time.monotonic() + timeout
    last: QuestionStatus | None = None
    with console.status("following...", spinner="dots") as spinner:
        while True:
            last = client.status(question_id)
            for hop in sorted(last.hops, key=lambda h: h.at):
                if _hop_id(hop) in seen:
                    continue
                seen.add(_hop_id(hop))
                started = hop.at.timestamp() if started is None else started
                if not as_json:
                    console.print(describe_hop(hop, started))
            if last.terminal or time.monotonic() >= deadline:
                return last
            if not as_json:
                spinner.update(f"[dim]{last.state.value}... (polling every {POLL_SECONDS * 1000:.0f} ms)[/]")
            time.sleep(POLL_SECONDS)


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
    assert final is not None
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
