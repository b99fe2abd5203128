"""`qactl up | down | status | logs | doctor`: the stack's life cycle."""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from enum import Enum
from typing import TYPE_CHECKING, Annotated, Optional

import typer
from rich.live import Live
from rich.spinner import Spinner
from rich.table import Table
from rich.text import Text

from qactl.cli.common import console, settings
from qactl.errors import QactlError

if TYPE_CHECKING:
    from qactl.client.llm_server import ModelServerState
    from qactl.runtime.stack import ComponentStatus, Stack
    from qactl.runtime.supervisor import ProcessState
    from services.common.backend_choice import LlmRoute
    from services.common.settings import QactlSettings

app = typer.Typer()


def _stack(current: QactlSettings, only: Optional[list[str]] = None) -> Stack:
    from qactl.runtime.stack import Stack

    return Stack(current, only=only)


_PHASE_STYLE = {
    "ready": "[green]ready[/]",
    "unchanged": "[green]running[/] (unchanged)",
    "external": "[cyan]external[/]",
    "failed": "[red]failed[/]",
    "stopped": "[dim]stopped[/]",
    "cleaned": "[yellow]cleaned[/]",
}

OnlyOption = Annotated[
    Optional[list[str]],
    typer.Option("--only", help="Limit to these components (repeat the option); default: all."),
]


class _Progress:
    """A live table, one row per component: what it is doing now, and for how long."""

    def __init__(self, names: list[str]) -> None:
        self.rows: dict[str, tuple[str, str, float]] = {n: ("waiting", "", time.monotonic()) for n in names}

    def __call__(self, component: str, phase: str, detail: str) -> None:
        previous = self.rows.get(component)
        started = previous[2] if previous and previous[0] == phase else time.monotonic()
        self.rows[component] = (phase, detail, started)

    def __rich__(self) -> Table:
        table = Table(box=None, show_header=False, padding=(0, 1))
        for name, (phase, detail, started) in self.rows.items():
            if phase in _PHASE_STYLE:
                state: object = _PHASE_STYLE[phase]
            elif phase == "waiting" and not detail:
                state = "[dim]pending[/]"
            else:
                state = Spinner("dots", text=f"{phase} {time.monotonic() - started:4.0f}s")
            table.add_row(f"[bold]{name}[/]", state, f"[dim]{detail[:90]}[/]")
        return table


DEMO_DELAY_SCALE = 0.05


class Profile(str, Enum):
    default = "default"
    demo = "demo"
    cluster = "cluster"


CLUSTER_BROKERS = 3
CLUSTER_TASKMANAGERS = 2


def cluster_profile(settings: QactlSettings) -> dict[str, dict[str, int]]:
    """3 brokers (RF 3, min ISR 2), 2 task managers each with a slot per partition of
    llm-responses-success, so that either can run the whole score job alone."""
    from services.common.topics import LLM_SUCCESS

    slots = max(settings.flink.taskmanager_slots, LLM_SUCCESS.partitions)
    return {
        "kafka": {"brokers": CLUSTER_BROKERS},
        "flink": {"taskmanagers": CLUSTER_TASKMANAGERS, "taskmanager_slots": slots},
    }


def _topology_options(
    brokers: int | None, taskmanagers: int | None, llm_consumers: int | None
) -> dict[str, dict[str, int]]:
    values: dict[str, dict[str, int]] = {"kafka": {}, "flink": {}, "services": {}}
    if brokers is not None:
        values["kafka"]["brokers"] = brokers
    if taskmanagers is not None:
        values["flink"]["taskmanagers"] = taskmanagers
    if llm_consumers is not None:
        values["services"]["llm_consumer_replicas"] = llm_consumers
    return values


