"""The persister's side of the answer cache: best effort, after the database commit.

PostgreSQL holds the truth; a cache write that fails is logged and counted, and the API fills the
entry back from PostgreSQL on the next ask. So Redis never holds up the persister: after a
failure, writes are skipped for a cool-down (``services.common.breaker``), so a hung Redis costs
one timeout per cool-down, not one per answer; the periodic probe closes the breaker when Redis
answers again.
"""

from __future__ import annotations

import logging

import redis
from prometheus_client import Counter

from services.common.breaker import CircuitBreaker
from services.common.cache import CachedAnswer, cache_key

log = logging.getLogger(__name__)

CACHE_WRITES = Counter("qactl_persister_cache_writes", "Answer cache writes, by result", ["result"])


class AnswerCache:
    def __init__(self, url: str, ttl_seconds: int) -> None:
        self._redis = redis.Redis.from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5)
        self._ttl = ttl_seconds
        self.breaker = CircuitBreaker("answer-cache", errors=(redis.RedisError, OSError))
        self.ok = True
        self.detail = "not used yet"

    def put(self, entry: CachedAnswer) -> bool:
        def write() -> bool:
            self._redis.set(cache_key(entry.question_id), entry.to_bytes(), ex=self._ttl)
            return True

        written = self.breaker.call(f"cache write of {entry.question_id}", write, False)
        self.ok, self.detail = written, ("ok" if written else self.breaker.detail)
        CACHE_WRITES.labels("written" if written else "failed").inc()  # failed or skipped: the breaker's counts say which
        return written

    def probe(self) -> bool:
        """Ping, unless the breaker is cooling down (then Redis is known away); an answer closes it."""
        if not self.breaker.allow():
            return False
        try:
            self._redis.ping()
        except (redis.RedisError, OSError) as exc:
            self.breaker.failed(f"ping: {exc}")
            self.ok, self.detail = False, self.breaker.detail
            return False
        self.breaker.succeeded()
        self.ok, self.detail = True, "ok"
        return True

    def close(self) -> None:
        self._redis.close()
