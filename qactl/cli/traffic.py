"""`qactl traffic`: the load generator; perceived vs real latency, success rate, throughput.

Every run is recorded in PostgreSQL (``traffic_runs``/``traffic_samples``) for `qactl metrics`,
which compares the synchronous design with the asynchronous pipeline from these rows only.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from qactl.cli.common import console, err_console, settings
from qactl.errors import ConfigError

if TYPE_CHECKING:
    from qactl.traffic.runner import RunResult, Sample
    from qactl.traffic.stats import Summary

app = typer.Typer()


def _fmt_ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f}" if value >= 100 else f"{value:.1f}"


def summary_table(summaries: list[Summary]) -> Table:
    """One column per run: the figures the original plan's comparison table names."""
    table = Table(title="traffic", title_justify="left")
    table.add_column("")
    for s in summaries:
        table.add_column("synchronous design" if s.mode == "sync" else "asynchronous pipeline", justify="right")

    def row(name: str, fn: Any) -> None:
        table.add_row(name, *[fn(s) for s in summaries])

    row("questions", lambda s: str(s.samples))
    for q in ("p50", "p95", "p99"):
        row(f"perceived latency {q} (ms)", lambda s, q=q: _fmt_ms(s.perceived_ms[q]))
    for q in ("p50", "p95", "p99"):
        row(f"real latency {q} (ms)", lambda s, q=q: _fmt_ms(s.real_ms[q]))
    row("success rate", lambda s: f"{s.success_percent:.1f} %" if s.success_percent is not None else "-")
    row("throughput (answers/s)", lambda s: f"{s.throughput_per_s:.2f}" if s.throughput_per_s is not None else "-")
    row("wall time (s)", lambda s: f"{s.wall_seconds:.1f}")
    row("answered from the store", lambda s: str(s.from_store))
    row("outcomes", lambda s: ", ".join(f"{k} {v}" for k, v in sorted(s.outcomes.items())))
    return table


def _run_with_progress(label: str, total: int, runner: Any, as_json: bool) -> RunResult:
    if as_json:
        return asyncio.run(runner(None))
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("ok {task.fields[ok]}  failed {task.fields[bad]}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console) as bar:
        task = bar.add_task(label, total=total, ok=0, bad=0)
        counts = {"ok": 0, "bad": 0}

        def on_sample(sample: Sample, finished: int, _total: int) -> None:
            counts["ok" if sample.success else "bad"] += 1
            bar.update(task, completed=finished, **counts)

        return asyncio.run(runner(on_sample))


@app.command()
def traffic(
    ctx: typer.Context,
    file: Annotated[
        Optional[Path],
        typer.Option("--file", "-f", help="Questions: text lines, or JSON / JSON lines / YAML with reference answers. "
                     "Default: the knowledge base's questions."),
    ] = None,
    count: Annotated[
        Optional[int], typer.Option("--count", "-n", min=1, help="Questions to send (cycling through the file). Default: each once.")
    ] = None,
    rate: Annotated[
        float, typer.Option("--rate", "-r", min=0, help="Questions per second, sent open-loop; 0: all at once.")
    ] = 5.0,
    poll_interval: Annotated[
        float, typer.Option("--poll-interval", min=0.01, help="Seconds between /status polls of a question.")
    ] = 0.5,
    timeout: Annotated[
        float, typer.Option("--timeout", min=1, help="Give up on a question after this many seconds.")
    ] = 300.0,
    sync_baseline: Annotated[
        bool, typer.Option("--sync-baseline", help="Also run the synchronous design: the LLM called directly, one question after another, on the same questions.")
    ] = False,
    no_pipeline: Annotated[
        bool, typer.Option("--no-pipeline", help="Skip the pipeline run (with --sync-baseline: only the baseline).")
    ] = False,
    unique: Annotated[
        bool, typer.Option("--unique", help="Tag every question with this run's id, so none is answered from the store "
                           "(the built-in gateway answers a tagged question as the known question it starts with).")
    ] = False,
    record: Annotated[bool, typer.Option("--record/--no-record", help="Store the run for `qactl metrics`.")] = True,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summaries as JSON.")] = False,
) -> None:
    """Send questions to the pipeline at a rate; report perceived (202) and real (terminal) latency.

    With --sync-baseline the same questions are then sent to the LLM directly, one after another,
    as the original synchronous design did; both runs are recorded for `qactl metrics`.
    """
    if no_pipeline and not sync_baseline:
        raise ConfigError("--no-pipeline leaves nothing to run; add --sync-baseline")
    from qactl.traffic import questions as question_sets
    from qactl.traffic.runner import run_async, run_sync
    from qactl.traffic.stats import summarize
    from qactl.traffic.store import record_run

    current = settings(ctx)
    base = question_sets.load_questions(file) if file is not None else question_sets.knowledge_base_questions()
    chosen = question_sets.take(base, count)
    digest = question_sets.digest(chosen)
    source = str(file) if file is not None else "knowledge base"
    if unique:
        chosen = question_sets.tagged(chosen, f"t{secrets.token_hex(3)}")
    rate_or_none = rate or None
    results: list[RunResult] = []
    if not no_pipeline:
        label = f"pipeline {rate:g}/s" if rate else "pipeline, all at once"
        results.append(
            _run_with_progress(
                label,
                len(chosen),
                lambda cb: run_async(current, chosen, rate_or_none, poll_interval, timeout, cb),
                as_json,
            )
        )
    if sync_baseline:
        results.append(
            _run_with_progress("synchronous, one by one", len(chosen), lambda cb: run_sync(current, chosen, cb), as_json)
        )
    run_ids: list[int | None] = []
    for result in results:
        run_id = None
        if record:
            run_id = record_run(
                current.postgres.url,
                result,
                questions_source=source,
                questions_digest=digest,
                rate=rate_or_none if result.mode == "async" else None,
                poll_interval=poll_interval if result.mode == "async" else None,
                note="unique-tagged questions" if unique else None,
            )
        run_ids.append(run_id)
    summaries = [summarize(r) for r in results]
    if as_json:
        payload = [
            {**s.__dict__, "success_percent": s.success_percent, "run_id": rid, "questions_digest": digest}
            for s, rid in zip(summaries, run_ids)
        ]
        console.print_json(json.dumps(payload))
        return
    console.print(summary_table(summaries))
    pipeline = next((s for s in summaries if s.mode == "async"), None)
    if pipeline is not None and pipeline.from_store:
        err_console.print(
            f"[yellow]note:[/] {pipeline.from_store} of {pipeline.samples} questions were answered from the store "
            "(asked before): their latency is the cache's, not the pipeline's. Use new questions, or --unique."
        )
    if record:
        console.print(f"[dim]recorded as run {', '.join(str(r) for r in run_ids)}; compare with `qactl metrics`[/]")
