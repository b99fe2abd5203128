"""`qactl demo <case|all>`: run a demo case against the stack and narrate every hop live.

Exit code: 0 when every case followed its expected path, 2 when one did not, 1 when the stack
is not up (or another expected failure stopped the run). With a real model the expected path is
what the faults force; from the model's first own answer the gate decides, and the narration
says so ("model" lines).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape
from rich.rule import Rule
from rich.text import Text

from qactl.journey import hop_line
from qactl.cli.common import console, settings

if TYPE_CHECKING:
    from qactl.demo.runner import DemoEvent

app = typer.Typer()

EXIT_PATH_DIFFERED = 2


def narrate(event: DemoEvent) -> None:
    """One event of a running case, as the operator reads it."""
    if event.kind == "case":
        console.print(Rule(f"[bold]{escape(event.case)}[/]: {escape(event.message)}", align="left"))
    elif event.kind == "info":
        console.print(Text(event.message, style="dim"))
    elif event.kind == "warning":
        console.print(Text.assemble(("! ", "bold yellow"), (event.message, "yellow")))
    elif event.kind == "faults":
        console.print(Text.assemble(("fault ", "bold magenta"), event.message))
    elif event.kind == "submit":
        console.print(Text.assemble(("ask   ", "bold cyan"), event.message))
    elif event.kind == "hop" and event.hop is not None:
        line = Text("hop   ", style="bold blue")
        line.append_text(hop_line(event.hop))
        console.print(line)
        if event.explanation:
            console.print(Text(f"        policy: {event.explanation}", style="italic"))
    elif event.kind == "model":
        console.print(Text.assemble(("model ", "bold yellow"), (event.message, "yellow")))
    elif event.kind == "terminal":
        style = "bold green" if event.ok else "bold red"
        console.print(Text.assemble(("end   ", style), (event.message, style)))
    elif event.kind == "answer":
        console.print(Text.assemble(("answer ", "bold"), event.message))
    elif event.kind == "check":
        mark, style = ("ok  ", "green") if event.ok else ("FAIL", "bold red")
        console.print(Text.assemble((f"  {mark} ", style), escape(event.message)))
    elif event.kind == "result":
        console.print(Text(event.message, style="bold green" if event.ok else "bold red"))
        console.print()


def _complete(incomplete: str) -> list[str]:
    from qactl.demo.cases import case_names

    return [n for n in [*case_names(), "all"] if n.startswith(incomplete)]


@app.command()
def demo(
    ctx: typer.Context,
    cases: Annotated[
        list[str],
        typer.Argument(
            help="normal, overload, quota, regeneration, cache-hit (or any file in demo_scenarios/cases/), or all.",
            autocompletion=_complete,
            metavar="CASE...",
            show_default=False,
        ),
    ],
    as_json: Annotated[bool, typer.Option("--json", help="Print the results as JSON instead of narrating.")] = False,
) -> None:
    """Run demo cases against the running stack, narrating each hop until the terminal state.

    Each case injects its faults through the LLM gateway, asks its question through the storage API, follows /status and compares the path taken with the expected one (with a real model: exactly as far as the faults force it, then by the gate's rules, whatever the model's answers score). Exit 0 only if every expected path happened, 2 if one did not, 1 if the stack is not up.
    """
    from qactl.demo.runner import run_cases

    results = run_cases(settings(ctx), list(cases), listener=(lambda _e: None) if as_json else narrate)
    if as_json:
        console.print_json(json.dumps([r.as_dict() for r in results], default=str))
    elif len(results) > 1:
        for r in results:
            console.print(Text.assemble(("  ok   " if r.ok else "  FAIL ", "green" if r.ok else "bold red"), f"{r.name} ({r.seconds:.1f} s)"))
    if not all(r.ok for r in results):
        raise typer.Exit(EXIT_PATH_DIFFERED)
