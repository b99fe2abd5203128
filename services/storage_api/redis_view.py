"""The API's view of Redis: the answer cache and the live status, both optional.

Redis is a shortcut here, never a dependency: when it fails the API keeps answering from
PostgreSQL and says "degraded". After a failure, calls are skipped for a short while (the
shared ``services.common.breaker.CircuitBreaker``) so that a hung Redis costs one timeout, not one
per request; a background ping closes the circuit again as soon as Redis answers.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

import redis.asyncio as aioredis
from pydantic import ValidationError
from redis.exceptions import RedisError

from services.common.breaker import CircuitBreaker
from services.common.cache import CachedAnswer, cache_key
from services.common.schemas import Hop, Stage
from services.common.status import EVENTS_CHANNEL, STATUS_TTL_SECONDS, hops_key, queue_record, status_key
from services.storage_api.batching import MicroBatcher

log = logging.getLogger(__name__)

T = TypeVar("T")
OPEN_SECONDS = 1.0


# The first hops of a batch of questions, in one call. A first hop may reach Redis after a stage
# has already recorded a later one (it is written behind the request), so it sets the current
# stage only when there is none yet.
RECORD_FIRST_HOPS = """
local ttl, channel = ARGV[1], ARGV[2]
for i = 1, #KEYS / 2 do
  local status, hops, a = KEYS[2 * i - 1], KEYS[2 * i], 2 + (i - 1) * 5
  if redis.call('EXISTS', status) == 0 then
    redis.call('HSET', status, 'stage', ARGV[a + 1], 'attempt', ARGV[a + 2], 'updated_at', ARGV[a + 3])
  end
  redis.call('RPUSH', hops, ARGV[a + 4])
  redis.call('EXPIRE', status, ttl)
  redis.call('EXPIRE', hops, ttl)
  redis.call('PUBLISH', channel, ARGV[a + 5])
end
return #KEYS / 2
"""


class RedisView:
    # The timeout is generous: a Redis merely slow under a loaded machine should not open the
    # circuit; a stopped one refuses at once anyway.
    def __init__(self, url: str, timeout: float = 1.0, max_connections: int = 16) -> None:
        self._client = aioredis.Redis.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout, health_check_interval=0,
            max_connections=max_connections,
        )
        self.breaker = CircuitBreaker("api", cooldown_seconds=OPEN_SECONDS, errors=(RedisError, OSError))
        self._gets: MicroBatcher[str, bytes | None] = MicroBatcher(self._mget, max_in_flight=2)
        self._background: set[asyncio.Task[object]] = set()
        # EVALSHA, loaded again by redis-py if Redis restarted and forgot it.
        self._record_first_hops = self._client.register_script(RECORD_FIRST_HOPS)
        self._first_hops: MicroBatcher[tuple[str, Hop], bool] = MicroBatcher(self._write_first_hops, max_in_flight=1)

    @property
    def ok(self) -> bool:
        return not self.breaker.open

    @property
    def detail(self) -> str:
        return self.breaker.detail

    async def _call(self, what: str, call: Callable[[], Awaitable[T]], default: T) -> T:
        if not self.breaker.allow():
            return default
        try:
            result = await call()
        except (RedisError, OSError) as exc:
            self.breaker.failed(f"{what}: {exc}")
            return default
        self.breaker.succeeded()
        return result

    async def probe(self) -> bool:
        """Ping even while the circuit is open; close it when Redis answers."""
        try:
            await self._client.ping()
        except (RedisError, OSError) as exc:
            self.breaker.failed(f"ping: {exc}")
            return False
        self.breaker.succeeded()
        return True

    async def _mget(self, keys: list[str]) -> list[bytes | None]:
        return await self._client.mget(keys)

    async def cached_answer(self, question_id: str) -> CachedAnswer | None:
        raw = await self._call("cache read", lambda: self._gets.submit(cache_key(question_id)), None)
        if raw is None:
            return None
        try:
            return CachedAnswer.from_bytes(raw)
        except ValidationError:
            log.warning("unreadable cache entry for %s ignored", question_id)
            return None

    def fill_cache(self, answer: CachedAnswer, ttl_seconds: int) -> None:
        """Put back an answer found in PostgreSQL (after a Redis restart, an eviction, ...), behind the request."""
        if not self.ok:
            return
        task = asyncio.get_running_loop().create_task(
            self._call(
                "cache write",
                lambda: self._client.set(cache_key(answer.question_id), answer.to_bytes(), ex=ttl_seconds),
                None,
            )
        )
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def record_first_hop(self, question_id: str, hop: Hop) -> None:
        """Write-behind: batched with the others of this moment; never delays the request."""
        if self.ok:
            self._first_hops.submit((question_id, hop))

    async def _write_first_hops(self, hops: list[tuple[str, Hop]]) -> list[bool]:
        keys: list[str] = []
        args: list[object] = [STATUS_TTL_SECONDS, EVENTS_CHANNEL]
        for question_id, hop in hops:
            payload = hop.model_dump_json()
            keys += [status_key(question_id), hops_key(question_id)]
            args += [hop.stage.value, hop.attempt, hop.at.isoformat(), payload,
                     f'{{"question_id": "{question_id}", "hop": {payload}}}']

        async def run() -> list[bool]:
            await self._record_first_hops(keys=keys, args=args)
            return [True] * len(hops)

        return await self._call("status write", run, [False] * len(hops))

    async def drain(self) -> None:
        await self._first_hops.drain()
        if self._background:
            await asyncio.gather(*list(self._background), return_exceptions=True)

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
