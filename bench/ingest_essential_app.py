"""The essential floor for ``bench_ingest.py --floor essential``: the 202 path's least work.

What any storage API must do per new question under the issue's design, and nothing more:
one Redis read (the cache), one PostgreSQL statement that durably claims the question, and one
Kafka produce acknowledged by the broker (acks=all) before the answer. Each is done the
cheapest way this machine offers (a few lines of RESP over hiredis's parser for Redis, asyncpg,
librdkafka) and batched as the API batches it (one ``MGET`` and one multi-row ``INSERT`` per
turn of the event loop, librdkafka's own batching for the produce), under the same uvicorn,
uvloop and httptools. Left out: input validation beyond JSON, the pydantic models, metrics, the
live status in Redis, coalescing bookkeeping and the requeue sweep.

``QACTL_BENCH_FLOOR_STEPS`` (``bench_ingest.py --steps``) takes a subset of the steps: cache,
claim, produce, ack (without ack, the answer goes as soon as the message is handed to the
producer). One step alone is what that dependency's round trip costs on this machine.

The claims go to a table of its own (``bench_floor_claims``, dropped on shutdown), so the
``questions`` ledger is untouched. The messages are real ``questions-pending`` messages, so the
pipeline downstream does the same work for them as for the API's.

The gap between this floor and the storage API is the API's own overhead; the gap between this
floor and the target is what the machine and the design cost.
"""

from __future__ import annotations

import asyncio
import collections
import gc
import json
import os
import threading
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import hiredis
from confluent_kafka import KafkaError

from services.common import topics
from services.common.cache import cache_key
from services.common.kafka import make_producer
from services.common.schemas import question_id_for
from services.common.settings import get_settings
from services.storage_api.batching import MicroBatcher
from services.storage_api.producer import DELIVERY_TIMEOUT_MS

CLAIM = """
INSERT INTO bench_floor_claims (question_id, question, submitted_at)
SELECT * FROM unnest($1::text[], $2::text[], $3::timestamptz[])
ON CONFLICT (question_id) DO NOTHING
RETURNING question_id
"""
TABLE = "CREATE TABLE IF NOT EXISTS bench_floor_claims (question_id text PRIMARY KEY, question text, submitted_at timestamptz)"
JSON = [(b"content-type", b"application/json")]
# cache: the Redis read; claim: the PostgreSQL claim; produce: the Kafka produce; ack: answering
# only once Kafka acknowledged it (without it, the answer goes as soon as the message is queued).
STEPS = ("cache", "claim", "produce", "ack")
STEPS_VARIABLE = "QACTL_BENCH_FLOOR_STEPS"


class Essential:
    def __init__(self, steps: frozenset[str]) -> None:
        self.steps = steps
        self.settings = get_settings()
        self.redis = LeanRedis()
        self.pool: asyncpg.Pool | None = None
        self.reads: MicroBatcher[str, bytes | None] = MicroBatcher(self.redis.mget, max_in_flight=2)
        self.claims: MicroBatcher[tuple[str, str, datetime], bool] = MicroBatcher(self._claim, max_in_flight=3)
        self.producer = make_producer(  # configured as the API's producer
            self.settings, "bench-floor",
            **{"linger.ms": 2, "socket.nagle.disable": True, "message.timeout.ms": DELIVERY_TIMEOUT_MS},
        )
        self._delivered: list[tuple[asyncio.Future[None], KafkaError | None]] = []
        self._stop = threading.Event()
        self._poller = threading.Thread(target=self._poll_forever, daemon=True)
        self._loop: asyncio.AbstractEventLoop | None = None

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        address = urlsplit(self.settings.redis.connection_url)
        await self._loop.create_connection(lambda: self.redis, address.hostname, address.port)
        # No reset on release, as in the API: the floor keeps no session state.
        self.pool = await asyncpg.create_pool(self.settings.postgres.url, min_size=2, max_size=8, reset=_no_reset)
        await self.pool.execute(TABLE)
        self._poller.start()

    async def stop(self) -> None:
        self.producer.flush(10)
        self._stop.set()
        self._poller.join(3)
        assert self.pool is not None
        await self.pool.execute("DROP TABLE IF EXISTS bench_floor_claims")
        await self.pool.close()
        self.redis.close()

    async def _claim(self, items: list[tuple[str, str, datetime]]) -> list[bool]:
        assert self.pool is not None
        ids, questions, times = zip(*items, strict=True)
        rows = await self.pool.fetch(CLAIM, list(ids), list(questions), list(times))
        claimed = {row[0] for row in rows}
        return [question_id in claimed for question_id in ids]

    def _poll_forever(self) -> None:
        # Delivery reports are gathered by poll() and handed to the event loop in one call.
        while not self._stop.is_set():
            self.producer.poll(0.05)
            if self._delivered and self._loop is not None:
                batch, self._delivered = self._delivered, []
                self._loop.call_soon_threadsafe(_settle, batch)

    async def query(self, body: bytes) -> tuple[int, bytes]:
        try:
            question = json.loads(body)["question"].strip()
        except (ValueError, KeyError, TypeError, AttributeError):
            return 400, b'{"error":"bad_input"}'
        question_id = question_id_for(question)
        if "cache" in self.steps and await self.reads.submit(cache_key(question_id)) is not None:
            return 200, b'{"cached":true}'
        now = datetime.now(UTC)
        if "claim" in self.steps and not await self.claims.submit((question_id, question, now)):
            return 202, b'{"coalesced":true}'
        if "produce" not in self.steps:
            return 202, json.dumps({"question_id": question_id, "status_url": f"/status/{question_id}"}).encode()
        at = now.isoformat()
        message = {
            "schema_version": 1, "question_id": question_id, "question": question, "submitted_at": at,
            "timestamps": {"queued": at}, "hops": [{"stage": "queued", "topic": topics.QUESTIONS_PENDING.name, "at": at}],
        }
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.producer.produce(
            topics.QUESTIONS_PENDING.name, json.dumps(message).encode(), question_id.encode(),
            on_delivery=lambda err, _msg: self._delivered.append((future, err)),
        )
        if "ack" in self.steps:
            await future
        return 202, json.dumps({"question_id": question_id, "status_url": f"/status/{question_id}"}).encode()


