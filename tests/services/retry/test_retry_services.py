"""retry-overload and retry-quota against the real Kafka (services in threads).

Delays are shortened with ``policies.delay_scale`` (0.1 unless a test says otherwise): overload
retries wait 0.1 / 0.2 / 0.4 s instead of 1 / 2 / 4 s.
"""

from __future__ import annotations

import os
import random
import time
from datetime import timedelta

import pytest
from confluent_kafka import TopicPartition

from services.common import topics
from services.common.kafka import make_consumer
from services.common.schemas import (
    DeadLetter,
    DelayedRetry,
    ErrorInfo,
    ErrorKind,
    LLMError,
    QuestionMessage,
    RetryCounts,
    Stage,
)
from services.common.settings import QactlSettings
from services.common.status import StatusTracker
from services.retry.policy import KINDS, RetryKind
from services.retry.service import RetryService
from tests.services.pipeline import (
    committed_offset,
    produce_models,
    produce_raw,
    records_refused,
    running,
    unique_question,
    wait_until,
    watching,
)

pytestmark = pytest.mark.stack

PENDING = topics.QUESTIONS_PENDING.name
DEAD = topics.DEAD_LETTER.name


def retry_service(settings: QactlSettings, kind: RetryKind):
    def run(stop) -> None:
        RetryService(settings, kind, stop, status=StatusTracker(settings), rng=random.Random(7)).run()

    return running(run, f"retry-{kind.value}")


def failed_call(question: QuestionMessage, kind: ErrorKind, retries: RetryCounts | None = None, **info) -> LLMError:
    error = ErrorInfo(kind=kind, status_code=503 if kind is ErrorKind.overload else 402, message="test", **info)
    fields = question.model_dump()
    fields.update(retries=retries or RetryCounts(), last_error=error)
    return LLMError(**fields, error=error)


def test_overload_error_waits_at_least_the_policy_delay_then_requeues(stack_settings: QactlSettings) -> None:
    settings = stack_settings
    questions = [unique_question("overload") for _ in range(3)]
    with watching(settings, PENDING, *[topics.overload_delay_topic(i).name for i in range(3)]) as watch:
        with retry_service(settings, RetryKind.overload):
            errors = [
                failed_call(q, ErrorKind.overload, RetryCounts(overload=level)) for level, q in enumerate(questions)
            ]
            produce_models(settings, topics.LLM_OVERLOAD.name, errors)
            watch.wait_for(
                lambda seen: all(watch.of(q.question_id, PENDING) for q in questions), 30, "three re-queued questions"
            )
    status = StatusTracker(settings)
    for level, question in enumerate(questions):
        (waiting,) = watch.of(question.question_id, topics.overload_delay_topic(level).name)
        (requeued,) = watch.of(question.question_id, PENDING)
        delayed: DelayedRetry = waiting.message
        again: QuestionMessage = requeued.message
        nominal = settings.policies.overload_delay_seconds(level)
        jitter = settings.policies.overload_jitter_fraction
        assert nominal * (1 - jitter) <= delayed.delay_seconds <= nominal * (1 + jitter)
        # Actual wait, measured on broker timestamps: never shorter than the chosen delay.
        scheduled_at = delayed.due_at - timedelta(seconds=delayed.delay_seconds)
        assert requeued.timestamp_ms / 1000 >= delayed.due_at.timestamp() - 0.005
        assert (again.hops[-1].at - scheduled_at).total_seconds() >= delayed.delay_seconds
        assert again.retries.overload == level + 1 and again.retries.quota == 0
        assert again.last_error is not None and again.last_error.kind is ErrorKind.overload
        assert again.hops[-2].stage is Stage.retrying_overload and again.hops[-2].delay_seconds is not None
        assert again.hops[-1].stage is Stage.queued and again.hops[-1].delay_seconds >= delayed.delay_seconds
        assert [h.stage for h in status.hops(question.question_id)][-2:] == [Stage.retrying_overload, Stage.queued]


