"""The API's view of Redis: the answer cache and the live status, both optional.

Redis is a shortcut here, never a dependency: when it fails the API keeps answering from
PostgreSQL and says "degraded". After a failure, calls are skipped for a short while (a circuit
breaker) so that a hung Redis costs one timeout, not one per request; a background ping closes
the circuit again as soon as Redis answers.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import redis.asyncio as aioredis
from pydantic import ValidationError
from redis.exceptions import RedisError

from services.common.cache import CachedAnswer, cache_key
from services.common.schemas import Hop, Stage
from services.common.status import hops_key, queue_record, status_key

log = logging.getLogger(__name__)

T = TypeVar("T")
OPEN_SECONDS = 1.0


class RedisView:
    def __init__(self, url: str, timeout: float = 0.25) -> None:
        self._client = aioredis.Redis.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout, health_check_interval=0
        )
        self._open_until = 0.0
        self.detail = "not checked yet"

    @property
    def ok(self) -> bool:
        return time.monotonic() >= self._open_until

    async def _call(self, what: str, call: Callable[[], Awaitable[T]], default: T) -> T:
        if not self.ok:
            return default
        try:
            return await call()
        except (RedisError, OSError) as exc:
            self._trip(f"{what}: {exc}")
            return default

    def _trip(self, detail: str) -> None:
        if self.ok:
            log.warning("redis unavailable, serving without cache: %s", detail)
        self._open_until = time.monotonic() + OPEN_SECONDS
        self.detail = f"unreachable: {detail}"

    async def probe(self) -> bool:
        """Ping even while the circuit is open; close it when Redis answers."""
        try:
            await self._client.ping()
        except (RedisError, OSError) as exc:
            self._trip(f"ping: {exc}")
            return False
        if not self.ok:
            log.info("redis is back")
        self._open_until = 0.0
        self.detail = "ok"
        return True

    async def cached_answer(self, question_id: str) -> CachedAnswer | None:
        raw = await self._call("cache read", lambda: self._client.get(cache_key(question_id)), None)
        if raw is None:
            return None
        try:
            return CachedAnswer.from_bytes(raw)
        except ValidationError:
            log.warning("unreadable cache entry for %s ignored", question_id)
            return None

    async def fill_cache(self, answer: CachedAnswer, ttl_seconds: int) -> None:
        """Put back an answer found in PostgreSQL (after a Redis restart, an eviction, ...)."""
        await self._call(
            "cache write", lambda: self._client.set(cache_key(answer.question_id), answer.to_bytes(), ex=ttl_seconds), None
        )

    async def record_hop(self, question_id: str, hop: Hop) -> bool:
        async def run() -> bool:
            pipe = self._client.pipeline(transaction=True)
            queue_record(pipe, question_id, hop)
            await pipe.execute()
            return True

        return await self._call("status write", run, False)

    async def forget_status(self, question_id: str) -> None:
        await self._call(
            "status delete", lambda: self._client.delete(status_key(question_id), hops_key(question_id)), 0
        )

    async def live_status(self, question_id: str) -> tuple[Stage | None, list[Hop]] | None:
        """Current stage and hops as recorded by the stages; None if Redis knows nothing (or is down)."""

        async def run() -> tuple[bytes | None, list[bytes]]:
            pipe = self._client.pipeline(transaction=False)
            pipe.hget(status_key(question_id), "stage")
            pipe.lrange(hops_key(question_id), 0, -1)
            stage, hops = await pipe.execute()
            return stage, hops

        found = await self._call("status read", run, None)
        if found is None:
            return None
        raw_stage, raw_hops = found
        if raw_stage is None and not raw_hops:
            return None
        hops = []
        for item in raw_hops:
            try:
                hops.append(Hop.model_validate_json(item))
            except ValidationError:
                continue
        try:
            stage = Stage(raw_stage.decode()) if raw_stage else None
        except ValueError:
            stage = None
        return stage, hops

    async def close(self) -> None:
        await self._client.aclose()
