"""One llm-consumer replica: questions-pending -> LLM -> the outcome's topic, at-least-once.

The poll loop (one thread, the only one touching the Kafka consumer) keeps a small buffer of
fetched questions and hands them to a ``CallPool`` with at most ``consumer_concurrency`` calls
in flight (for the local model server: its slots shared out over the replicas). Each finished
call becomes one outcome message:

- an answer -> ``llm-responses-success`` (``LLMAnswer``)
- overload (429/503/timeouts/5xx) -> ``llm-responses-error-overload`` (``LLMError``)
- quota (402, insufficient_quota) -> ``llm-responses-error-quota`` (``LLMError``)
- another 4xx -> ``questions-dead-letter`` (``DeadLetter``), or for a regeneration
  ``low-quality-responses`` with the best answer it already had (``services/common/endings.py``)

The offset of a question becomes committable only when Kafka acknowledged its outcome, and per
partition the commit never passes an unfinished message (``OffsetTracker``), so a crash at any
moment redelivers what was not finished. While Kafka is away the outcomes wait in the producer
(no delivery timeout) and ``/health`` says "waiting for kafka"; the replica stays up.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from confluent_kafka import Consumer, KafkaError, Message, Producer, TopicPartition
from prometheus_client import Counter, Gauge, Histogram
from pydantic import BaseModel

from services.common import topics
from services.common.backend_choice import consumer_concurrency, resolve_backend_kind
from services.common.endings import failure_ending
from services.common.kafka import (
    Committer,
    KafkaLink,
    consume_batch,
    dead_letter_for_poison,
    is_real_error,
    make_consumer,
    make_producer,
)
from services.common.offsets import OffsetTracker, Partition
from services.common.schemas import (
    ErrorInfo,
    ErrorKind,
    Hop,
    LLMAnswer,
    LLMError,
    PoisonMessage,
    QuestionMessage,
    Stage,
    decode,
    encode,
    utcnow,
)
from services.common.settings import Policies, QactlSettings
from services.common.status import StatusTracker
from services.common.waiting import Deadline
from services.llm_consumer.calls import CallPool, CallResult
from services.llm_consumer.status_writer import StatusWriter

log = logging.getLogger(__name__)

GROUP = "llm-consumer"
COMMIT_INTERVAL_SECONDS = 0.5

CALLS = Counter("qactl_llm_calls_total", "LLM calls by outcome", ["outcome", "backend"])
LATENCY = Histogram(
    "qactl_llm_call_seconds",
    "LLM call latency",
    ["outcome"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 0.8, 1, 2, 3, 5, 8, 13, 30, 60),
)
IN_FLIGHT = Gauge("qactl_llm_in_flight", "LLM calls in flight in this replica")
BUFFERED = Gauge("qactl_llm_buffered", "Questions fetched and waiting for a free call slot")
POISON = Counter("qactl_llm_consumer_poison_total", "Undecodable questions sent to the dead letter")


@dataclass
class Job:
    """A question taken from Kafka, from fetch to acknowledged outcome."""

    partition: Partition
    offset: int
    question: QuestionMessage
    taken_at: datetime
    hops: list[Hop] = field(default_factory=list)


@dataclass(frozen=True)
class Generation:
    text: str
    model: str


def clean_answer(text: str, limit: int) -> tuple[str, str | None]:
    """The answer without NUL bytes (PostgreSQL refuses them) and cut to ``limit`` characters
    (a message over Kafka's limit would never leave the consumer); the note says what changed."""
    notes = []
    if "\x00" in text:
        notes.append(f"{text.count(chr(0))} NUL byte(s) removed")
        text = text.replace("\x00", "")
    if len(text) > limit:
        notes.append(f"cut from {len(text)} to {limit} characters")
        text = text[:limit]
    return text, ("; ".join(notes) or None)


def error_info_of(exc: BaseException) -> ErrorInfo:
    """The backend's classification carried by its typed error; anything else is internal."""
    for attribute in ("info", "error_info", "error"):
        info = getattr(exc, attribute, None)
        if isinstance(info, ErrorInfo):
            return info
    # A failure the backend did not classify (a bug, an unexpected library error): retried
    # through the bounded overload path rather than lost, and labelled so it shows up.
    return ErrorInfo(kind=ErrorKind.internal, message=f"{type(exc).__name__}: {exc}"[:500])


def generation_of(value: Any, default_model: str) -> Generation:
    if isinstance(value, str):
        return Generation(value, default_model)
    text = getattr(value, "answer", None)
    if text is None:
        text = getattr(value, "text", None)
    if not isinstance(text, str):
        raise TypeError(f"backend returned {type(value).__name__} without text")
    return Generation(text, getattr(value, "model", None) or default_model)


def outcome_for(
    job: Job,
    result: CallResult,
    backend: str,
    default_model: str,
    max_answer_chars: int = 8000,
    threshold: float = Policies.model_fields["quality_threshold"].default,
) -> tuple[str, BaseModel, Hop, str]:
    """(topic, payload, hop, outcome label) for a finished call; ``threshold`` is recorded with a
    best answer kept when a regeneration fails for good."""
    now = utcnow()
    question = job.question
    for earlier in job.hops:  # generating, stamped when the call started
        question = question.advance(earlier)
    latency_ms = round(result.seconds * 1000, 1)
    if result.error is None:
        try:
            generation = generation_of(result.value, default_model)
        except TypeError as exc:
            result = CallResult(result.job, error=exc, seconds=result.seconds)
        else:
            text, cleaned = clean_answer(generation.text, max_answer_chars)
            hop = Hop(
                stage=Stage.scoring,
                topic=topics.LLM_SUCCESS.name,
                at=now,
                attempt=question.attempt,
                note=f"answered by {backend} ({generation.model}) in {latency_ms:.0f} ms"
                + (f"; {cleaned}" if cleaned else ""),
            )
            answer = question.advance(
                hop,
                LLMAnswer,
                answer=text,
                model=generation.model,
                backend=backend,
                llm_latency_ms=latency_ms,
            )
            return topics.LLM_SUCCESS.name, answer, hop, "success"
    info = error_info_of(result.error)  # type: ignore[arg-type]
    if info.kind in (ErrorKind.client, ErrorKind.poison, ErrorKind.exhausted):
        reason = f"LLM refused the request ({info.status_code or 'no status'}): {info.message}"[:500]
        ending = failure_ending(question, reason, info, topics.QUESTIONS_PENDING.name, threshold, now)
        return ending.topic, ending.message, ending.hop, "client"
    if info.kind is ErrorKind.quota:
        topic, stage, label = topics.LLM_QUOTA.name, Stage.retrying_quota, "quota"
    else:
        topic, stage, label = topics.LLM_OVERLOAD.name, Stage.retrying_overload, info.kind.value
    hop = Hop(stage=stage, topic=topic, at=now, attempt=question.attempt, error=info)
    failed = question.advance(hop, LLMError, last_error=info, error=info, model=default_model, backend=backend)
    return topic, failed, hop, label


class LLMConsumer:
    """One replica; ``run`` returns after ``stop`` is set, having committed what is finished."""

    def __init__(
        self,
        settings: QactlSettings,
        generate: Callable[[str], Any],
        backend_name: str,
        stop: threading.Event,
        build_prompt: Callable[[str, str | None, float | None], str],
        status: StatusTracker | None = None,
        replica: int = 1,
        drain_seconds: float | None = None,
        description: str | None = None,
        group_id: str = GROUP,
    ) -> None:
        self.settings = settings
        self.status = StatusWriter(status) if status is not None else None
        self.backend_name = backend_name  # short: "local", "ollama", "openai", "simulated"
        self.description = description or backend_name
        self.group_id = group_id
        self.stop = stop
        self.replica = replica
        self.build_prompt = build_prompt
        self.concurrency = max(1, consumer_concurrency(settings, resolve_backend_kind(settings)))
        # Enough prefetched to refill a freed slot at once, small enough to stay fair to other replicas.
        self.prefetch = self.concurrency
        self.drain_seconds = (
            drain_seconds if drain_seconds is not None else min(20.0, settings.llm.timeout_seconds)
        )
        self.results: queue.Queue[CallResult] = queue.Queue()
        self.pool = CallPool(generate, self.concurrency, self.results)
        self.tracker = OffsetTracker()
        self.buffer: deque[Job] = deque()
        self.in_flight = 0
        self.paused = False
        # Assigned since flow control last applied ``paused``: librdkafka's pause state of a
        # partition that arrives (or comes back) is not ours to assume.
        self.unsettled = False
        self.failure: str | None = None
        self.heartbeat = time.monotonic()
        self.assigned: set[Partition] = set()
        self._last_commit = 0.0
        self.kafka = KafkaLink()
        self.committer = Committer(self.kafka)  # a position Kafka did not take (it was away) is sent again

    # -- health --------------------------------------------------------------------------------

    def health(self) -> dict[str, object]:
        age = time.monotonic() - self.heartbeat
        waiting = self.kafka.waiting_for_kafka
        if self.failure is not None:
            status = "failed"
        else:
            status = "waiting for kafka" if waiting else "ok"
        return {
            "ok": self.failure is None and age < 15 and not waiting,
            "status": status,
            "kafka": self.kafka.report(),
            "service": f"llm-consumer-{self.replica}",
            "backend": self.description,
            "concurrency": self.concurrency,
            "in_flight": self.in_flight,
            "buffered": len(self.buffer),
            "assigned": sorted(f"{t}[{p}]" for t, p in self.assigned),
            "paused": self.paused,
            "seconds_since_poll": round(age, 1),
            "failure": self.failure,
        }

    # -- main loop -----------------------------------------------------------------------------

    def run(self) -> None:
        consumer = make_consumer(
            self.settings, self.group_id, [topics.QUESTIONS_PENDING.name], client_id=f"llm-consumer-{self.replica}",
            **self.kafka.client_config("consumer"), **self.committer.consumer_config(),
        )
        consumer.subscribe(
            [topics.QUESTIONS_PENDING.name],
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_lost,
        )
        producer = make_producer(self.settings, f"llm-consumer-{self.replica}", **self.kafka.client_config("producer"))
        try:
            while not self.stop.is_set() and self.failure is None:
                self.heartbeat = time.monotonic()
                self._step(consumer, producer)
            self._shutdown(consumer, producer)
        finally:
            self.pool.close()
            consumer.close()
            if self.status is not None:
                self.status.close()
        if self.failure is not None:
            raise RuntimeError(self.failure)

    def _step(self, consumer: Consumer, producer: Producer) -> None:
        self._finish_ready(producer)
        self._start_buffered()
        if self.buffer and self.in_flight >= self.concurrency:
            # Saturated with more waiting: sleep until a call finishes, then refill at once.
            self._finish_ready(producer, wait=0.05)
            self._start_buffered()
        self._flow_control(consumer)
        room = max(1, self.prefetch - len(self.buffer))
        timeout = 0.0 if self.buffer or self.paused else (0.01 if self.in_flight else 0.1)
        for msg in consume_batch(consumer, room, timeout):
            self._take(msg, producer)
        self._start_buffered()
        producer.poll(0)
        self._commit(consumer)
        IN_FLIGHT.set(self.in_flight)
        BUFFERED.set(len(self.buffer))

    def _flow_control(self, consumer: Consumer) -> None:
        """Pause fetching while the buffer is full; resume at half, so fetches are not churned.

        The state applies to every assigned partition, those kept through a rebalance and those
        newly assigned alike: after an assignment it is applied again to all of them.
        """
        if not self.assigned:
            return
        if not self.paused and len(self.buffer) >= self.prefetch:
            self.paused, self.unsettled = True, True
        elif self.paused and len(self.buffer) <= self.prefetch // 2:
            self.paused, self.unsettled = False, True
        if not self.unsettled:
            return
        partitions = [TopicPartition(t, p) for t, p in self.assigned]
        if self.paused:
            consumer.pause(partitions)
        else:
            consumer.resume(partitions)
        self.unsettled = False

    def _take(self, msg: Message, producer: Producer) -> None:
        if msg.error():
            if is_real_error(msg):
                log.warning("consumer error: %s", msg.error())
                if msg.error().fatal():
                    self.failure = f"fatal consumer error: {msg.error()}"
            return
        partition = (msg.topic(), msg.partition())
        self.tracker.started(partition, msg.offset())
        try:
            question = decode(QuestionMessage, msg.value())
        except PoisonMessage as exc:
            POISON.inc()
            log.warning("poison on %s[%s]@%s: %s", msg.topic(), msg.partition(), msg.offset(), exc)
            self._produce(producer, topics.DEAD_LETTER.name, dead_letter_for_poison(msg, exc), partition, msg.offset())
            return
        now = utcnow()
        hop = Hop(
            stage=Stage.generating,
            topic=topics.QUESTIONS_PENDING.name,
            at=now,
            attempt=question.attempt,
            note=f"llm-consumer-{self.replica} via {self.backend_name}",
        )
        self.buffer.append(Job(partition, msg.offset(), question, now, [hop]))

    def _start_buffered(self) -> None:
        while self.buffer and self.in_flight < self.concurrency:
            job = self.buffer.popleft()
            question = job.question
            job.taken_at = job.hops[0].at = utcnow()  # generating starts now, not at fetch time
            if self.settings.llm.regeneration_feedback:
                prompt = self.build_prompt(question.question, question.previous_answer, question.previous_score)
            else:  # a fresh sample of the first prompt: its attempt gives it a new seed and temperature
                prompt = self.build_prompt(question.question, None, None)
            self.in_flight += 1
            self.pool.submit(job, prompt, question.attempt)
            self._record(question.question_id, job.hops[0])

    def _finish_ready(self, producer: Producer, wait: float = 0.0) -> None:
        """Turn finished calls into outcome messages; optionally wait for the first one.

        Freed slots are refilled from the buffer before the outcomes are built and produced,
        so the next calls do not wait for that work.
        """
        try:
            first = self.results.get(timeout=wait) if wait > 0 else self.results.get_nowait()
        except queue.Empty:
            return
        finished = [first]
        while True:
            try:
                finished.append(self.results.get_nowait())
            except queue.Empty:
                break
        self.in_flight -= len(finished)
        self._start_buffered()
        for result in finished:
            job: Job = result.job
            topic, payload, hop, label = outcome_for(
                job, result, self.backend_name, self.settings.llm.model, self.settings.llm.max_answer_chars,
                self.settings.policies.quality_threshold,
            )
            CALLS.labels(label, self.backend_name).inc()
            LATENCY.labels(label).observe(result.seconds)
            if label != "success":
                log.info("%s -> %s: %s", job.question.question_id, topic, hop.error.message if hop.error else "")
            self._produce(producer, topic, payload, job.partition, job.offset)
            self._record(job.question.question_id, hop)

    def _produce(self, producer: Producer, topic: str, payload: BaseModel, partition: Partition, offset: int) -> None:
        """Produce an outcome; its question's offset becomes committable when Kafka acks it."""

        def acknowledged(err: KafkaError | None, _: Message) -> None:
            if err is None:
                self.tracker.done(partition, offset)
            else:
                # Not committed, so redelivered after a restart; stopping is the honest reaction.
                self.failure = f"outcome for {partition}@{offset} not delivered to {topic}: {err}"
                log.error(self.failure)

        key = getattr(payload, "question_id").encode()
        while True:
            try:
                producer.produce(topic, value=encode(payload), key=key, on_delivery=acknowledged)
                break
            except BufferError:  # local queue full: let deliveries drain, then retry
                producer.poll(0.1)
        producer.poll(0)

    def _record(self, question_id: str, hop: Hop) -> None:
        if self.status is not None:
            self.status.record(question_id, hop)  # queued: written by the status thread

    # -- offsets and rebalances ------------------------------------------------------------------

    def _commit(self, consumer: Consumer, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_commit < COMMIT_INTERVAL_SECONDS:
            return
        self._last_commit = now
        positions = {p: o for p, o in self.tracker.committable().items() if p in self.assigned}
        offsets = [TopicPartition(t, p, o) for (t, p), o in positions.items()]
        # Never blocks the poll loop; a failed commit only widens what is redelivered.
        self.committer.commit(consumer, offsets)
        self.tracker.mark_committed(positions)
        if force:
            self.committer.flush(consumer)

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.assigned |= {(tp.topic, tp.partition) for tp in partitions}
        # The kept partitions stay as they were (paused, if the buffer is full): flow control
        # applies its state to all of them, new ones included, on its next step.
        self.unsettled = True
        log.info("assigned %s", sorted(f"{tp.topic}[{tp.partition}]" for tp in partitions))

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        revoked = {(tp.topic, tp.partition) for tp in partitions}
        positions = {p: o for p, o in self.tracker.committable().items() if p in revoked}
        if positions:
            try:
                consumer.commit(
                    offsets=[TopicPartition(t, p, o) for (t, p), o in positions.items()], asynchronous=False
                )
            except Exception as exc:
                log.warning("commit on revoke failed: %s", exc)
        self._drop(revoked)
        log.info("revoked %s", sorted(f"{t}[{p}]" for t, p in revoked))

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._drop({(tp.topic, tp.partition) for tp in partitions})

    def _drop(self, partitions: set[Partition]) -> None:
        """Forget partitions moving to another replica; its new owner redoes what was unfinished."""
        self.assigned -= partitions
        self.committer.forget([TopicPartition(t, p) for t, p in partitions])
        self.buffer = deque(job for job in self.buffer if job.partition not in partitions)
        self.tracker.forget(list(partitions))

    # -- stopping --------------------------------------------------------------------------------

    def _shutdown(self, consumer: Consumer, producer: Producer) -> None:
        """Take nothing new, let calls in flight finish for a while, then flush and commit."""
        if self.assigned:
            consumer.pause([TopicPartition(t, p) for t, p in self.assigned])
        self.buffer.clear()  # never started: simply not committed, so redelivered
        deadline = Deadline(self.drain_seconds)
        while self.in_flight > 0 and self.failure is None and not deadline.passed:
            self._finish_ready(producer, wait=0.1)
            producer.poll(0)
        if self.in_flight:
            log.info("abandoning %d call(s) in flight: they will be redelivered", self.in_flight)
        remaining = producer.flush(10)
        if remaining:
            log.warning("%d outcome(s) not acknowledged at stop: their questions will be redelivered", remaining)
        self._commit(consumer, force=True)
