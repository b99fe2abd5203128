"""What the demo reads on the running stack, besides the storage API and the gateway.

- the policies the running services use (the retry services report their ``delay_scale`` in
  their ``/health``: a stack started with the demo profile shortens delays, whatever the
  settings of this `qactl` process say);
- the LLM backend the running llm-consumers call (their ``/health`` names it): with a real
  model only what the faults force is certain;
- the end offsets of ``questions-pending`` (a cache hit must leave them unchanged) and whether
  an answer has reached the Redis cache.
"""

from __future__ import annotations

from dataclasses import dataclass

import redis

from qactl.errors import StackNotRunning
from qactl.runtime.services import components as service_components
from services.common import topics
from services.common.backend_choice import resolve_backend_kind
from services.common.cache import cache_key
from services.common.settings import Policies, QactlSettings


@dataclass(frozen=True)
class RunningPolicies:
    policies: Policies
    source: str  # where delay_scale came from


def running_policies(settings: QactlSettings) -> RunningPolicies:
    """The CLI's policies with the ``delay_scale`` the running retry services report."""
    found = {c.name: c for c in service_components(settings)}
    for name in ("retry-overload", "retry-quota"):
        component = found.get(name)
        if component is None:
            continue
        for spec in component.processes():
            health = spec.health() if spec.health is not None else None
            scale = health.data.get("delay_scale") if health is not None else None
            if isinstance(scale, (int, float)):
                policies = settings.policies.model_copy(update={"delay_scale": float(scale)})
                return RunningPolicies(policies, f"reported by {spec.name}")
    return RunningPolicies(settings.policies, "from this qactl's settings (retry services not reachable)")


@dataclass(frozen=True)
class RunningBackend:
    kind: str  # local, ollama, openai or simulated
    source: str  # where it came from

    @property
    def real(self) -> bool:
        """A real model writes the answers no fault forces (the simulator paraphrases the reference)."""
        return self.kind != "simulated"


def running_backend(settings: QactlSettings) -> RunningBackend:
    """The backend the running llm-consumers report, else the one this qactl's settings resolve to."""
    found = {c.name: c for c in service_components(settings)}
    component = found.get("llm-consumer")
    for spec in component.processes() if component is not None else []:
        health = spec.health() if spec.health is not None else None
        described = health.data.get("backend") if health is not None else None
        if isinstance(described, str) and described.strip():
            # "local at http://127.0.0.1:11435/v1 (model SmolLM2-135M-Instruct-Q4_1)"
            return RunningBackend(described.split()[0], f"reported by {spec.name}")
    kind = resolve_backend_kind(settings)
    return RunningBackend(kind, "from this qactl's settings (llm-consumer not reachable)")


def cached(settings: QactlSettings, question_id: str) -> bool:
    client = redis.Redis.from_url(settings.redis.connection_url, socket_timeout=2, socket_connect_timeout=2)
    try:
        return bool(client.exists(cache_key(question_id)))
    except redis.RedisError:
        return False
    finally:
        client.close()


def pending_end_offsets(settings: QactlSettings) -> dict[int, int]:
    from qactl.client.kafka_admin import end_offsets

    try:
        return end_offsets(settings.kafka.bootstrap, topics.QUESTIONS_PENDING.name)
    except Exception as exc:  # librdkafka raises KafkaException and friends
        raise StackNotRunning(f"Kafka is not reachable at {settings.kafka.bootstrap}: {exc}") from None