def test_a_retry_due_is_not_held_behind_a_long_one_on_the_same_level(stack_settings: QactlSettings) -> None:
    """Both retries on level 0 (one topic, one partition: FIFO), the long one decided first: a 503
    with a Retry-After of an hour, then a plain 503 due after its own short delay. The plain one
    is re-queued; the hour holds nothing. Before the Retry-After cap (f64d31f) the hour waited at
    the head of level 0 and held the plain one behind it: checked by reverting that commit."""
    settings = stack_settings
    level_0 = topics.overload_delay_topic(0)
    assert level_0.partitions == 1
    long, due = unique_question("long-first"), unique_question("due-behind")
    with watching(settings, PENDING, level_0.name, topics.LLM_QUOTA.name) as watch:
        with retry_service(settings, RetryKind.overload):
            produce_models(settings, topics.LLM_OVERLOAD.name, [failed_call(long, ErrorKind.overload, retry_after_seconds=3600)])
            # Decided first (wherever it went: level 0 before the cap, the quota path now) ...
            watch.wait_for(lambda seen: watch.of(long.question_id), 30, "the long retry decided")
            # ... then the plain one, whose level is the same.
            produce_models(settings, topics.LLM_OVERLOAD.name, [failed_call(due, ErrorKind.overload)])
            watch.wait_for(lambda seen: watch.of(due.question_id, PENDING), 30, "the due retry re-queued")
    (waited,) = watch.of(due.question_id, level_0.name)
    assert waited.message.retries.overload == 0  # level 0: the level the hour was decided for
    assert settings.policies.overload_max_retry_after_seconds < 3600
    assert not watch.of(long.question_id, level_0.name) and not watch.of(long.question_id, PENDING)
    assert watch.of(long.question_id, topics.LLM_QUOTA.name)


@pytest.mark.parametrize(("kind", "topic", "limit"), [(RetryKind.overload, topics.LLM_OVERLOAD.name, 3), (RetryKind.quota, topics.LLM_QUOTA.name, 5)])
def test_retries_used_up_go_to_the_dead_letter_with_the_reason(
    stack_settings: QactlSettings, kind: RetryKind, topic: str, limit: int
) -> None:
    settings = stack_settings
    question = unique_question(f"exhausted-{kind.value}")
    error_kind = ErrorKind.overload if kind is RetryKind.overload else ErrorKind.quota
    used_up = failed_call(question, error_kind, RetryCounts(**{kind.value: limit}))
    with watching(settings, DEAD, PENDING) as watch:
        with retry_service(settings, kind):
            produce_models(settings, topic, [used_up])
            watch.wait_for(lambda seen: watch.of(question.question_id, DEAD), 30, "the dead letter")
            watch.settle(0.5)
    (letter_seen,) = watch.of(question.question_id)  # nothing re-queued
    letter: DeadLetter = letter_seen.message
    assert letter.reason == f"{kind.value} retries exhausted ({limit})"
    assert letter.error.kind is ErrorKind.exhausted
    assert letter.source_topic == topic
    assert letter.message is not None and letter.message.last_error is not None
    assert letter.message.hops[-1].stage is Stage.failed


def test_quota_error_waits_the_fixed_delay(stack_settings: QactlSettings) -> None:
    """quota_delay_seconds 60 x delay_scale 0.02 = 1.2 s here."""
    settings = stack_settings.model_copy(
        update={"policies": stack_settings.policies.model_copy(update={"delay_scale": 0.02})}
    )
    question = unique_question("quota")
    with watching(settings, PENDING, topics.QUOTA_DELAY.name) as watch:
        with retry_service(settings, RetryKind.quota):
            produce_models(settings, topics.LLM_QUOTA.name, [failed_call(question, ErrorKind.quota)])
            watch.wait_for(lambda seen: watch.of(question.question_id, PENDING), 30, "the re-queued question")
    (waiting,) = watch.of(question.question_id, topics.QUOTA_DELAY.name)
    (requeued,) = watch.of(question.question_id, PENDING)
    assert waiting.message.delay_seconds == pytest.approx(1.2)
    assert requeued.timestamp_ms - waiting.timestamp_ms >= 1200 - 5
    assert requeued.message.retries.quota == 1 and requeued.message.retries.overload == 0


def test_retry_after_longer_than_the_policy_is_honoured(stack_settings: QactlSettings) -> None:
    settings = stack_settings
    question = unique_question("retry-after")
    with watching(settings, PENDING, topics.overload_delay_topic(0).name) as watch:
        with retry_service(settings, RetryKind.overload):
            produce_models(
                settings, topics.LLM_OVERLOAD.name, [failed_call(question, ErrorKind.overload, retry_after_seconds=1.5)]
            )
            watch.wait_for(lambda seen: watch.of(question.question_id, PENDING), 30, "the re-queued question")
    (waiting,) = watch.of(question.question_id, topics.overload_delay_topic(0).name)
    (requeued,) = watch.of(question.question_id, PENDING)
    assert waiting.message.delay_seconds == 1.5
    assert requeued.timestamp_ms - waiting.timestamp_ms >= 1500 - 5


