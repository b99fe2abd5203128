"""Kafka helpers every service shares: configured clients, validated produce, poison handling."""

from __future__ import annotations

import base64
import json
import logging
import threading
from collections.abc import Callable, Mapping
from typing import Any

from confluent_kafka import Consumer, KafkaError, Message, Producer
from prometheus_client import Gauge
from pydantic import BaseModel

from services.common import topics
from services.common.schemas import DeadLetter, ErrorInfo, ErrorKind, PoisonMessage, encode
from services.common.settings import QactlSettings

log = logging.getLogger(__name__)

# From librdkafka's statistics (every STATS_INTERVAL_MS, delivered in poll): what the monitoring
# profile plots as throughput by topic and lag, for every client of every service.
STATS_INTERVAL_MS = 5000
TOPIC_MESSAGES = Gauge(
    "qactl_kafka_topic_messages",
    "Messages this client produced or consumed on a topic since it started (rate() is the throughput)",
    ["client", "topic", "direction"],
)
CONSUMER_LAG = Gauge(
    "qactl_kafka_consumer_lag", "Messages behind the partition's end, per assigned partition",
    ["group", "topic", "partition"],
)
_lag_labels: dict[str, set[tuple[str, str, str]]] = {}
_stats_lock = threading.Lock()


def record_statistics(stats_json: str, group: str | None = None) -> None:
    """Turn one librdkafka statistics report into the gauges above (a client's ``stats_cb``)."""
    stats = json.loads(stats_json)
    client = str(stats.get("name", "unknown"))
    direction = "consumed" if stats.get("type") == "consumer" else "produced"
    lags: set[tuple[str, str, str]] = set()
    for topic, info in (stats.get("topics") or {}).items():
        total = 0
        for number, partition in (info.get("partitions") or {}).items():
            if number == "-1":  # librdkafka's internal "unassigned" partition
                continue
            total += int(partition.get("rxmsgs" if direction == "consumed" else "txmsgs", 0))
            lag = int(partition.get("consumer_lag", -1))
            if group is not None and lag >= 0 and partition.get("fetch_state") == "active":
                CONSUMER_LAG.labels(group, topic, number).set(lag)
                lags.add((group, topic, number))
        TOPIC_MESSAGES.labels(client, topic, direction).set(total)
    if group is not None:
        with _stats_lock:
            for gone in _lag_labels.get(client, set()) - lags:  # partitions revoked since
                CONSUMER_LAG.remove(*gone)
            _lag_labels[client] = lags


def make_producer(settings: QactlSettings, client_id: str, **overrides: Any) -> Producer:
    """An idempotent producer: a retried send never duplicates a message within a session."""
    config = {
        "bootstrap.servers": settings.kafka.bootstrap,
        "client.id": client_id,
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 2,
        "compression.type": "lz4",
        "statistics.interval.ms": STATS_INTERVAL_MS,
        "stats_cb": record_statistics,
        **overrides,
    }
    return Producer(config)


def make_consumer(
    settings: QactlSettings, group_id: str, subscribe: list[str], client_id: str | None = None, **overrides: Any
) -> Consumer:
    """A consumer that commits only what the service says it has finished (no auto-commit)."""
    config = {
        "bootstrap.servers": settings.kafka.bootstrap,
        "group.id": group_id,
        "client.id": client_id or group_id,
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        "partition.assignment.strategy": "cooperative-sticky",
        "session.timeout.ms": 10000,
        "heartbeat.interval.ms": 1000,
        "max.poll.interval.ms": 300000,
        "statistics.interval.ms": STATS_INTERVAL_MS,
        "stats_cb": lambda stats: record_statistics(stats, group_id),
        **overrides,
    }
    consumer = Consumer(config)
    consumer.subscribe(subscribe)
    return consumer


def consume_batch(consumer: Consumer, max_messages: int, timeout: float) -> list[Message]:
    """Up to ``max_messages``, returning as soon as one is there (or after ``timeout``).

    ``Consumer.consume(n, timeout)`` waits for all ``n`` messages or the whole timeout, which
    adds up to ``timeout`` of latency to a lone message; this waits only for the first.
    """
    first = consumer.poll(timeout)
    if first is None:
        return []
    if max_messages <= 1:
        return [first]
    return [first, *consumer.consume(num_messages=max_messages - 1, timeout=0)]


def produce(
    producer: Producer,
    topic: str,
    message: BaseModel,
    key: str | None = None,
    headers: Mapping[str, str] | None = None,
    on_delivery: Callable[[KafkaError | None, Message], None] | None = None,
) -> None:
    """Validate and send; the key is the question id, so a question's messages stay in order.

    ``on_delivery`` is called with Kafka's acknowledgement or error (``offsets.Acknowledgements``).
    """
    producer.produce(
        topic,
        value=encode(message),
        key=(key or getattr(message, "question_id")).encode(),
        headers=[(k, v.encode()) for k, v in (headers or {}).items()],
        **({"on_delivery": on_delivery} if on_delivery is not None else {}),
    )
    producer.poll(0)


def dead_letter_for_poison(msg: Message, error: PoisonMessage) -> DeadLetter:
    """A dead letter that keeps the undecodable bytes (base64) and why they were refused."""
    raw = msg.value() or b""
    key = msg.key()
    question_id = key.decode("utf-8", "replace")[:64] if key else "unknown"
    return DeadLetter(
        question_id=question_id or "unknown",
        reason=f"poison message on {msg.topic()}: {error}",
        error=ErrorInfo(kind=ErrorKind.poison, message=str(error)),
        source_topic=msg.topic() or "",
        raw=base64.b64encode(raw).decode("ascii"),
    )


def send_poison_to_dead_letter(
    producer: Producer,
    msg: Message,
    error: PoisonMessage,
    on_delivery: Callable[[KafkaError | None, Message], None] | None = None,
) -> None:
    letter = dead_letter_for_poison(msg, error)
    log.warning("poison message on %s[%s]@%s: %s", msg.topic(), msg.partition(), msg.offset(), error)
    produce(producer, topics.DEAD_LETTER.name, letter, on_delivery=on_delivery)


def is_real_error(msg: Message) -> bool:
    """True for a consumer error worth logging (end-of-partition events are not errors)."""
    err = msg.error()
    return err is not None and err.code() != KafkaError._PARTITION_EOF
