"""retry-overload and retry-quota: non-blocking, durable retries through delay topics.

Two consumers per process, each in its own thread:

- the *error loop* reads the kind's error topic, decides (``policy.decide``) and produces either
  a ``DelayedRetry`` to the delay topic of that retry level, the error to the next kind's error
  topic (a Retry-After over the cap), or when retries are used up a ``DeadLetter`` (for a
  regeneration: its best answer to low-quality-responses, ``services/common/endings.py``); it commits
  only what Kafka acknowledged (a delivery report without error).
- the *delay loop* reads the delay topics. When the head of a partition is not due yet, it pauses
  that partition and seeks back to the head, so nothing waits in memory and the other partitions
  (other levels) keep flowing; when due, it resumes the partition, re-reads the head, produces a
  ``QuestionMessage`` back to ``questions-pending`` and commits after the acknowledgement.

A crash anywhere loses nothing: every offset is committed after its successor message is
durable, so at worst a retry is re-queued twice (the persister writes terminal states once).
A send that Kafka refuses for good leaves its source uncommitted and stops the process
(``offsets.NotDelivered``): the next start consumes it and sends it again. Kafka being away is
no refusal: both loops hold their batch until it is back (``services.common.kafka``), however
long that takes, and ``/health`` says "waiting for kafka" meanwhile.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack
from datetime import datetime, timezone

from confluent_kafka import Consumer, KafkaError, Message, Producer, TopicPartition
from prometheus_client import Counter, Gauge, Histogram

from services.common import topics
from services.common.kafka import (
    Committer,
    KafkaLink,
    consume_batch,
    dead_letter_for_poison,
    is_real_error,
    make_consumer,
    make_producer,
    produce,
)
from services.common.endings import failure_ending
from services.common.offsets import Acknowledgements
from services.common.schemas import (
    DelayedRetry,
    ErrorInfo,
    ErrorKind,
    Hop,
    LLMError,
    PoisonMessage,
    Stage,
    decode,
    utcnow,
)
from services.common.settings import QactlSettings
from services.common.status import StatusTracker
from services.retry.policy import KINDS, GiveUp, KindSpec, Reroute, RetryKind, Schedule, decide

log = logging.getLogger(__name__)

BATCH = 100

SCHEDULED = Counter("qactl_retry_scheduled_total", "Retries put on a delay topic", ["kind"])
REQUEUED = Counter("qactl_retry_requeued_total", "Retries sent back to questions-pending", ["kind"])
EXHAUSTED = Counter("qactl_retry_exhausted_total", "Questions dead-lettered with retries used up", ["kind"])
REROUTED = Counter(
    "qactl_retry_rerouted_total", "Failed calls sent on to another kind's path (Retry-After over the cap)", ["kind"]
)
POISON = Counter("qactl_retry_poison_total", "Undecodable messages sent to the dead letter", ["topic"])
DELAY = Histogram(
    "qactl_retry_delay_seconds",
    "Delay chosen for a retry",
    ["kind"],
    buckets=(0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 30, 60, 120, 300),
)
LATENESS = Histogram(
    "qactl_retry_lateness_seconds",
    "How long after its due time a retry was re-queued",
    ["kind"],
    buckets=(0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5),
)
PAUSED = Gauge("qactl_retry_paused_partitions", "Delay partitions waiting for their head to be due", ["kind"])


Delivered = Callable[[KafkaError | None, Message], None]  # a delivery callback (``Acknowledgements.awaiting``)


def _epoch(moment: datetime) -> float:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp()


class RetryService:
    """One retry process (``retry-overload`` or ``retry-quota``); ``run`` returns after ``stop``."""

    def __init__(
        self,
        settings: QactlSettings,
        kind: RetryKind,
        stop: threading.Event,
        status: StatusTracker | None = None,
        rng: random.Random | None = None,
        client_suffix: str = "",
    ) -> None:
        self.settings = settings
        self.policies = settings.policies
        self.spec: KindSpec = KINDS[kind]
        self.stop = stop
        self.status = status
        self.rng = rng or random.Random()
        self.client_id = self.spec.service + client_suffix
        self.failure: BaseException | None = None
        self.heartbeats: dict[str, float] = {}
        self.paused: dict[tuple[str, int], float] = {}  # delay partition -> epoch when its head is due
        self.paused_heads: dict[tuple[str, int], int] = {}  # delay partition -> offset of its head
        self.kafka = KafkaLink()

    # -- lifecycle -----------------------------------------------------------------------------

    def run(self) -> None:
        with ExitStack() as stack:
            producer = make_producer(self.settings, self.client_id, **self.kafka.client_config("producer"))
            # At a stop while Kafka is away, what is unacknowledged is simply consumed again later.
            stack.callback(lambda: producer.flush(30 if self.kafka.ok else 1))
            threads = [
                threading.Thread(target=self._guard, args=(self._error_loop, producer), name="error-loop"),
                threading.Thread(target=self._guard, args=(self._delay_loop, producer), name="delay-loop"),
            ]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        if self.failure is not None:
            raise self.failure

    def _guard(self, loop: Callable[[Producer], None], producer: Producer) -> None:
        """A loop that fails stops the whole process: nothing keeps half-running."""
        try:
            loop(producer)
        except BaseException as exc:  # noqa: BLE001 (re-raised by run)
            log.exception("%s failed", threading.current_thread().name)
            self.failure = exc
            self.stop.set()

    def health(self) -> dict[str, object]:
        now = time.monotonic()
        ages = {name: round(now - beat, 1) for name, beat in self.heartbeats.items()}
        waiting = self.kafka.waiting_for_kafka
        ok = len(ages) == 2 and all(age < 15 for age in ages.values()) and self.failure is None and not waiting
        if self.failure is not None:
            status = "failed"
        elif waiting:
            status = "waiting for kafka"
        else:
            status = "ok" if ok else "starting"
        return {
            "ok": ok,
            "status": status,
            "service": self.spec.service,
            "kafka": self.kafka.report(),
            "loops_seconds_since_poll": ages,
            "paused_delay_partitions": sorted(f"{t}[{p}]" for t, p in self.paused),
            "delay_scale": self.policies.delay_scale,
        }

    def _commit_after_ack(
        self, consumer: Consumer, producer: Producer, acks: Acknowledgements, committer: Committer, loop: str
    ) -> None:
        """Commit, per partition, up to the first message whose successor Kafka did not acknowledge;
        then stop if a send was refused. While Kafka is away this waits (the loop stays alive)."""

        def waiting(holding: bool) -> None:
            self.heartbeats[loop] = time.monotonic()  # alive, holding its batch for Kafka
            self.kafka.waiting(loop, holding)

        offsets = acks.settle(producer, self.stop, on_wait=waiting)
        committer.commit(consumer, offsets)
        acks.raise_if_undelivered()

    def _record(self, question_id: str, hop: Hop) -> None:
        if self.status is not None:
            self.status.record(question_id, hop)

    # -- error topic -> delay topic or dead letter ---------------------------------------------

    def _error_loop(self, producer: Producer) -> None:
        committer = Committer(self.kafka, "error")
        consumer = make_consumer(
            self.settings, self.spec.service, [self.spec.error_topic], client_id=self.client_id,
            **self.kafka.client_config("error"), **committer.consumer_config(),
        )
        consumer.subscribe(
            [self.spec.error_topic],
            on_revoke=lambda _, partitions: committer.forget(partitions),
            on_lost=lambda _, partitions: committer.forget(partitions),
        )
        try:
            while not self.stop.is_set():
                self.heartbeats["error"] = time.monotonic()
                batch = consume_batch(consumer, BATCH, 0.5)
                acks = Acknowledgements()
                for msg in batch:
                    if msg.error():
                        if is_real_error(msg):
                            log.warning("consumer error on %s: %s", self.spec.error_topic, msg.error())
                        continue
                    self._handle_error(producer, msg, acks.awaiting(msg))
                self._commit_after_ack(consumer, producer, acks, committer, "error")
            committer.flush(consumer)
        finally:
            consumer.close()

    def _handle_error(self, producer: Producer, msg: Message, delivered: Delivered) -> None:
        """Produce the one message the decision calls for; ``delivered`` is its delivery callback."""
        try:
            failed = decode(LLMError, msg.value())
        except PoisonMessage as exc:
            POISON.labels(msg.topic()).inc()
            log.warning("poison on %s[%s]@%s: %s", msg.topic(), msg.partition(), msg.offset(), exc)
            produce(producer, topics.DEAD_LETTER.name, dead_letter_for_poison(msg, exc), on_delivery=delivered)
            return
        retry_count = getattr(failed.retries, self.spec.kind.value)
        decision = decide(self.spec, retry_count, failed.error, self.policies, self.rng)
        now = utcnow()
        if isinstance(decision, GiveUp):
            self._give_up(producer, failed, decision, now, delivered)
            return
        if isinstance(decision, Reroute):
            self._reroute(producer, failed, decision, now, delivered)
            return
        assert isinstance(decision, Schedule)
        limit = self.spec.max_retries(self.policies)
        hop = Hop(
            stage=self.spec.stage,
            topic=decision.topic,
            at=now,
            attempt=failed.attempt,
            error=failed.error,
            delay_seconds=round(decision.delay_seconds, 3),
            note=f"{self.spec.kind.value} retry {retry_count + 1}/{limit} due at {decision.due_at.isoformat()}",
        )
        waiting = failed.advance(
            hop,
            DelayedRetry,
            # The llm-consumer stamped when the question entered this stage; keep its time.
            keep_entry_time=True,
            last_error=failed.error,
            due_at=decision.due_at,
            delay_seconds=decision.delay_seconds,
        )
        produce(producer, decision.topic, waiting, on_delivery=delivered)
        SCHEDULED.labels(self.spec.kind.value).inc()
        DELAY.labels(self.spec.kind.value).observe(decision.delay_seconds)
        self._record(failed.question_id, hop)

    def _reroute(
        self, producer: Producer, failed: LLMError, decision: Reroute, now: datetime, delivered: Delivered
    ) -> None:
        target = KINDS[decision.kind]
        hop = Hop(
            stage=target.stage,
            topic=target.error_topic,
            at=now,
            attempt=failed.attempt,
            error=failed.error,
            note=decision.reason,
        )
        log.info("%s -> %s: %s", failed.question_id, target.error_topic, decision.reason)
        produce(producer, target.error_topic, failed.advance(hop, LLMError), on_delivery=delivered)
        REROUTED.labels(self.spec.kind.value).inc()
        self._record(failed.question_id, hop)

    def _give_up(
        self, producer: Producer, failed: LLMError, decision: GiveUp, now: datetime, delivered: Delivered
    ) -> None:
        last = failed.error
        error = ErrorInfo(
            kind=ErrorKind.exhausted,
            status_code=last.status_code,
            message=f"{decision.reason}; last error: {last.kind.value} {last.status_code or ''} {last.message}".strip(),
        )
        # A regeneration keeps the best answer it already had (low_quality), else the dead letter.
        ending = failure_ending(
            failed, decision.reason, error, self.spec.error_topic, self.policies.quality_threshold, now, last_error=last
        )
        produce(producer, ending.topic, ending.message, on_delivery=delivered)
        EXHAUSTED.labels(self.spec.kind.value).inc()
        self._record(failed.question_id, ending.hop)

    # -- delay topics -> questions-pending ----------------------------------------------------

    def _delay_loop(self, producer: Producer) -> None:
        committer = Committer(self.kafka, "delay")
        consumer = make_consumer(
            self.settings,
            self.spec.delay_group,
            self.spec.delay_topics(self.policies),
            client_id=f"{self.client_id}-delay",
            **self.kafka.client_config("delay"),
            **committer.consumer_config(),
        )

        def forget(consumer: Consumer, partitions: list[TopicPartition]) -> None:
            # A partition that moves away takes its pause with it; its new owner re-reads the head.
            # librdkafka keeps the pause itself until it is resumed, across the rebalance: a
            # partition assigned back to this consumer (after a Kafka outage longer than the
            # session, all of them) would come back paused with nothing here to resume it.
            consumer.resume([TopicPartition(tp.topic, tp.partition) for tp in partitions])
            committer.forget(partitions)
            for tp in partitions:
                self.paused.pop((tp.topic, tp.partition), None)
                self.paused_heads.pop((tp.topic, tp.partition), None)

        consumer.subscribe(self.spec.delay_topics(self.policies), on_revoke=forget, on_lost=forget)
        try:
            while not self.stop.is_set():
                self.heartbeats["delay"] = time.monotonic()
                self._resume_due(consumer)
                batch = consume_batch(consumer, BATCH, self._poll_timeout())
                acks = Acknowledgements()
                for msg in batch:
                    if msg.error():
                        if is_real_error(msg):
                            log.warning("consumer error on delay topics: %s", msg.error())
                        continue
                    partition = (msg.topic(), msg.partition())
                    if partition in self.paused:
                        continue  # fetched before the pause; the seek brings it back when due
                    self._handle_delayed(consumer, producer, msg, acks)
                PAUSED.labels(self.spec.kind.value).set(len(self.paused))
                self._commit_after_ack(consumer, producer, acks, committer, "delay")
            committer.flush(consumer)
        finally:
            consumer.close()

    def _poll_timeout(self) -> float:
        if not self.paused:
            return 0.5
        wait = min(self.paused.values()) - time.time()
        return min(0.5, max(0.005, wait))

    def _resume_due(self, consumer: Consumer) -> None:
        now = time.time()
        due = [partition for partition, at in self.paused.items() if at <= now]
        if not due:
            return
        consumer.resume([TopicPartition(topic, part) for topic, part in due])
        for partition in due:
            del self.paused[partition]
            head = self.paused_heads.pop(partition, None)
            if head is not None:
                # Seek again once active: a seek on a paused partition is not reliably kept, and
                # a lost one would skip the head and every message fetched behind it.
                consumer.seek(TopicPartition(partition[0], partition[1], head))

    def _handle_delayed(self, consumer: Consumer, producer: Producer, msg: Message, acks: Acknowledgements) -> None:
        """Re-queue a due retry, or pause its partition until the head is due (then it awaits nothing)."""
        try:
            waiting = decode(DelayedRetry, msg.value())
        except PoisonMessage as exc:
            POISON.labels(msg.topic()).inc()
            log.warning("poison on %s[%s]@%s: %s", msg.topic(), msg.partition(), msg.offset(), exc)
            produce(producer, topics.DEAD_LETTER.name, dead_letter_for_poison(msg, exc), on_delivery=acks.awaiting(msg))
            return
        due = _epoch(waiting.due_at)
        if due > time.time():
            tp = TopicPartition(msg.topic(), msg.partition(), msg.offset())
            # Pause first, then seek: the position after a pause is "last consumed + 1", and
            # the head must be read again when the partition is resumed.
            consumer.pause([tp])
            consumer.seek(tp)
            self.paused[(msg.topic(), msg.partition())] = due
            self.paused_heads[(msg.topic(), msg.partition())] = msg.offset()
            return
        self._requeue(producer, waiting, acks.awaiting(msg))

    def _requeue(self, producer: Producer, waiting: DelayedRetry, delivered: Delivered) -> None:
        now = utcnow()
        kind = self.spec.kind.value
        waited = (now - waiting.due_at).total_seconds() + waiting.delay_seconds
        retries = waiting.retries.model_copy(update={kind: getattr(waiting.retries, kind) + 1})
        limit = self.spec.max_retries(self.policies)
        hop = Hop(
            stage=Stage.queued,
            topic=topics.QUESTIONS_PENDING.name,
            at=now,
            attempt=waiting.attempt,
            error=waiting.last_error,
            delay_seconds=round(waited, 3),
            note=f"{kind} retry {retries.model_dump()[kind]}/{limit} after {waited:.2f} s",
        )
        produce(producer, topics.QUESTIONS_PENDING.name, waiting.advance(hop, retries=retries), on_delivery=delivered)
        REQUEUED.labels(kind).inc()
        LATENESS.labels(kind).observe(max(0.0, (now - waiting.due_at).total_seconds()))
        self._record(waiting.question_id, hop)