@pytest.mark.parametrize("kind", [RetryKind.overload, RetryKind.quota])
def test_poison_on_every_topic_a_retry_service_reads_goes_to_the_dead_letter(
    stack_settings: QactlSettings, kind: RetryKind
) -> None:
    settings = stack_settings
    spec = KINDS[kind]
    read_topics = [spec.error_topic, *spec.delay_topics(settings.policies)]
    question = unique_question(f"after-poison-{kind.value}")
    error_kind = ErrorKind.overload if kind is RetryKind.overload else ErrorKind.quota
    quick = settings.model_copy(update={"policies": settings.policies.model_copy(update={"delay_scale": 0.01})})
    with watching(settings, DEAD, PENDING) as watch:
        with retry_service(quick, kind):
            for i, topic in enumerate(read_topics):
                produce_raw(settings, topic, b"\xff not json " + topic.encode(), key=f"poison-{i}".encode())
            produce_raw(settings, read_topics[0], b'{"schema_version": 1, "question_id": "x"}', key=b"invalid")
            # ...and the service keeps going: a valid error after the poison is retried.
            produce_models(settings, spec.error_topic, [failed_call(question, error_kind)])
            watch.wait_for(
                lambda seen: len(watch.of("invalid", DEAD)) == 1
                and sum(1 for s in seen if s.topic == DEAD and s.message.error.kind is ErrorKind.poison) >= len(read_topics) + 1
                and watch.of(question.question_id, PENDING),
                30,
                "dead letters for every poison and the valid retry",
            )
    poison_sources = {s.message.source_topic for s in watch.seen if s.topic == DEAD and s.message.error.kind is ErrorKind.poison}
    assert set(read_topics) <= poison_sources
    for seen in watch.seen:
        if seen.topic == DEAD and seen.message.question_id.startswith("poison-"):
            assert seen.message.raw  # the undecodable bytes are kept (base64)


def test_a_retry_after_over_the_cap_holds_no_level_and_ends_with_the_reason(stack_settings: QactlSettings) -> None:
    """Retry-After of an hour and of 1e12 s: over the overload cap (20 s) the question takes the
    quota path, over the quota cap (300 s) the dead letter; a retry due now on the same level
    is not held behind them, and the service keeps going."""
    settings = stack_settings
    hour, forever, due_now = unique_question("retry-after-hour"), unique_question("retry-after-1e12"), unique_question("due-now")
    level_0 = topics.overload_delay_topic(0).name
    with watching(settings, PENDING, level_0, topics.LLM_QUOTA.name, DEAD) as watch:
        with retry_service(settings, RetryKind.overload), retry_service(settings, RetryKind.quota):
            produce_models(settings, topics.LLM_OVERLOAD.name, [
                failed_call(hour, ErrorKind.overload, retry_after_seconds=3600),
                failed_call(forever, ErrorKind.overload, retry_after_seconds=1e12),
            ])
            produce_models(settings, topics.LLM_OVERLOAD.name, [failed_call(due_now, ErrorKind.overload)])
            watch.wait_for(
                lambda seen: watch.of(due_now.question_id, PENDING)
                and watch.of(hour.question_id, DEAD) and watch.of(forever.question_id, DEAD),
                30,
                "the retry due now re-queued and both long Retry-Afters dead-lettered",
            )
    assert watch.of(due_now.question_id, level_0)  # the same level the hour would have waited on
    status = StatusTracker(settings)
    for question, seconds in ((hour, "3600"), (forever, "1e+12")):
        assert not watch.of(question.question_id, level_0) and not watch.of(question.question_id, PENDING)
        (moved,) = watch.of(question.question_id, topics.LLM_QUOTA.name)
        assert moved.message.hops[-1].stage is Stage.retrying_quota
        assert moved.message.hops[-1].note == (
            f"Retry-After {seconds} s is over the overload cap of 20 s: the question takes the quota path"
        )
        (letter,) = watch.of(question.question_id, DEAD)
        assert letter.message.reason == f"Retry-After {seconds} s is over the quota cap of 300 s"
        assert [h.stage for h in letter.message.message.hops][-2:] == [Stage.retrying_quota, Stage.failed]
        assert status.current(question.question_id) is Stage.failed


