"""What must hold of the stack itself at the end of an experiment: every component healthy,
every consumer group of the pipeline drained, no process left behind by a component."""

from __future__ import annotations

from qactl.client import kafka_admin
from qactl.runtime.stack import Stack
from qactl.runtime.supervisor import Leftover
from services.llm_consumer.consumer import GROUP as LLM_CONSUMER_GROUP
from services.persister.service import GROUP as PERSISTER_GROUP
from services.retry.policy import KINDS


def pipeline_groups() -> frozenset[str]:
    """The pipeline's consumer groups, by their exact names: each service's group id, the retry
    services' error and delay groups, the score job's. Other groups on the cluster are not the
    stack's to judge, even one whose name starts like them (a test's, another application's)."""
    from flink.job import CONSUMER_GROUP as SCORE_JOB_GROUP  # noqa: PLC0415 (pyflink: only when asked)

    retry = [name for spec in KINDS.values() for name in (spec.service, spec.delay_group)]
    return frozenset({LLM_CONSUMER_GROUP, PERSISTER_GROUP, SCORE_JOB_GROUP, *retry})


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
    ours = pipeline_groups()
    for group in kafka_admin.consumer_groups(bootstrap, timeout, client):
        if group not in ours:
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
