"""Where a question is right now: every stage records its hops here, `/status` reads them.

Kept in Redis (a hash for the current stage, a list for the history, both expiring), and
announced on a pub/sub channel for live views. It is a best-effort view: the durable truth of a
question's outcome is PostgreSQL, written by the persister, and the message itself carries its
hops. A Redis outage therefore never stops a stage; it only blurs the live view. Writes go
through a circuit breaker (``services.common.breaker``): a hung Redis costs one timeout per
cool-down, not one per hop.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import redis

from services.common.breaker import CircuitBreaker
from services.common.schemas import Hop, Stage
from services.common.settings import QactlSettings

log = logging.getLogger(__name__)

EVENTS_CHANNEL = "qactl:events"
STATUS_TTL_SECONDS = 7 * 24 * 3600


def _connect(url: str) -> redis.Redis:
    # Short timeouts: a slow or absent Redis must not stall a pipeline stage.
    return redis.Redis.from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5)


def status_key(question_id: str) -> str:
    return f"qactl:status:{question_id}"


def hops_key(question_id: str) -> str:
    return f"qactl:hops:{question_id}"


def queue_record(pipe: Any, question_id: str, hop: Hop) -> None:
    """Queue the commands that record ``hop`` on a pipeline, sync or ``redis.asyncio`` alike."""
    payload = hop.model_dump_json()
    pipe.hset(
        status_key(question_id),
        mapping={"stage": hop.stage.value, "attempt": hop.attempt, "updated_at": hop.at.isoformat()},
    )
    pipe.rpush(hops_key(question_id), payload)
    pipe.expire(status_key(question_id), STATUS_TTL_SECONDS)
    pipe.expire(hops_key(question_id), STATUS_TTL_SECONDS)
    pipe.publish(EVENTS_CHANNEL, f'{{"question_id": "{question_id}", "hop": {payload}}}')


def status_breaker() -> CircuitBreaker:
    return CircuitBreaker("status", errors=(redis.RedisError, OSError))


class StatusTracker:
    def __init__(self, settings: QactlSettings, client: redis.Redis | None = None) -> None:
        self._redis = client or _connect(settings.redis.connection_url)
        self.breaker = status_breaker()

    @classmethod
    def from_url(cls, url: str) -> "StatusTracker":
        """For processes that get a Redis URL rather than the whole settings (the Flink job)."""
        tracker = cls.__new__(cls)
        tracker._redis = _connect(url)
        tracker.breaker = status_breaker()
        return tracker

    def record(self, question_id: str, hop: Hop) -> bool:
        """Append ``hop`` and make its stage current; False if Redis is unreachable (or skipped
        while the breaker is open: the breaker logs the outage once)."""

        def write() -> bool:
            pipe = self._redis.pipeline(transaction=True)
            queue_record(pipe, question_id, hop)
            pipe.execute()
            return True

        return self.breaker.call(f"status of {question_id}", write, False)

    def record_many(self, hops: Sequence[tuple[str, Hop]]) -> bool:
        """Record several hops, in order, in one round trip; False if Redis is unreachable (or skipped)."""

        def write() -> bool:
            pipe = self._redis.pipeline(transaction=False)
            for question_id, hop in hops:
                queue_record(pipe, question_id, hop)
            pipe.execute()
            return True

        return self.breaker.call(f"{len(hops)} status hop(s)", write, False)

    def current(self, question_id: str) -> Stage | None:
        raw = self._redis.hget(status_key(question_id), "stage")
        return Stage(raw.decode()) if raw else None

    def hops(self, question_id: str) -> list[Hop]:
        return [Hop.model_validate_json(item) for item in self._redis.lrange(hops_key(question_id), 0, -1)]

    def close(self) -> None:
        self._redis.close()
