"""`qactl scale <service> <replicas>`: more or fewer replicas of a consumer service, while it runs."""

from __future__ import annotations

from typing import Annotated

import typer

from qactl.cli.common import console, settings

app = typer.Typer()


@app.command()
def scale(
    ctx: typer.Context,
    service: Annotated[str, typer.Argument(help="llm-consumer, persister, retry-overload or retry-quota.")],
    replicas: Annotated[int, typer.Argument(min=0, max=10, help="How many replicas to run.")],
) -> None:
    """Start or stop replicas of a consumer service; the count stays for later `qactl up`.

    A replica stops gracefully (SIGTERM: it commits what it finished and leaves its consumer
    group); the group rebalances its partitions over the others (`qactl watch`, Kafka panel).
    """
    from qactl.runtime import topology

    verbs = {"starting": "starting", "started": "[green]started[/]", "stopping": "stopping", "stopped": "[dim]stopped[/]"}
    scaled = topology.scale(
        settings(ctx), service, replicas, lambda name, what: console.print(f"  {verbs[what]} {name}")
    )
    field = topology.services.scalable()[service].scale_field
    console.print(f"{service}: {getattr(scaled.services, field or '')} replica(s) running; kept in {topology.path(scaled)}")
