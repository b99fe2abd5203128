"""The persister: terminal outcomes from Kafka into PostgreSQL and the Redis cache, each once.

It consumes ``validated-responses``, ``low-quality-responses`` and ``questions-dead-letter``
(group ``persister``). Each message becomes an ``Outcome`` (``records.py``) written in one
transaction (``writer.py``) guarded by the question's terminal state, so a replay writes nothing
twice. Offsets are committed only after the database commit, or for a dead letter it forwards
after Kafka's acknowledgement (a refused one stops the persister, uncommitted); while PostgreSQL
is down the loop waits and retries with backoff, holding the message, so nothing is lost and
``/health`` says so. The same for Kafka: a forwarded dead letter waits for Kafka's acknowledgement
and a commit for the coordinator however long Kafka is away (``services.common.kafka``).

The sweeper (``sweeper.py``) sends a question still open after ``Policies.max_open_seconds``
to the dead letter as ``stuck``, so that it too ends once, here.

A message that does not decode goes to the dead letter with the reason, unless it *is* on the
dead-letter topic: then it is stored as a ``poison`` failure right here, never re-sent (no loop).
A message that decodes but cannot become an outcome is handled the same way. A write that fails
for anything but PostgreSQL being down stores the question's failure with the reason instead
(``Writer.write_unstorable``): one bad message never stops the others.
"""

from __future__ import annotations

import logging
import threading
import time
from contextlib import ExitStack
from typing import Any

from confluent_kafka import Consumer, KafkaException, Message, Producer, TopicPartition
from prometheus_client import Counter, Gauge, Histogram

from services.common import topics
from services.common.kafka import (
    Committer,
    KafkaLink,
    is_real_error,
    make_consumer,
    make_producer,
    send_poison_to_dead_letter,
)
from services.common.offsets import Acknowledgements
from services.common.schemas import DeadLetter, PoisonMessage, ScoredAnswer, decode
from services.common.settings import QactlSettings
from services.persister.cache import AnswerCache
from services.persister.records import Outcome, outcome_of_answer, outcome_of_dead_letter, outcome_of_poison_dead_letter
from services.persister.sweeper import Sweeper
from services.persister.writer import DatabaseDown, Unstorable, Writer, WriteResult

log = logging.getLogger(__name__)

GROUP = "persister"
SUBSCRIBED = [topics.VALIDATED.name, topics.LOW_QUALITY.name, topics.DEAD_LETTER.name]
BATCH = 200
MAX_BACKOFF_SECONDS = 5.0
PROBE_SECONDS = 5.0