def test_a_retry_kafka_refuses_is_not_committed_and_comes_back(stack_settings: QactlSettings) -> None:
    """A send that fails for good (here: over the delay topic's size limit) was committed after
    ``flush()`` as if delivered, and the question was lost. Now its error stays uncommitted, the
    service stops (nothing half-running), and the next start sends it again."""
    settings = stack_settings
    question = unique_question("refused")
    question = question.model_copy(update={"question": f"{question.question} {os.urandom(8192).hex()}"})
    level_0 = topics.overload_delay_topic(0).name
    with watching(settings, topics.LLM_OVERLOAD.name, level_0, PENDING) as watch:
        with records_refused(settings, level_0):
            with pytest.raises(RuntimeError, match="not delivered"):
                with retry_service(settings, RetryKind.overload) as stop:
                    produce_models(settings, topics.LLM_OVERLOAD.name, [failed_call(question, ErrorKind.overload)])
                    wait_until(stop.is_set, 30, "the retry service to stop on the refused send")
        watch.wait_for(lambda seen: watch.of(question.question_id, topics.LLM_OVERLOAD.name), 10, "the error")
        (error,) = watch.of(question.question_id, topics.LLM_OVERLOAD.name)
        assert committed_offset(settings, "retry-overload", error.topic, error.partition) <= error.offset
        with retry_service(settings, RetryKind.overload):
            watch.wait_for(lambda seen: watch.of(question.question_id, PENDING), 30, "the retry sent again, then re-queued")
    assert len(watch.of(question.question_id, level_0)) == 1


def test_a_waiting_retry_whose_partition_moves_away_and_back_is_still_requeued(stack_settings: QactlSettings) -> None:
    """A delay partition paused for its head, revoked, then assigned back to the same service.

    librdkafka keeps a partition paused across a rebalance until the application resumes it,
    while the service forgot the pause with the partition: the partition came back paused with
    nothing to resume it, and its retries stayed there for good. CI hit it as a Kafka outage
    longer than the session timeout (the partitions are lost, then assigned back); here another
    member of the delay group takes one paused level for a moment, and leaves.
    """
    settings = stack_settings
    spec = KINDS[RetryKind.overload]
    delay_topics = spec.delay_topics(settings.policies)
    questions = [unique_question(f"moved-level-{level}") for level in range(len(delay_topics))]
    services: list[RetryService] = []

    def run(stop) -> None:
        services.append(RetryService(settings, RetryKind.overload, stop, status=StatusTracker(settings), rng=random.Random(7)))
        services[0].run()

    with watching(settings, PENDING, *delay_topics) as watch, running(run, "retry-overload"):
        # One retry waiting on every level, each due in 18 s (a Retry-After under the 20-s cap).
        produce_models(settings, spec.error_topic, [
            failed_call(q, ErrorKind.overload, RetryCounts(overload=level), retry_after_seconds=18.0)
            for level, q in enumerate(questions)
        ])
        wait_until(lambda: services and {t for t, _ in services[0].paused} >= set(delay_topics), 30, "every level paused for its head")

        moved: list[TopicPartition] = []
        intruder = make_consumer(settings, spec.delay_group, delay_topics, client_id="retry-overload-delay-intruder")
        intruder.subscribe(delay_topics, on_assign=lambda _, partitions: moved.extend(partitions))
        try:
            deadline = time.monotonic() + 15
            while not moved and time.monotonic() < deadline:
                intruder.poll(0.2)
        finally:
            intruder.close()  # leaves the group: what it took goes back to the service
        assert moved, "no delay partition moved to the other member"
        watch.settle(0.1)
        moved_topics = {tp.topic for tp in moved}
        assert not any(watch.of(q.question_id, PENDING) for q in questions), "a retry went out before the move: too late to test"
        assert not moved_topics & {t for t, _ in services[0].paused}, "the moved partition is still paused in the service"

        watch.wait_for(
            lambda seen: all(watch.of(q.question_id, PENDING) for q in questions), 45, "every retry re-queued, the moved one too"
        )
    for level, question in enumerate(questions):
        (waiting,) = watch.of(question.question_id, delay_topics[level])
        (requeued,) = watch.of(question.question_id, PENDING)
        assert requeued.timestamp_ms / 1000 >= waiting.message.due_at.timestamp() - 0.005  # not before it was due
