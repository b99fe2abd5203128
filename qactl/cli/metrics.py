"""`qactl metrics`: latency by stage, errors, regeneration, throughput, baseline, sync vs async."""

from __future__ import annotations

import csv
import io
import json
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape
from rich.console import RenderableType
from rich.table import Table
from rich.text import Text

from qactl.cli.common import console, settings
from qactl.reports.sections import SECTIONS, Section, collect

app = typer.Typer()


class Format(str, Enum):
    table = "table"
    json = "json"
    csv = "csv"


# Short headers so that every table fits 80 columns; JSON and CSV keep the full names.
HEADERS = {
    "regenerations": "regen",
    "questions": "n",
    "validated": "valid",
    "low_quality": "low q",
    "validated_percent": "valid %",
    "avg_first_score": "first",
    "avg_final_score": "final",
    "avg_score_gain": "gain",
    "percent_of_errors": "% of errors",
    "avg_change_from_previous": "change vs prev",
    "above_threshold": "> threshold",
}


def render_table(section: Section) -> RenderableType:
    """A section as a Rich table; a section without rows as its title and why it is empty."""
    if not section.rows:
        return Text.assemble((section.title, "bold"), "\n  ", (section.note or "no rows", "yellow"), "\n")
    table = Table(
        title=section.title,
        title_justify="left",
        caption=escape(section.note) if section.note else None,
        caption_justify="left",
        min_width=min(max(len(section.title), len(section.note or "")), 100),
    )
    for column in section.columns:
        table.add_column(HEADERS.get(column, column.replace("_", " ")), justify="left" if column in ("stage", "metric", "outcome", "error_kind", "source") else "right")
    for row in section.rows:
        table.add_row(*["-" if v is None else escape(str(v)) for v in row])
    return table


def to_csv(sections: list[Section]) -> str:
    """One block per section: a header row then the rows, each prefixed by the section's name."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    for index, section in enumerate(sections):
        if index:
            out.write("\n")
        writer.writerow(["section", *section.columns])
        for row in section.rows:
            writer.writerow([section.name, *["" if v is None else v for v in row]])
        if not section.rows and section.note:
            writer.writerow([section.name, section.note])
    return out.getvalue()


@app.command()
def metrics(
    ctx: typer.Context,
    fmt: Annotated[Format, typer.Option("--format", "-f", help="table, json or csv.")] = Format.table,
    section: Annotated[
        Optional[list[str]],
        typer.Option("--section", "-s", help=f"Only these sections (repeat): {', '.join(SECTIONS)}."),
    ] = None,
    plot: Annotated[
        Optional[Path], typer.Option("--plot", help="Also write PNG charts into this directory.", file_okay=False)
    ] = None,
    async_run: Annotated[
        Optional[int], typer.Option("--async-run", help="Compare this pipeline traffic run (default: the latest paired).")
    ] = None,
    sync_run: Annotated[
        Optional[int], typer.Option("--sync-run", help="Compare this synchronous baseline run.")
    ] = None,
) -> None:
    """What the pipeline measured, from PostgreSQL: nothing typed in, "not measured yet" when absent."""
    wanted = tuple(section) if section else SECTIONS
    unknown = [s for s in wanted if s not in SECTIONS]
    if unknown:
        raise typer.BadParameter(f"unknown section {', '.join(unknown)}; choose from {', '.join(SECTIONS)}", param_hint="--section")
    current = settings(ctx)
    threshold = current.policies.quality_threshold
    found = collect(current.postgres.url, threshold, wanted, async_run, sync_run)
    if fmt is Format.json:
        console.print_json(json.dumps({s.name: s.as_dict() for s in found}, default=str))
    elif fmt is Format.csv:
        # Plain stdout: CSV must not be wrapped or styled by Rich.
        typer.echo(to_csv(found), nl=False)
    else:
        for s in found:
            console.print(render_table(s))
    if plot is not None:
        from qactl.reports.charts import write_charts

        written = write_charts(found, plot, threshold)
        message = (
            f"wrote {len(written)} chart(s): " + ", ".join(str(p) for p in written)
            if written
            else "no chart written: nothing measured yet"
        )
        # Keep stdout parseable for json and csv: the note goes to stderr then.
        typer.echo(message, err=fmt is not Format.table)
