"""One shared idempotent Kafka producer for the API, awaited per message from asyncio.

``send`` returns when the broker has acknowledged the message (acks=all) and raises
``KafkaUnavailable`` when it cannot be: the API answers 202 only for questions that are really
in Kafka. A background thread serves the producer's delivery callbacks and, every second, asks
the cluster for the topic through the same connection (no per-request or per-probe client): that
is what ``/health`` reports and what lets ``POST /query`` refuse at once, without waiting for a
timeout, while Kafka is known to be down.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from dataclasses import dataclass

from confluent_kafka import KafkaError, KafkaException, Producer
from pydantic import BaseModel

from services.common.kafka import make_producer
from services.common.settings import QactlSettings

log = logging.getLogger(__name__)

# The producer gives up on a message after this long; the API answers 503 and the client retries.
DELIVERY_TIMEOUT_MS = 5000
# With several brokers (or an external cluster) a partition whose leader died is led again only
# after the controller fenced the dead broker (3 s on ours, more on a loaded machine or a managed
# cluster): a message waits for that rather than being refused.
CLUSTER_DELIVERY_TIMEOUT_MS = 15000


def delivery_timeout_ms(settings: QactlSettings) -> int:
    if settings.api.kafka_delivery_timeout_ms is not None:
        return settings.api.kafka_delivery_timeout_ms
    single = settings.kafka.brokers == 1 and not settings.kafka.external
    return DELIVERY_TIMEOUT_MS if single else CLUSTER_DELIVERY_TIMEOUT_MS


class KafkaUnavailable(Exception):
    """The message was not acknowledged by Kafka; nothing was accepted."""


@dataclass
class KafkaHealth:
    ok: bool
    detail: str
    checked_at: float


class AsyncProducer:
    def __init__(self, settings: QactlSettings, topic: str, probe_interval: float = 1.0) -> None:
        self._topic = topic
        self._probe_interval = probe_interval
        self._settings = settings
        self._producer: Producer | None = None
        self._stop = threading.Event()
        self.health = KafkaHealth(False, "not checked yet", 0.0)
        # Failed probes in a row, and how many make Kafka "known down": on one broker the first
        # says it. On several, a metadata request times out on the broker that just died, or on a
        # starved machine, while the others serve (measured: under a TaskManager restart at load
        # 35 on 2 cores, 3 in a row refused 5 of 378 questions): it takes ten (10 s or more), or
        # librdkafka's "all brokers down" (``_on_error``), before POST /query refuses at once.
        self._failed_probes = 0
        self._down_after = 1 if settings.kafka.brokers == 1 and not settings.kafka.external else 10
        self._loop: asyncio.AbstractEventLoop | None = None
        self._threads: list[threading.Thread] = []

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._producer = make_producer(
            self._settings,
            "storage-api",
            **{
                # Short linger: a 202 waits for its acknowledgement, so batching costs latency.
                "linger.ms": 2,
                # Small produce requests pipelined on one connection: no Nagle delay between them.
                "socket.nagle.disable": True,
                "message.timeout.ms": delivery_timeout_ms(self._settings),
                "socket.connection.setup.timeout.ms": 2000,
                "reconnect.backoff.max.ms": 1000,
                "error_cb": self._on_error,
                "logger": logging.getLogger("librdkafka"),
            },
        )
        for name, target in (("kafka-poll", self._poll_forever), ("kafka-probe", self._probe_forever)):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    @property
    def known_down(self) -> bool:
        return not self.health.ok and self.health.checked_at > 0 and self._failed_probes >= self._down_after

    async def send(self, message: BaseModel, key: str) -> None:
        """Produce ``message`` and wait for the broker's acknowledgement."""
        loop = self._loop or asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()

        def delivered(err: KafkaError | None, _msg: object) -> None:
            loop.call_soon_threadsafe(_settle, future, err)

        if self._producer is None:
            raise KafkaUnavailable("Kafka producer not started")
        try:
            # Built by its pydantic constructor, so already validated: serialize without re-parsing.
            self._producer.produce(
                self._topic, value=message.model_dump_json().encode(), key=key.encode(), on_delivery=delivered
            )
        except (BufferError, KafkaException) as exc:
            raise KafkaUnavailable(f"Kafka producer refused the message: {exc}") from exc
        await future

    def flush(self, timeout: float = 10.0) -> int:
        return self._producer.flush(timeout) if self._producer is not None else 0

    def close(self) -> None:
        remaining = self.flush()
        if remaining:
            log.error("%d message(s) not acknowledged at shutdown", remaining)
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=3)

    def _poll_forever(self) -> None:
        assert self._producer is not None
        while not self._stop.is_set():
            self._producer.poll(0.05)

    def _probe_forever(self) -> None:
        while not self._stop.is_set():
            self.probe()
            self._stop.wait(self._probe_interval)

    def probe(self) -> KafkaHealth:
        """Ask the cluster for our topic's metadata; a missing topic counts as not ready."""
        assert self._producer is not None
        try:
            metadata = self._producer.list_topics(self._topic, timeout=2.0)
            topic = metadata.topics.get(self._topic)
            if topic is None or topic.error is not None:
                reason = topic.error.str() if topic is not None and topic.error else "missing"
                self.health = KafkaHealth(False, f"topic {self._topic}: {reason}", time.monotonic())
            elif not metadata.brokers:
                self.health = KafkaHealth(False, "no broker reachable", time.monotonic())
            else:
                self.health = KafkaHealth(
                    True, f"{len(metadata.brokers)} broker(s), {self._topic} has {len(topic.partitions)} partitions",
                    time.monotonic(),
                )
        except KafkaException as exc:
            self.health = KafkaHealth(False, f"unreachable: {exc.args[0].str() if exc.args else exc}", time.monotonic())
        self._failed_probes = 0 if self.health.ok else self._failed_probes + 1
        return self.health

    def _on_error(self, err: KafkaError) -> None:
        # A single dropped connection is routine (librdkafka reconnects); all brokers down is not.
        if err.code() == KafkaError._ALL_BROKERS_DOWN or err.fatal():
            self.health = KafkaHealth(False, f"unreachable: {err.str()}", time.monotonic())
            self._failed_probes = max(self._failed_probes, self._down_after)
        log.warning("kafka: %s", err.str())


def _settle(future: asyncio.Future[None], err: KafkaError | None) -> None:
    if future.done():
        return
    if err is None:
        future.set_result(None)
    else:
        future.set_exception(KafkaUnavailable(f"Kafka did not acknowledge the message: {err.str()}"))
