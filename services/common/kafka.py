"""Kafka helpers every service shares: configured clients, validated produce, poison handling,
and waiting out a Kafka outage (``KafkaLink`` for health, ``Committer`` for offsets).

A service never ends because Kafka is away: its producer keeps every message until Kafka takes
it (no delivery timeout), a position is committed again until Kafka takes it, and ``/health``
says "waiting for kafka" meanwhile (``KafkaLink``). Only a stop request ends the wait; what was
not acknowledged then stays uncommitted and is consumed again at the next start.
"""

from __future__ import annotations

import base64
import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition
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


def _statistics_callback(
    also: Callable[[str], None] | None, group: str | None = None
) -> Callable[[str], None]:
    """A client's ``stats_cb``: the gauges above, then the caller's own (``KafkaLink``'s)."""

    def on_stats(raw: str) -> None:
        record_statistics(raw, group)
        if also is not None:
            also(raw)

    return on_stats


def make_producer(settings: QactlSettings, client_id: str, **overrides: Any) -> Producer:
    """An idempotent producer: a retried send never duplicates a message within a session.

    No delivery timeout: a message waits for Kafka however long it is away (librdkafka's default
    of 300 s turned an outage into failed sends). The storage API, which must answer its client
    at once, sets its own short one.
    """
    config = {
        "bootstrap.servers": settings.kafka.bootstrap,
        "client.id": client_id,
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 2,
        "compression.type": "lz4",
        "message.timeout.ms": 0,
        "statistics.interval.ms": STATS_INTERVAL_MS,
        **overrides,
        "stats_cb": _statistics_callback(overrides.get("stats_cb")),
    }
    return Producer(config)


# A consumer that does not poll for this long leaves its group (`qactl chaos` outlasts it on purpose).
MAX_POLL_INTERVAL_MS = 300_000


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
        "max.poll.interval.ms": MAX_POLL_INTERVAL_MS,
        "statistics.interval.ms": STATS_INTERVAL_MS,
        **overrides,
        "stats_cb": _statistics_callback(overrides.get("stats_cb"), group_id),
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


# Commit errors that mean "Kafka (or its group coordinator) is not there right now": wait and retry.
_WAIT_AND_RETRY = {
    KafkaError._TRANSPORT,
    KafkaError._ALL_BROKERS_DOWN,
    KafkaError._WAIT_COORD,
    KafkaError._TIMED_OUT,
    KafkaError.REQUEST_TIMED_OUT,
    KafkaError.COORDINATOR_NOT_AVAILABLE,
    KafkaError.NOT_COORDINATOR,
    KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
    KafkaError.NETWORK_EXCEPTION,
}


class KafkaLink:
    """What a service knows of its connection to Kafka, for ``/health``.

    Fed by its clients' own reports, each client on its own (``client_config(name)``):
    ``error_cb`` (all brokers down, a fatal error) says a client lost Kafka at once, ``stats_cb``
    (every ``STATS_INTERVAL_MS``) whether it has a broker up, so an idle service also notices
    Kafka coming back. Kafka is up while any client recently had a broker up: an idle producer
    is not polled, so its last report goes stale, and the broker may close its idle connection,
    which is no outage either. ``waiting`` marks a loop that holds work for Kafka's acknowledgement.
    """

    STATS_INTERVAL_MS = 1000
    FRESH_SECONDS = 5.0  # a client's report older than this no longer counts

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._clients: dict[str, tuple[bool, str, float]] = {}  # client -> (has a broker up, detail, when)
        self.down_since: float | None = None
        self._waiting: dict[str, float] = {}  # loop -> since when it holds work for Kafka

    def client_config(self, client: str) -> dict[str, Any]:
        """The callbacks to give the service's client ``client`` (``make_consumer``/``make_producer`` overrides)."""
        return {
            "error_cb": lambda err: self.on_error(client, err),
            "stats_cb": lambda raw: self.on_stats(client, raw),
            "statistics.interval.ms": self.STATS_INTERVAL_MS,
        }

    def _current(self) -> dict[str, tuple[bool, str, float]]:
        """The fresh reports (all of them if none is fresh: a stalled service keeps its last word)."""
        reports = dict(self._clients)
        fresh = {c: r for c, r in reports.items() if time.monotonic() - r[2] < self.FRESH_SECONDS}
        return fresh or reports

    @property
    def ok(self) -> bool:
        return any(up for up, _, _ in self._current().values())

    @property
    def detail(self) -> str:
        if not self._clients:
            return "not connected yet"
        if self.ok:
            return "ok"
        return "; ".join(f"{client}: {detail}" for client, (_, detail, _) in sorted(self._current().items()))

    def on_error(self, client: str, err: KafkaError) -> None:
        if err.fatal():
            log.error("kafka (%s): fatal: %s", client, err.str())
        if err.code() == KafkaError._ALL_BROKERS_DOWN or err.fatal():
            self._set(client, False, f"unreachable: {err.str()}")
        else:  # every refused reconnect: librdkafka retries on its own, so not worth a warning each
            log.debug("kafka (%s): %s", client, err.str())

    def on_stats(self, client: str, raw: str) -> None:
        try:
            brokers = json.loads(raw).get("brokers", {})
        except ValueError:
            return
        known = [b for b in brokers.values() if b.get("nodeid", -1) >= 0] or list(brokers.values())
        if any(b.get("state") == "UP" for b in known):
            self._set(client, True, "ok")
        elif known:
            self._set(client, False, "no broker up (" + ", ".join(f"{b.get('name')} {b.get('state')}" for b in known[:3]) + ")")

    def lost(self, client: str, detail: str) -> None:
        self._set(client, False, detail)

    def seen_up(self, client: str) -> None:
        self._set(client, True, "ok")

    def _set(self, client: str, up: bool, detail: str) -> None:
        with self._lock:
            was_ok = self.ok
            self._clients[client] = (up, detail, time.monotonic())
            now_ok = self.ok
            if was_ok and not now_ok:
                self.down_since = time.monotonic()
                log.warning("kafka unreachable, waiting for it: %s", detail)
            elif now_ok and self.down_since is not None:
                log.info("kafka is back after %.1fs", time.monotonic() - self.down_since)
                self.down_since = None

    def waiting(self, loop: str, holding: bool) -> None:
        """``loop`` holds (or no longer holds) work that waits for Kafka's acknowledgement."""
        with self._lock:
            if holding:
                self._waiting.setdefault(loop, time.monotonic())
            else:
                self._waiting.pop(loop, None)

    @property
    def waiting_for_kafka(self) -> bool:
        """Kafka is not up for any client, or some loop has held work for it for over a second."""
        now = time.monotonic()
        return not self.ok or any(now - since > 1.0 for since in list(self._waiting.values()))

    def report(self) -> dict[str, Any]:
        now = time.monotonic()
        report: dict[str, Any] = {"ok": self.ok, "detail": self.detail}
        if self.down_since is not None:
            report["down_for_seconds"] = round(now - self.down_since, 1)
        held = {loop: round(now - since, 1) for loop, since in list(self._waiting.items()) if now - since > 1.0}
        if held:
            report["holding_for_seconds"] = held
        return report


