"""`qactl gateway fault | faults | clear | stats`: drive the built-in LLM's fault injection."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Annotated, Optional

import typer
from pydantic import ValidationError
from rich.table import Table

from qactl.cli.common import console, settings
from qactl.client.fault_presets import PRESETS, describe_rule
from qactl.errors import ConfigError
from services.llm_gateway.faults import FaultRule

if TYPE_CHECKING:
    from qactl.client.gateway import GatewayClient

app = typer.Typer(name="gateway", help="Inject faults into the built-in LLM gateway and read its call statistics.")

JsonOption = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]


def _client(ctx: typer.Context) -> GatewayClient:
    from qactl.client.gateway import GatewayClient

    return GatewayClient.from_settings(settings(ctx))


@app.command()
def fault(
    ctx: typer.Context,
    kind: Annotated[str, typer.Argument(help=f"One of: {', '.join(PRESETS)} (503-burst = three 503s).")],
    count: Annotated[Optional[int], typer.Option("--count", "-n", min=1, help="For the next N calls.")] = None,
    rate: Annotated[Optional[float], typer.Option("--rate", "-r", min=0.0, max=1.0, help="On this fraction of calls.")] = None,
    match: Annotated[Optional[str], typer.Option("--match", "-m", help="Only questions containing this text.")] = None,
    retry_after: Annotated[Optional[float], typer.Option("--retry-after", help="Retry-After seconds on errors.")] = None,
    seconds: Annotated[Optional[float], typer.Option("--seconds", help="timeout: how long to stall.")] = None,
    as_json: JsonOption = False,
) -> None:
    """Add a fault rule; without --count or --rate, the preset's own scope applies."""
    preset = PRESETS.get(kind)
    if preset is None:
        raise ConfigError(f"unknown fault {kind!r}; choose one of: {', '.join(PRESETS)}")
    if count is not None and rate is not None:
        raise ConfigError("give --count or --rate, not both")
    data = preset.model_dump()
    if count is not None or rate is not None:
        data.update(count=count, rate=rate)
    for key, value in (("match", match), ("retry_after", retry_after), ("seconds", seconds)):
        if value is not None:
            data[key] = value
    try:
        rule = FaultRule.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"invalid fault rule: {exc.errors()[0]['msg'].removeprefix('Value error, ')}") from None
    with _client(ctx) as client:
        added = client.add_rule(rule)
    if as_json:
        console.print_json(added.model_dump_json())
    else:
        console.print(f"[green]rule {added.id}[/]: {describe_rule(added)}", highlight=False, soft_wrap=True)


@app.command()
def faults(ctx: typer.Context, as_json: JsonOption = False) -> None:
    """List the active fault rules, in the order they apply."""
    with _client(ctx) as client:
        rules = client.list_faults()
    if as_json:
        console.print_json(json.dumps([r.model_dump() for r in rules]))
        return
    if not rules:
        console.print("no fault rules: every call is answered normally")
        return
    table = Table("id", "rule", "fired", box=None)
    for rule in rules:
        table.add_row(str(rule.id), describe_rule(rule.model_copy(update={"count": rule.remaining})), str(rule.fired))
    console.print(table)


@app.command()
def clear(ctx: typer.Context) -> None:
    """Remove every fault rule."""
    with _client(ctx) as client:
        console.print(f"cleared {client.clear_faults()} fault rule(s)")


@app.command()
def stats(
    ctx: typer.Context,
    as_json: JsonOption = False,
    reset: Annotated[bool, typer.Option("--reset", help="Zero the counters after printing them.")] = False,
) -> None:
    """Calls the gateway answered, by outcome and per question."""
    with _client(ctx) as client:
        numbers = client.stats()
        if reset:
            client.reset_stats()
    if as_json:
        console.print_json(json.dumps(numbers.__dict__))
        return
    console.print(f"{numbers.total} call(s): " + (", ".join(f"{k} {v}" for k, v in sorted(numbers.by_outcome.items())) or "none"))
    if numbers.by_question:
        table = Table("question", *sorted(numbers.by_outcome), box=None)
        for question, counts in sorted(numbers.by_question.items()):
            table.add_row(question[:60], *(str(counts.get(o, 0)) for o in sorted(numbers.by_outcome)))
        console.print(table)