@app.command()
def up(
    ctx: typer.Context,
    only: OnlyOption = None,
    profile: Annotated[
        Profile,
        typer.Option(
            "--profile",
            help="'demo' shortens every retry delay 20x (quota 60 s -> 3 s) so the demo cases "
            "finish quickly; 'cluster' runs 3 Kafka brokers and 2 TaskManagers; 'default' keeps "
            "the policies and topology of the configuration.",
        ),
    ] = Profile.default,
    brokers: Annotated[
        Optional[int], typer.Option("--brokers", min=1, max=9, help="Kafka brokers (KRaft); kept for later commands.")
    ] = None,
    taskmanagers: Annotated[
        Optional[int], typer.Option("--taskmanagers", min=1, max=9, help="Flink TaskManagers; kept for later commands.")
    ] = None,
    llm_consumers: Annotated[
        Optional[int], typer.Option("--llm-consumers", min=0, max=10, help="llm-consumer replicas; kept (see `qactl scale`).")
    ] = None,
) -> None:
    """Provision what is missing and start the stack, in order; waits for each to be healthy.

    Idempotent: a second `qactl up` starts nothing and says so. '--profile cluster' runs 3 Kafka
    brokers (replication factor 3, min ISR 2) and 2 Flink TaskManagers; the numbers chosen here
    or by `qactl scale` stay with the state dir until `qactl down --purge`.
    """
    from qactl.runtime import topology

    current = settings(ctx)
    if profile is Profile.demo:
        # The services are handed these settings, demo profile included.
        current = demo_profile(current)
        console.print(f"[yellow]demo profile: every retry delay is x{DEMO_DELAY_SCALE} of the policy[/]")
    chosen = cluster_profile(current) if profile is Profile.cluster else {}
    for section, values in _topology_options(brokers, taskmanagers, llm_consumers).items():
        chosen.setdefault(section, {}).update(values)
    current = topology.with_values(current, chosen)
    other = topology.running_elsewhere(current)
    if other:
        raise QactlError(
            f"{', '.join(other)} of another topology run from this state dir; `qactl down` first "
            "(each topology keeps its own Kafka data)"
        )
    topology.save(current)  # before starting: a `down` after a failed `up` must know what to stop
    _say_topology(current)
    stack = _stack(current, only)
    _warn_exposed(current)
    progress = _Progress([c.name for c in stack.components])
    console.print(f"state: [bold]{stack.settings.state_dir}[/]  logs: {stack.settings.log_dir}")
    with Live(progress, console=console, refresh_per_second=8, transient=False):
        result = stack.up(progress)
    console.line()
    if not result.changed:
        console.print("[green]Everything was already up; nothing changed.[/]")
    else:
        console.print(f"[green]Started:[/] {', '.join(result.started)}")
    _print_endpoints(stack)


def _warn_exposed(current: QactlSettings) -> None:
    """One loud line per listener beyond loopback that `up` allows (the others it refuses)."""
    from qactl.runtime import exposure

    for line in exposure.check(current):
        console.print(f"[bold yellow]warning:[/] {line}", highlight=False)


def _say_topology(current: QactlSettings) -> None:
    k, f = current.kafka, current.flink
    if k.external or (k.brokers > 1 or f.taskmanagers > 1):
        if not k.external:
            console.print(
                f"cluster: {k.brokers} Kafka broker(s), {f.taskmanagers} Flink TaskManager(s), "
                f"{current.services.llm_consumer_replicas} llm-consumer(s)"
            )
        return
    console.print(
        "[dim]one node (1 broker, 1 TaskManager); `qactl up --profile cluster` runs 3 brokers "
        "(RF 3, min ISR 2) and 2 TaskManagers (or --brokers N --taskmanagers M)[/]"
    )


def demo_profile(settings: QactlSettings) -> QactlSettings:
    """A copy of ``settings`` whose retry delays are ``DEMO_DELAY_SCALE`` of the policy's."""
    policies = settings.policies.model_copy(update={"delay_scale": DEMO_DELAY_SCALE})
    return settings.model_copy(update={"policies": policies})