WRITTEN = Counter("qactl_persister_outcomes", "Messages handled, by topic and result", ["topic", "result"])
POISON = Counter("qactl_persister_poison", "Undecodable messages, by topic", ["topic"])
WRITE_SECONDS = Histogram(
    "qactl_persister_write_seconds", "Time to write one outcome (one transaction)",
    buckets=(0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
DB_UP = Gauge("qactl_persister_postgres_up", "1 when the last PostgreSQL write or probe succeeded")
END_TO_END = Histogram(
    "qactl_persister_end_to_end_seconds", "Submission to terminal state, by state", ["state"],
    buckets=(0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600),
)

# What the monitoring profile's dashboard plots (compose/monitoring/): final scores and the
# time spent in each stage, as written (a duplicate's are not counted twice).
FINAL_SCORE = Histogram(
    "qactl_persister_final_score", "Score of a stored answer's last attempt, by state", ["state"],
    buckets=(-0.5, -0.25, 0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.75, 0.8, 0.9, 1.0),
)
STAGE_SECONDS = Histogram(
    "qactl_persister_stage_seconds", "Time a stored question spent in each stage", ["stage"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300),
)


class Persister:
    def __init__(self, settings: QactlSettings, stop: threading.Event, writer: Writer | None = None,
                 cache: AnswerCache | None = None, client_id: str = "persister") -> None:
        self.settings = settings
        self.stop = stop
        self.writer = writer or Writer(settings.postgres.url)
        self.cache = cache or AnswerCache(settings.redis.connection_url, settings.redis.cache_ttl_seconds)
        self.client_id = client_id
        self.kafka = KafkaLink()
        self.committer = Committer(self.kafka)
        self.running = False
        self.failure: BaseException | None = None
        self.last_commit_at: float | None = None
        self.waiting_since: float | None = None  # set while a message waits for PostgreSQL
        self.sweeper = Sweeper(settings.postgres.url, settings.policies)

    # -- health ----------------------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        postgres_ok = self.writer.ok
        kafka_waiting = self.kafka.waiting_for_kafka
        ok = self.running and self.failure is None and postgres_ok and not kafka_waiting
        if self.failure is not None:
            status = "failed"
        elif not postgres_ok:
            status = "waiting for postgres"
        elif kafka_waiting:
            status = "waiting for kafka"
        else:
            status = "ok" if self.cache.ok else "degraded (no redis cache)"
        report: dict[str, Any] = {
            "ok": ok,
            "status": status,
            "postgres": {"ok": postgres_ok, "detail": self.writer.detail},
            "kafka": self.kafka.report(),
            "redis": {"ok": self.cache.ok, "detail": self.cache.detail},
        }
        if self.waiting_since is not None:
            report["holding_message_for_seconds"] = round(time.monotonic() - self.waiting_since, 1)
        if self.failure is not None:
            report["failure"] = repr(self.failure)
        return report

    # -- loop ------------------------------------------------------------------------------------

    def run(self) -> None:
        try:
            with ExitStack() as stack:
                producer = make_producer(self.settings, self.client_id, **self.kafka.client_config("producer"))
                # At a stop while Kafka is away, an unacknowledged dead letter's source is consumed again.
                stack.callback(lambda: producer.flush(30 if self.kafka.ok else 1))
                consumer = make_consumer(
                    self.settings, GROUP, SUBSCRIBED, client_id=self.client_id,
                    **self.kafka.client_config("consumer"), **self.committer.consumer_config(),
                )
                consumer.subscribe(
                    SUBSCRIBED,
                    on_revoke=lambda _, partitions: self.committer.forget(partitions),
                    on_lost=lambda _, partitions: self.committer.forget(partitions),
                )
                stack.callback(consumer.close)
                stack.callback(self.committer.flush, consumer)
                stack.callback(self.writer.close)
                stack.callback(self.cache.close)
                self.writer.connect_quietly()
                self.running = True
                self._loop(consumer, producer)
        except BaseException as exc:
            self.failure = exc
            log.exception("persister stopped on failure")
            raise
        finally:
            self.running = False

    def _loop(self, consumer: Consumer, producer: Producer) -> None:
        next_probe = 0.0
        while not self.stop.is_set():
            if time.monotonic() >= next_probe:
                # Health stays honest while idle too: every dependency is asked, not just assumed.
                self._probe_kafka(consumer)
                self.writer.probe()
                self.cache.probe()
                next_probe = time.monotonic() + PROBE_SECONDS
            if self.sweeper.due():
                self.sweeper.sweep(producer)  # its dead letters come back through this loop
            messages = consumer.consume(BATCH, timeout=0.5)
            if not messages:
                if self.committer.pending:
                    self._commit(consumer, [])  # what Kafka did not take yet (it was away)
                continue
            acks = Acknowledgements()
            for msg in messages:
                if msg.error() is not None:
                    if is_real_error(msg):
                        log.warning("consumer error: %s", msg.error())
                    continue
                if self.handle(msg, producer, acks) is None:
                    break  # stopping while PostgreSQL is down: this one stays uncommitted
            # A forwarded dead letter is acknowledged by Kafka before its source is committed.
            offsets = acks.settle(producer, self.stop, on_wait=lambda holding: self.kafka.waiting("forward", holding))
            self._commit(consumer, offsets)
            acks.raise_if_undelivered()

    def handle(self, msg: Message, producer: Producer, acks: Acknowledgements) -> str | None:
        """Persist one message; the result label, or None if stopped before it was written.

        The message is finished in ``acks`` once written, or once Kafka acknowledged its dead letter.
        """
        topic = msg.topic() or ""
        source = f"{topic}[{msg.partition()}]@{msg.offset()}"
        try:
            outcome = self._outcome(msg, topic, source)
        except Exception as exc:  # noqa: BLE001 (undecodable, or no outcome can be made of it)
            if not isinstance(exc, PoisonMessage):
                log.exception("%s decodes but is no outcome", source)
                exc = PoisonMessage(f"no outcome can be made of it: {type(exc).__name__}: {exc}")
            POISON.labels(topic).inc()
            if topic != topics.DEAD_LETTER.name:
                send_poison_to_dead_letter(producer, msg, exc, on_delivery=acks.awaiting(msg))
                WRITTEN.labels(topic, "forwarded").inc()
                return "forwarded"
            log.warning("poison message on the dead-letter topic %s: %s; stored as a poison failure", source, exc)
            outcome = outcome_of_poison_dead_letter(msg.key(), msg.value(), str(exc), topic, msg.partition() or 0, msg.offset() or 0)
        result = self._write(outcome)
        if result is None:
            return None
        acks.finished(msg)
        WRITTEN.labels(topic, result.kind).inc()
        if result.kind == "written":
            END_TO_END.labels(outcome.state.value).observe(max(0.0, (outcome.terminal_at - outcome.submitted_at).total_seconds()))
            if outcome.answer is not None and outcome.answer.score is not None:
                FINAL_SCORE.labels(outcome.state.value).observe(outcome.answer.score)
            for timing in outcome.timings:
                STAGE_SECONDS.labels(timing.stage).observe(max(0.0, timing.duration_ms / 1000))
        elif result.kind == "conflict":
            log.warning(
                "%s: %s already ended %s; this %s outcome is ignored", source, outcome.question_id,
                result.stored_state, outcome.state.value,
            )
        if result.cache_entry is not None:
            self.cache.put(result.cache_entry)
        return result.kind

    @staticmethod
    def _outcome(msg: Message, topic: str, source: str) -> Outcome:
        if topic == topics.DEAD_LETTER.name:
            return outcome_of_dead_letter(decode(DeadLetter, msg.value()), source)
        return outcome_of_answer(decode(ScoredAnswer, msg.value()), topic, source)

    def _write(self, outcome: Outcome) -> WriteResult | None:
        """Write, waiting out PostgreSQL outages with backoff; None if asked to stop meanwhile."""
        backoff = 0.25
        while True:
            started = time.perf_counter()
            try:
                result = self._write_or_record_failure(outcome)
            except DatabaseDown as exc:
                DB_UP.set(0)
                if self.waiting_since is None:
                    self.waiting_since = time.monotonic()
                    log.warning("postgres unavailable, holding %s until it is back: %s", outcome.source, exc)
                if self.stop.wait(backoff):
                    return None
                backoff = min(backoff * 2, MAX_BACKOFF_SECONDS)
                continue
            DB_UP.set(1)
            WRITE_SECONDS.observe(time.perf_counter() - started)
            if self.waiting_since is not None:
                log.info("postgres is back after %.1fs", time.monotonic() - self.waiting_since)
                self.waiting_since = None
            return result

    def _write_or_record_failure(self, outcome: Outcome) -> WriteResult:
        """Write; if this outcome cannot be stored (not a transient failure), its failure instead."""
        try:
            return self.writer.write(outcome)
        except DatabaseDown:
            raise
        except Unstorable as exc:
            log.error("%s cannot be stored as %s: %s", outcome.source, outcome.state.value, exc)
            reason = str(exc)
        except Exception as exc:  # noqa: BLE001 (an unexpected error of one message must not stop the others)
            log.exception("%s cannot be stored as %s", outcome.source, outcome.state.value)
            reason = f"{type(exc).__name__}: {exc}"
        # Keep the question's failure on record instead, and never retry forever.
        return self.writer.write_unstorable(outcome, reason)

    def _commit(self, consumer: Consumer, offsets: list[TopicPartition]) -> None:
        """Commit without blocking the loop (``Committer``); a refused commit is not fatal: the
        messages are replayed after the rebalance and written nothing twice."""
        self.committer.commit(consumer, offsets)
        self.last_commit_at = self.committer.last_commit_at

    def _probe_kafka(self, consumer: Consumer) -> None:
        try:
            consumer.list_topics(topics.VALIDATED.name, timeout=2.0)
        except KafkaException as exc:
            self.kafka.lost("consumer", str(exc))
            return
        self.kafka.seen_up("consumer")
