"""`qactl chaos`: faults injected on the running stack, with the exactly-once-terminal check.

`qactl chaos list` names the experiments; `qactl chaos run NAME... | all` runs them one after
another and prints one row each; the exit code is 1 when any of them found a violation.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from qactl.cli.common import console, err_console, settings

if TYPE_CHECKING:
    from qactl.chaos.runner import ExperimentResult

app = typer.Typer(name="chaos", help="Fault experiments on the running stack: nothing lost, stuck or duplicated.", no_args_is_help=True)


@app.command("list")
def list_experiments() -> None:
    """Every experiment: what it breaks, for how long, and what restores it."""
    from qactl.chaos.experiments import EXPERIMENTS

    table = Table(title="chaos experiments", title_justify="left")
    for column in ("name", "fault", "held (s)", "restored by", "CI"):
        table.add_column(column)
    for e in EXPERIMENTS:
        table.add_row(e.name, e.description, f"{e.fault.seconds:g}" if e.fault.seconds else "-", e.restored_by, "yes" if e.ci else "")
    console.print(table)


def _fmt(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.0f}"
    return str(value)


def results_table(results: list[ExperimentResult]) -> Table:
    table = Table(title="chaos", title_justify="left")
    # in flight: accepted, not terminal at the fault; refused: not 202 between the fault and recovery.
    columns = ("experiment", "result", "in flight", "accepted", "terminal once", "stuck", "duplicated", "missing",
               "refused", "recover s", "recovered by")  # fmt: skip
    for column in columns:
        table.add_column(column, justify="left" if column in ("experiment", "result", "recovered by") else "right")
    style = {"passed": "green", "violated": "red", "error": "red", "skipped": "dim"}
    for r in results:
        stuck = r.counts.get("stuck", 0) + r.counts.get("inconsistent", 0) if r.counts else None
        table.add_row(
            r.experiment,
            f"[{style.get(r.state, 'white')}]{r.state}[/]",
            _fmt(r.in_flight_at_fault),
            _fmt(r.accepted if r.state != "skipped" else None),
            _fmt(r.counts.get("terminal_once") if r.counts else None),
            _fmt(stuck),
            _fmt(r.counts.get("duplicated") if r.counts else None),
            _fmt(r.counts.get("missing") if r.counts else None),
            _fmt(r.refused_during_fault if r.state != "skipped" else None),
            _fmt(r.recover_seconds),
            _fmt(r.recovered_by),
        )
    return table


@app.command("run")
def run(
    ctx: typer.Context,
    experiments: Annotated[list[str], typer.Argument(help="Experiment names (see `qactl chaos list`), or all.", show_default=False)],
    questions: Annotated[int, typer.Option("--questions", "-n", min=1, help="Questions sent per experiment.")] = 200,
    rate: Annotated[float, typer.Option("--rate", "-r", min=0.1, help="Questions per second.")] = 5.0,
    time_scale: Annotated[
        float, typer.Option("--time-scale", min=0.001, help="Multiplies every fault's duration (0.1: PostgreSQL stopped 3 s instead of 30 s).")
    ] = 1.0,
    recover_seconds: Annotated[
        float, typer.Option("--recover-seconds", min=0, help="How long the stack may take to be healthy again by itself before `qactl up` is run.")
    ] = 120.0,
    settle_seconds: Annotated[
        float, typer.Option("--settle-seconds", min=1, help="How long an accepted question may stay open after the fault before it counts as stuck.")
    ] = 300.0,
) -> None:
    """Run experiments one after another on the running stack; exit 1 on any violation."""
    from qactl.chaos.experiments import select
    from qactl.chaos.runner import ExperimentResult, RunOptions, run_experiment
    from qactl.errors import StackNotRunning
    from qactl.runtime.stack import Stack

    chosen = select(experiments)
    current = settings(ctx)
    options = RunOptions(questions=questions, rate=rate, time_scale=time_scale, recover_seconds=recover_seconds, settle_seconds=settle_seconds)

    def say(experiment: str, phase: str, detail: str) -> None:
        console.print(f"[bold]{experiment}[/] [cyan]{phase}[/] {detail}", highlight=False)

    results: list[ExperimentResult] = []
    for experiment in chosen:
        try:
            results.append(run_experiment(current, experiment, options, say, stack=Stack(current)))
        except StackNotRunning as exc:
            if not results:
                raise  # nothing ran: the one-line error says why
            # An earlier experiment left the stack broken (and `qactl up` could not mend it).
            results.append(ExperimentResult(experiment.name, state="error", violations=[str(exc)]))
            say(experiment.name, "error", str(exc))
    console.print(results_table(results))
    failed = [r for r in results if not r.ok]
    for r in failed:
        for violation in r.violations:
            err_console.print(f"[red]{r.experiment}:[/] {violation}", highlight=False)
    if failed:
        raise typer.Exit(1)
