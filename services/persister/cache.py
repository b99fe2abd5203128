"""The persister's side of the answer cache: best effort, after the database commit.

PostgreSQL holds the truth; a cache write that fails is logged and counted, and the API fills the
entry back from PostgreSQL on the next ask. So Redis never holds up the persister.
"""

from __future__ import annotations

import logging

import redis
from prometheus_client import Counter

from services.common.cache import CachedAnswer, cache_key

log = logging.getLogger(__name__)

CACHE_WRITES = Counter("qactl_persister_cache_writes", "Answer cache writes, by result", ["result"])


class AnswerCache:
    def __init__(self, url: str, ttl_seconds: int) -> None:
        self._redis = redis.Redis.from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5)
        self._ttl = ttl_seconds
        self.ok = True
        self.detail = "not used yet"

    def put(self, entry: CachedAnswer) -> bool:
        try:
            self._redis.set(cache_key(entry.question_id), entry.to_bytes(), ex=self._ttl)
        except redis.RedisError as exc:
            if self.ok:
                log.warning("redis unavailable, answers not cached (PostgreSQL has them): %s", exc)
            self.ok, self.detail = False, f"unreachable: {exc}"
            CACHE_WRITES.labels("failed").inc()
            return False
        self.ok, self.detail = True, "ok"
        CACHE_WRITES.labels("written").inc()
        return True

    def probe(self) -> bool:
        try:
            self._redis.ping()
        except redis.RedisError as exc:
            self.ok, self.detail = False, f"unreachable: {exc}"
            return False
        self.ok, self.detail = True, "ok"
        return True

    def close(self) -> None:
        self._redis.close()
