"""What the storage API and persister tests share on the session stack (tests/stack.py): stopping
and restarting a component the way `qactl up` does, and small readers of what the systems hold.

Nothing here imitates a system: rows are read from PostgreSQL, offsets from Kafka, keys from Redis.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import redis

from qactl.client import kafka_admin
from qactl.runtime.supervisor import ProcessSpec, Supervisor
from services.common import db, topics
from services.common.settings import QactlSettings


def bring_back(settings: QactlSettings, name: str) -> None:
    """Start one stopped component again the way `qactl up` does (and wait until healthy)."""
    from qactl.runtime import postgres
    from qactl.runtime import redis as redis_runtime
    from qactl.runtime.stack import Stack

    found = {"postgres": postgres.components, "redis": redis_runtime.components}[name](settings)
    Stack(settings, components=found).up()


def stop_component(settings: QactlSettings, name: str) -> None:
    """Stop a stack process through the supervisor, with the signal its component declares."""
    from qactl.runtime import postgres
    from qactl.runtime import redis as redis_runtime

    spec = {"postgres": postgres.process, "redis": redis_runtime.process}[name](settings)
    assert Supervisor(settings).stop(spec.name, spec.stop_signal, spec.stop_timeout), f"{name} was not running"


def pending_end_offsets(settings: QactlSettings) -> dict[int, int]:
    return kafka_admin.end_offsets(settings.kafka.bootstrap, topics.QUESTIONS_PENDING.name)


def query(settings: QactlSettings, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    conn = db.connect(settings.postgres.url, timeout=5)
    try:
        with conn, conn.cursor() as cur:
            cur.execute(sql, args)
            return cur.fetchall() if cur.description else []
    finally:
        conn.close()


def scalar(settings: QactlSettings, sql: str, *args: Any) -> Any:
    rows = query(settings, sql, *args)
    return rows[0][0] if rows else None


def redis_client(settings: QactlSettings) -> redis.Redis:
    return redis.Redis.from_url(settings.redis.connection_url, socket_timeout=2)


def wait_until(condition: Callable[[], Any], timeout: float, what: str, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            value = condition()
            if value:
                return value
        except Exception as exc:  # noqa: BLE001 (a system coming back answers errors for a while)
            last_error = exc
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}" + (f" (last error: {last_error})" if last_error else ""))


@contextmanager
def process(settings: QactlSettings, spec: ProcessSpec, wait_healthy: bool = True) -> Iterator[Supervisor]:
    """Run one service process under the supervisor for the block; stop it with SIGTERM after."""
    supervisor = Supervisor(settings)
    supervisor.start(spec)
    try:
        if wait_healthy:
            supervisor.wait_healthy(spec)
        yield supervisor
    finally:
        supervisor.stop(spec.name, spec.stop_signal, 30)