class LeanRedis(asyncio.Protocol):
    """The least a Redis client can do: pipelined MGETs on one connection, replies parsed by hiredis."""

    def __init__(self) -> None:
        self._parser = hiredis.Reader()
        self._waiting: collections.deque[asyncio.Future[list[bytes | None]]] = collections.deque()
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self._parser.feed(data)
        while (reply := self._parser.gets()) is not False:
            waiter = self._waiting.popleft()
            if isinstance(reply, hiredis.ReplyError):  # e.g. NOAUTH: this client sends no password
                waiter.set_exception(ConnectionError(f"redis: {reply}"))
            else:
                waiter.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        while self._waiting:
            self._waiting.popleft().set_exception(ConnectionError("redis closed the connection"))

    def mget(self, keys: list[str]) -> asyncio.Future[list[bytes | None]]:
        assert self._transport is not None
        command = [b"*%d\r\n$4\r\nMGET\r\n" % (len(keys) + 1)]
        for key in keys:
            raw = key.encode()
            command.append(b"$%d\r\n%s\r\n" % (len(raw), raw))
        self._transport.write(b"".join(command))
        future: asyncio.Future[list[bytes | None]] = asyncio.get_running_loop().create_future()
        self._waiting.append(future)
        return future

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()


async def _no_reset(_connection: asyncpg.Connection) -> None:
    pass


def _settle(batch: list[tuple[asyncio.Future[None], KafkaError | None]]) -> None:
    for future, err in batch:
        if not future.done():
            if err is None:
                future.set_result(None)
            else:
                future.set_exception(RuntimeError(err.str()))


essential: Essential | None = None


def steps_from_environment() -> frozenset[str]:
    """The steps to take, from ``QACTL_BENCH_FLOOR_STEPS`` (comma-separated; default: all)."""
    raw = os.environ.get(STEPS_VARIABLE, ",".join(STEPS))
    steps = frozenset(step.strip() for step in raw.split(",") if step.strip())
    unknown = steps - set(STEPS)
    if unknown or ("ack" in steps and "produce" not in steps):
        raise SystemExit(f"{STEPS_VARIABLE}={raw!r}: choose from {', '.join(STEPS)} ('ack' needs 'produce')")
    return steps


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    global essential
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                essential = Essential(steps_from_environment())
                await essential.start()
                gc.collect()
                gc.freeze()  # as the storage API does
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if essential is not None:
                    await essential.stop()
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http" or essential is None:
        return
    chunks = []
    more = True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        chunks.append(message.get("body", b""))
        more = message.get("more_body", False)
    status, body = await essential.query(b"".join(chunks))
    headers = [*JSON, (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
