"""What must hold of the stack itself at the end of an experiment: every component healthy,
every consumer group of the pipeline drained, no process left behind by a component."""

from __future__ import annotations

from qactl.client import kafka_admin
from qactl.runtime.stack import Stack
from qactl.runtime.supervisor import Leftover

# The pipeline's consumer groups (each service's group id, the score job's, the retry services'
# error and delay groups); other groups on a shared cluster are not the stack's to judge.
PIPELINE_GROUP_PREFIXES = ("llm-consumer", "persister", "flink-score-job", "retry-")


def unhealthy(stack: Stack) -> list[str]:
    """'component: why' for every component that is not healthy with all its processes running."""
    found = []
    for status in stack.status():
        if not status.ok:
            down = [p.name for p in status.processes if not p.running]
            why = f"not running: {', '.join(down)}" if down else status.health.detail
            found.append(f"{status.name}: {why}")
    return found


def lagging_groups(bootstrap: str, timeout: float = 5.0) -> list[str]:
    """'group: N behind' for every pipeline consumer group with records not yet committed."""
    client = kafka_admin.admin(bootstrap, timeout)
    behind = []
    for group in kafka_admin.consumer_groups(bootstrap, timeout, client):
        if not group.startswith(PIPELINE_GROUP_PREFIXES):
            continue
        lag = sum(kafka_admin.consumer_group_lag(bootstrap, group, timeout, client).values())
        if lag:
            behind.append(f"{group}: {lag} behind")
    return behind


def leftover_processes(stack: Stack) -> list[str]:
    """Processes started for this stack that no running component owns any more."""
    return [_describe(p) for p in stack.supervisor.leftovers()]


def _describe(leftover: Leftover) -> str:
    """'persister (pid 123): python -m ...'."""
    return f"{leftover.process} (pid {leftover.pid}): {leftover.command[:120]}"
