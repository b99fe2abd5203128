"""`qactl migrate FILE`: import an earlier run's response.json into PostgreSQL as a baseline.

The file format and the field mapping are documented in ``qactl/importer/records.py``, the
guarantees in ``qactl/importer/load.py``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from qactl.cli.common import console, settings
from qactl.importer.load import import_file
from qactl.importer.records import ImportReport

app = typer.Typer()

_PHASES = {"validating": "validating records", "loading": "loading (COPY)", "inserting": "inserting new rows"}


def _print_report(report: ImportReport, shown: int) -> None:
    verb = "would import" if report.dry_run else "imported"
    count = report.valid if report.dry_run else report.inserted
    console.print(
        f"[bold green]{verb} {count}[/] of {report.records} records from {escape(report.path)} "
        f"in {report.seconds:.2f} s"
        + ("" if report.dry_run else f"; {report.already_present} already present (left as they were)")
        + (f"; [bold red]{report.rejected} rejected[/]" if report.rejected else "; none rejected")
    )
    if report.status_from_score:
        console.print(f"[dim]{report.status_from_score} without a status: set from score vs the threshold[/]")
    if report.unscored_defaulted:
        console.print(f"[dim]{report.unscored_defaulted} without status or score: stored as validated, unscored[/]")
    if not report.rejected:
        return
    by_reason = Table(title="rejected records by reason", title_justify="left", box=None)
    by_reason.add_column("reason")
    by_reason.add_column("records", justify="right")
    for reason, n in report.reasons().most_common():
        by_reason.add_row(escape(reason), str(n))
    console.print(by_reason)
    first = Table(title=f"first {min(shown, len(report.rejections))} rejected", title_justify="left", box=None)
    first.add_column("record", justify="right")
    first.add_column("reason")
    for rejection in report.rejections[:shown]:
        first.add_row(str(rejection.record), escape(rejection.reason))
    console.print(first)


@app.command()
def migrate(
    ctx: typer.Context,
    file: Annotated[Path, typer.Argument(help="The earlier run's response.json (a JSON array or JSON lines).")],
    strict: Annotated[
        bool, typer.Option("--strict", help="Import nothing if any record is rejected.")
    ] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Validate and report; write nothing.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    show: Annotated[int, typer.Option("--show", min=0, help="Rejected records listed one by one.")] = 20,
) -> None:
    """Import an earlier run's answers into PostgreSQL `responses` (source=import) as a baseline.

    Validates every record first, then imports the valid ones in one transaction: nothing is
    half-imported. Idempotent: questions already stored are left as they were. Exit code 0
    when every record was imported or already present, 2 when some were rejected.
    """
    current = settings(ctx)
    if as_json:
        report = import_file(
            current.postgres.url, file, current.policies.quality_threshold, strict=strict, dry_run=dry_run
        )
        console.print_json(json.dumps(report.as_dict()))
    else:
        columns = (
            TextColumn("[bold]{task.description:<20}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
        )
        with Progress(*columns, console=console, transient=False) as bar:
            tasks: dict[str, int] = {}

            def progress(phase: str, done: int, total: int) -> None:
                if phase not in tasks:
                    tasks[phase] = bar.add_task(_PHASES.get(phase, phase), total=total)
                bar.update(tasks[phase], completed=done, total=total)

            report = import_file(
                current.postgres.url,
                file,
                current.policies.quality_threshold,
                strict=strict,
                dry_run=dry_run,
                progress=progress,
            )
        _print_report(report, show)
    if report.rejected:
        raise typer.Exit(2)