def _print_endpoints(stack: Stack) -> None:
    table = Table(title="endpoints", box=None, title_justify="left")
    table.add_column("component")
    table.add_column("endpoint")
    for comp in stack.components:
        if comp.endpoint:
            table.add_row(comp.name, comp.endpoint + (" (external)" if comp.external else ""))
    console.print(table)


@app.command()
def down(
    ctx: typer.Context,
    purge: Annotated[bool, typer.Option("--purge", help="Also delete all state: data, logs, config.")] = False,
    only: OnlyOption = None,
) -> None:
    """Stop everything `qactl up` started, last first (graceful, then forced)."""
    stack = _stack(settings(ctx), only)
    stopped = stack.down(purge=purge, events=lambda c, phase, d: _say_down(c, phase, d))
    console.print(f"stopped {len(stopped)} process(es)" + (" and removed the state" if purge else ""))


def _say_down(component: str, phase: str, detail: str) -> None:
    if phase == "stopping":
        console.print(f"  stopping {detail}")
    elif phase in ("setup", "cleaned"):
        console.print(f"  {detail}")
    elif phase == "failed":
        console.print(f"  [yellow]{component}: {detail}[/]")


@app.command()
def status(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Show the LLM the consumers call, and every component: state, pid, port, health.

    Exit code 1 when anything is unhealthy.
    """
    stack = _stack(settings(ctx))
    statuses = stack.status()
    route, server = _llm(stack.settings)
    if as_json:
        report = {"llm": llm_dict(route, server), "components": [_status_dict(s) for s in statuses]}
        typer.echo(json.dumps(report, indent=2, default=str))
    else:
        console.print(llm_lines(route, server))
        console.print(_status_table(stack, statuses))
    if not all(s.ok for s in statuses):
        raise typer.Exit(1)


def _llm(current: QactlSettings) -> tuple[LlmRoute, ModelServerState | None]:
    """The consumers' LLM, and the local model server's state when it is the one answering."""
    from qactl.client.llm_server import probe
    from services.common.backend_choice import llm_route

    route = llm_route(current)
    return route, probe(current.llm_server.base_url) if route.kind == "local" else None


def llm_lines(route: LlmRoute, server: ModelServerState | None) -> Text:
    """What answers the questions and the way the calls go; for the local model, how busy it is."""
    text = Text.assemble(("LLM", "bold"), "  ")
    if route.simulated:
        text.append(route.answered_by, style="yellow")
        text.append(", no model")
    else:
        text.append(f"{route.kind} ")
        text.append(route.model, style="bold")
    text.append(f": consumers → {'gateway ' if route.through_gateway else ''}{route.calls}")
    if route.upstream:
        text.append(f" → {route.upstream}")
    if route.why:
        text.append(f"  ({route.why})", style="dim")
    if server is None:
        return text
    text.append("\n     model server: ")
    if not server.reachable:
        text.append(server.summary(), style="red")
    elif not server.loaded:
        text.append("loading the model", style="yellow")
        text.append(f" ({server.detail})" if server.detail else "")
    else:
        text.append("loaded", style="green")
        served = server.model if server.model != route.model else None  # named above when the same
        text.append("".join(f", {part}" for part in (served, server.figures()) if part))
    return text


def llm_dict(route: LlmRoute, server: ModelServerState | None) -> dict[str, object]:
    return {
        "backend": route.kind,
        "model": route.model,
        "simulated": route.simulated,
        "calls": route.calls,
        "upstream": route.upstream,
        "why": route.why or None,
        "server": asdict(server) if server is not None else None,
    }


def _status_dict(status: ComponentStatus) -> dict[str, object]:
    return {
        "name": status.name,
        "kind": status.kind,
        "ok": status.ok,
        "external": status.external,
        "endpoint": status.endpoint,
        "detail": status.health.detail,
        "health": dict(status.health.data),
        "processes": [
            {
                "name": p.name,
                "running": p.running,
                "pid": p.pid,
                "keeper_pid": p.keeper_pid,
                "phase": p.phase,
                "restarts": p.restarts,
                "last_exit": p.last_exit,
            }
            for p in status.processes
        ],
    }


def restarts_cell(processes: list[ProcessState]) -> str:
    """Restarts per process, with the last exit when there was one, and what the keeper is doing."""
    parts = []
    for p in processes:
        text = str(p.restarts)
        if p.last_exit is not None and (p.restarts or p.phase != "running"):
            text += f" (last: {p.last_exit})"
        if p.phase == "gave-up":
            text = f"[red]gave up after {p.restarts}[/] (last: {p.last_exit})"
        elif p.phase == "restarting":
            text += " [yellow]restarting[/]"
        elif p.phase == "unowned":
            text += " [yellow]no keeper[/]"
        parts.append(f"{p.name}: {text}" if len(processes) > 1 else text)
    return ", ".join(parts) or "-"


def _status_table(stack: Stack, statuses: list[ComponentStatus]) -> Table:
    table = Table(box=None, padding=(0, 1))
    for column in ("component", "state", "pid", "restarts", "endpoint", "health"):
        table.add_column(column)
    for s in statuses:
        if s.external:
            state = "[cyan]external[/]" if s.health.ok else "[red]unreachable[/]"
        elif s.ok:
            state = "[green]up[/]"
        elif any(p.running for p in s.processes):
            state = "[yellow]unhealthy[/]"
        else:
            state = "[red]down[/]"
        pids = ",".join(str(p.pid) for p in s.processes if p.running) or "-"
        table.add_row(s.name, state, pids, restarts_cell(s.processes), s.endpoint or "-", s.health.detail)
    return table


@app.command()
def logs(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="A component or process name, e.g. kafka, llm-consumer-1.")],
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing new lines.")] = False,
    lines: Annotated[int, typer.Option("--lines", "-n", help="How many last lines to show.")] = 50,
) -> None:
    """Print a process's log file (under the state dir's logs/)."""
    stack = _stack(settings(ctx))
    path = _log_path(stack, name)
    typer.echo(stack.supervisor.tail(path.stem, lines))
    if follow:
        _follow(path)


def _log_path(stack: Stack, name: str):
    processes = {spec.name: comp.name for comp in stack.components for spec in comp.processes()}
    if name in processes:
        return stack.supervisor.log_file(name)
    owned = [p for p, comp in processes.items() if comp == name]
    if len(owned) == 1:
        return stack.supervisor.log_file(owned[0])
    if owned:
        raise QactlError(f"{name} has several processes; name one of: {', '.join(owned)}")
    raise QactlError(f"no component or process named {name!r}; known: {', '.join(processes)}")


def _follow(path) -> None:
    try:
        with open(path, "rb") as fh:
            fh.seek(0, 2)
            while True:
                chunk = fh.readline()
                if chunk:
                    typer.echo(chunk.decode("utf-8", "replace"), nl=False)
                else:
                    time.sleep(0.25)
    except KeyboardInterrupt:
        return


@app.command()
def doctor(ctx: typer.Context) -> None:
    """Check prerequisites (Java, Maven, PostgreSQL, Redis, ports, disk) and say what to install."""
    from qactl.runtime.doctor import run_checks

    checks = run_checks(settings(ctx))
    table = Table(box=None, padding=(0, 1))
    for column in ("check", "", "detail", "fix"):
        table.add_column(column)
    for check in checks:
        if not check.ok:
            mark = "[red]missing[/]"
        else:
            mark = "[yellow]warning[/]" if check.warning else "[green]ok[/]"
        table.add_row(check.name, mark, check.detail, check.fix or "")
    console.print(table)
    failing = [c for c in checks if not c.ok]
    if failing:
        console.print(f"[red]{len(failing)} problem(s)[/]: fix them, then run `qactl up`.")
        raise typer.Exit(1)
    console.print("[green]All prerequisites are in place.[/]")
