"""`qactl container ...`: what the images of compose/ run, one component per container."""

from __future__ import annotations

from typing import Annotated

import typer

from qactl.cli.common import console, err_console, settings

app = typer.Typer(
    name="container",
    help="Run one component of the stack in a container (compose/'s images use these).",
    no_args_is_help=True,
)


def _say(line: str) -> None:
    console.print(f"qactl container: {line}", highlight=False)


@app.command()
def run(ctx: typer.Context, name: Annotated[str, typer.Argument(help="The process, e.g. kafka-1, postgres, llm-consumer-2.")]) -> None:
    """Provision NAME as `qactl up` does, then become its process (in the foreground)."""
    from qactl.runtime import container

    container.run(name, settings(ctx), _say)


@app.command()
def health(ctx: typer.Context, name: Annotated[str, typer.Argument(help="The process run here.")]) -> None:
    """Exit 0 when NAME answers its runtime health probe (a container's healthcheck)."""
    from qactl.runtime import container

    result = container.health(name, settings(ctx))
    (console if result.ok else err_console).print(result.detail, highlight=False)
    raise typer.Exit(0 if result.ok else 1)


@app.command()
def credentials(
    ctx: typer.Context,
    show: Annotated[bool, typer.Option("--show", help="Print them (JSON) on standard output, for qactl on the host.")] = False,
) -> None:
    """Generate the stack's credentials (0600, in the state dir's secrets/) unless they exist:
    compose's first one-shot, into the volume every container mounts."""
    from qactl.runtime import credentials as stored

    s = settings(ctx)
    stored.ensure(s)
    if show:
        print(stored.path(s).read_text(), end="")
    else:
        _say(f"credentials in {stored.path(s)}")


@app.command()
def setup(ctx: typer.Context) -> None:
    """Create the topics on the cluster and the database with its migrations (idempotent)."""
    from qactl.runtime import container

    container.setup(settings(ctx), _say)
    _say("topics and migrations in place")


@app.command("submit-job")
def submit_job(ctx: typer.Context) -> None:
    """Submit the score job to the Flink cluster unless it runs already (idempotent)."""
    from qactl.runtime import container

    submitted = container.submit_job(settings(ctx), _say)
    _say("score job submitted and running" if submitted else "score job already running")


@app.command()
def provision(ctx: typer.Context) -> None:
    """Download what the runtime needs before it runs (Kafka jars, Flink's Kafka connector,
    the scorer's ONNX export): an image's build step (scripts/bootstrap.sh runtime)."""
    from qactl.runtime import container

    container.provision_image(settings(ctx), _say)
    _say("runtime downloads in place")