# A commit refused because the group was re-forming: the partition may well still be this
# consumer's (cooperative rebalancing keeps it), and then nobody else commits it; so the
# position is sent again, unless the partition is revoked or lost first (``forget``).
_GROUP_MOVED = {KafkaError.ILLEGAL_GENERATION, KafkaError.UNKNOWN_MEMBER_ID, KafkaError.REBALANCE_IN_PROGRESS}


def _commit_again(error: KafkaError) -> bool:
    return error.code() in _WAIT_AND_RETRY or error.code() in _GROUP_MOVED or error.retriable()


class Committer:
    """Commits a consumer's positions without ever blocking its poll loop, and keeps what Kafka
    did not take for the next try.

    A synchronous commit while Kafka is away, or while the group re-forms after it came back,
    blocks the poll loop that the re-forming needs (librdkafka serves the assignment in
    ``poll``): the loop stalled a minute at a time, for ever. Here a commit is asynchronous, its
    result comes back through ``on_commit`` (served by ``poll``), and a position Kafka could not
    take for a passing reason, or refused while the group re-formed (the partition is often kept),
    is sent again with the next ``commit`` until the partition is revoked or lost (``forget``).
    One Kafka refused for any other reason is dropped: what it covered is consumed again by the
    partition's owner and written once downstream.
    """

    def __init__(self, link: KafkaLink | None = None, client: str = "consumer") -> None:
        self._lock = threading.Lock()
        self._wanted: dict[tuple[str, int], int] = {}
        self._link = link
        self._client = client
        self.last_commit_at: float | None = None

    def consumer_config(self) -> dict[str, Any]:
        """``make_consumer`` overrides: the commit results come back here."""
        return {"on_commit": self._on_commit}

    @property
    def pending(self) -> dict[tuple[str, int], int]:
        with self._lock:
            return dict(self._wanted)

    def commit(self, consumer: Consumer, offsets: list[TopicPartition] = ()) -> None:
        """Commit ``offsets`` and any earlier position still not taken; returns at once."""
        with self._lock:
            for tp in offsets:
                key = (tp.topic, tp.partition)
                self._wanted[key] = max(tp.offset, self._wanted.get(key, -1))
            wanted = [TopicPartition(t, p, o) for (t, p), o in self._wanted.items()]
        if not wanted:
            return
        try:
            consumer.commit(offsets=wanted, asynchronous=True)
        except KafkaException as exc:
            log.debug("offset commit not sent now (sent again with the next one): %s", exc)

    def forget(self, partitions: list[TopicPartition]) -> None:
        """Revoked or lost partitions: their new owner commits them."""
        with self._lock:
            for tp in partitions:
                self._wanted.pop((tp.topic, tp.partition), None)

    def flush(self, consumer: Consumer, timeout: float = 5.0) -> bool:
        """At a stop: one synchronous commit of what is wanted, if Kafka is there to take it."""
        wanted = self.pending
        if not wanted:
            return True
        if self._link is not None and not self._link.ok:
            log.info("stopping while Kafka is away: %d position(s) not committed, consumed again at the next start", len(wanted))
            return False
        self.commit(consumer)
        deadline = time.monotonic() + timeout
        while self.pending and time.monotonic() < deadline:
            consumer.poll(0.1)  # serves on_commit
        return not self.pending

    def _on_commit(self, err: KafkaError | None, partitions: list[TopicPartition]) -> None:
        passing = err is not None and _commit_again(err)
        with self._lock:
            for tp in partitions:
                key = (tp.topic, tp.partition)
                error = tp.error or err
                if error is None:
                    if self._wanted.get(key, -1) <= tp.offset:
                        self._wanted.pop(key, None)
                    self.last_commit_at = time.time()
                elif not (passing or _commit_again(error)):
                    log.warning("offset commit of %s[%s]@%s refused (consumed again): %s", *key, tp.offset, error.str())
                    if self._wanted.get(key, -1) <= tp.offset:
                        self._wanted.pop(key, None)
        if err is None:
            if self._link is not None:
                self._link.seen_up(self._client)
        elif passing:
            log.debug("offset commit waits for Kafka: %s", err.str())
        elif err.code() != KafkaError._NO_OFFSET:
            log.warning("offset commit refused (what it covered is consumed again): %s", err.str())
