"""Redis: a client from settings, and the facts `qactl status` shows (ping, version, keys)."""

from __future__ import annotations

from dataclasses import dataclass

import redis


@dataclass(frozen=True)
class RedisInfo:
    version: str
    keys: int
    used_memory_bytes: int
    uptime_seconds: int


def connect(url: str, timeout: float = 3.0) -> redis.Redis:
    return redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout, decode_responses=True)


def ping(url: str, timeout: float = 3.0) -> bool:
    with connect(url, timeout) as client:
        return bool(client.ping())


def info(url: str, timeout: float = 3.0) -> RedisInfo:
    with connect(url, timeout) as client:
        server = client.info("server")
        memory = client.info("memory")
        return RedisInfo(
            version=str(server.get("redis_version", "")),
            keys=int(client.dbsize()),
            used_memory_bytes=int(memory.get("used_memory", 0)),
            uptime_seconds=int(server.get("uptime_in_seconds", 0)),
        )
