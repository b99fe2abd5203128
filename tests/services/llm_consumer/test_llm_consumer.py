"""llm-consumer against the real Kafka and the real built-in gateway (both in threads here).

Outcome routing by what the LLM answered, poison handling, regeneration prompts, and the whole
overload loop (503 burst -> retry-overload -> success) with delays shortened by
``policies.delay_scale`` = 0.1 (0.1 / 0.2 / 0.4 s).
"""

from __future__ import annotations

import random
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta

import pytest

from services.common import topics
from services.common.prompts import build_prompt, parse_prompt
from services.common.schemas import DeadLetter, ErrorKind, LLMAnswer, LLMError, Stage
from services.common.settings import QactlSettings
from services.common.status import StatusTracker
from services.llm_consumer.backends import LLMResult, SimulatedBackend
from services.llm_consumer.consumer import LLMConsumer
from services.retry.policy import RetryKind
from services.retry.service import RetryService
from tests.services.pipeline import (
    Gateway,
    produce_models,
    produce_raw,
    running,
    unique_question,
    wait_until,
    watching,
)

pytestmark = pytest.mark.stack

PENDING = topics.QUESTIONS_PENDING.name
SUCCESS = topics.LLM_SUCCESS.name
OVERLOAD = topics.LLM_OVERLOAD.name
QUOTA = topics.LLM_QUOTA.name
DEAD = topics.DEAD_LETTER.name
OUTCOMES = (SUCCESS, OVERLOAD, QUOTA, DEAD)


@pytest.fixture
def gateway(stack_settings: QactlSettings):
    with Gateway(stack_settings) as running_gateway:
        yield running_gateway


def consumer_with(settings: QactlSettings, generate: Callable, name: str = "simulated"):
    def run(stop: threading.Event) -> None:
        LLMConsumer(settings, generate, name, stop, build_prompt, status=StatusTracker(settings)).run()

    return running(run, "llm-consumer")


def gateway_consumer(settings: QactlSettings, base_url: str | None = None):
    backend = SimulatedBackend(base_url or settings.gateway.base_url, settings.llm.model, settings.llm.timeout_seconds)
    return consumer_with(settings, backend.generate)


def test_a_question_reaches_llm_responses_success_with_a_valid_message(
    stack_settings: QactlSettings, gateway: Gateway
) -> None:
    settings = stack_settings
    question = unique_question("success")
    with watching(settings, *OUTCOMES) as watch:
        with gateway_consumer(settings):
            produce_models(settings, PENDING, [question])
            watch.wait_for(lambda seen: watch.of(question.question_id, SUCCESS), 30, "the answer")
    (seen,) = watch.of(question.question_id)
    answer: LLMAnswer = seen.message  # decoded with the topic's model: the message is valid
    assert answer.question == question.question and answer.answer.strip()
    assert answer.backend == "simulated" and answer.model == settings.llm.model
    assert answer.llm_latency_ms >= 0
    assert [h.stage for h in answer.hops] == [Stage.generating, Stage.scoring]
    assert answer.timestamps[Stage.generating.value] <= answer.timestamps[Stage.scoring.value]
    assert [h.stage for h in StatusTracker(settings).hops(question.question_id)] == [Stage.generating, Stage.scoring]


@pytest.mark.parametrize(
    ("fault", "topic", "kind", "status"),
    [
        ({"kind": "402"}, QUOTA, ErrorKind.quota, 402),
        ({"kind": "insufficient_quota"}, QUOTA, ErrorKind.quota, 429),
        ({"kind": "503", "retry_after": 3}, OVERLOAD, ErrorKind.overload, 503),
        ({"kind": "429"}, OVERLOAD, ErrorKind.overload, 429),
    ],
)
def test_errors_are_routed_by_their_kind(
    stack_settings: QactlSettings, gateway: Gateway, fault: dict, topic: str, kind: ErrorKind, status: int
) -> None:
    settings = stack_settings
    question = unique_question(f"fault-{fault['kind']}")
    gateway.fault(**fault, count=1, match=question.question)
    with watching(settings, *OUTCOMES) as watch:
        with gateway_consumer(settings):
            produce_models(settings, PENDING, [question])
            watch.wait_for(lambda seen: watch.of(question.question_id), 30, "the outcome")
            watch.settle(0.3)
    (seen,) = watch.of(question.question_id)
    assert seen.topic == topic
    failed: LLMError = seen.message
    assert failed.error.kind is kind and failed.error.status_code == status
    assert failed.last_error == failed.error
    if "retry_after" in fault:
        assert failed.error.retry_after_seconds == fault["retry_after"]
    expected_stage = Stage.retrying_quota if kind is ErrorKind.quota else Stage.retrying_overload
    assert failed.hops[-1].stage is expected_stage


def test_another_4xx_goes_to_the_dead_letter_with_the_reason(stack_settings: QactlSettings, gateway: Gateway) -> None:
    """A backend pointed at a path the server does not have gets a genuine 404."""
    settings = stack_settings
    question = unique_question("client-error")
    with watching(settings, *OUTCOMES) as watch:
        with gateway_consumer(settings, base_url=f"{settings.gateway.base_url}/no-such-prefix"):
            produce_models(settings, PENDING, [question])
            watch.wait_for(lambda seen: watch.of(question.question_id), 30, "the dead letter")
    (seen,) = watch.of(question.question_id)
    assert seen.topic == DEAD
    letter: DeadLetter = seen.message
    assert letter.error.kind is ErrorKind.client and letter.error.status_code == 404
    assert "404" in letter.reason and letter.source_topic == PENDING
    assert letter.message is not None and letter.message.question == question.question


def test_poison_on_questions_pending_is_dead_lettered_and_the_consumer_keeps_going(
    stack_settings: QactlSettings, gateway: Gateway
) -> None:
    settings = stack_settings
    question = unique_question("after-poison")
    with watching(settings, *OUTCOMES) as watch:
        with gateway_consumer(settings):
            produce_raw(settings, PENDING, b"\x00\x01 definitely not json", key=b"poison-pending")
            produce_raw(settings, PENDING, b'{"schema_version": 1, "question_id": "q", "question": ""}', key=b"empty-q")
            produce_raw(settings, PENDING, None, key=b"tombstone")
            produce_models(settings, PENDING, [question])
            watch.wait_for(
                lambda seen: watch.of(question.question_id, SUCCESS)
                and all(watch.of(k, DEAD) for k in ("poison-pending", "empty-q", "tombstone")),
                30,
                "three dead letters and the next answer",
            )
    for key in ("poison-pending", "empty-q", "tombstone"):
        (seen,) = watch.of(key, DEAD)
        assert seen.message.error.kind is ErrorKind.poison
        assert seen.message.source_topic == PENDING
        assert seen.message.reason.startswith("poison message on questions-pending")


@pytest.mark.parametrize("feedback", [False, True], ids=["fresh-sample", "feedback"])
def test_a_regeneration_is_a_new_sample_and_carries_feedback_when_asked(stack_settings: QactlSettings, feedback: bool) -> None:
    """The LLM here is a recording function: the prompt and the attempt are what is checked."""
    settings = stack_settings.model_copy(
        update={"llm": stack_settings.llm.model_copy(update={"regeneration_feedback": feedback})}
    )
    calls: list[tuple[str, int]] = []

    async def recording_llm(prompt: str, attempt: int) -> LLMResult:
        calls.append((prompt, attempt))
        return LLMResult(answer="a better answer", model="recorder", backend="recorder", latency_ms=0.0)

    question = unique_question("regenerate").model_copy(
        update={"attempt": 1, "previous_answer": "a poor answer about cooking", "previous_score": 0.42}
    )
    with watching(settings, SUCCESS) as watch:
        with consumer_with(settings, recording_llm, name="recorder"):
            produce_models(settings, PENDING, [question])
            watch.wait_for(lambda seen: watch.of(question.question_id), 30, "the regenerated answer")
    mine = [(p, a) for p, a in calls if question.question in p]
    assert len(mine) == 1
    prompt, attempt = mine[0]
    assert attempt == 1  # the backend samples attempt 1 with its own seed and temperature
    parsed = parse_prompt(prompt)
    assert parsed.question == question.question
    if feedback:
        assert parsed.previous_answer == "a poor answer about cooking" and parsed.previous_score == pytest.approx(0.42)
    else:
        assert prompt == build_prompt(question.question) and not parsed.is_regeneration
    (seen,) = watch.of(question.question_id)
    assert seen.message.attempt == 1 and seen.message.model == "recorder"


def test_a_503_burst_is_retried_with_backoff_until_success(stack_settings: QactlSettings, gateway: Gateway) -> None:
    settings = stack_settings
    question = unique_question("burst")
    gateway.fault(kind="503", count=2, match=question.question)

    def retry_overload(stop: threading.Event) -> None:
        RetryService(settings, RetryKind.overload, stop, status=StatusTracker(settings), rng=random.Random(3)).run()

    delay_topics = [topics.overload_delay_topic(i).name for i in range(settings.policies.overload_max_retries)]
    with watching(settings, *OUTCOMES, PENDING, *delay_topics) as watch:
        with gateway_consumer(settings), running(retry_overload, "retry-overload"):
            produce_models(settings, PENDING, [question])
            watch.wait_for(lambda seen: watch.of(question.question_id, SUCCESS), 60, "the answer after retries")
    errors = watch.of(question.question_id, OVERLOAD)
    assert [e.message.error.status_code for e in errors] == [503, 503]
    requeued = watch.of(question.question_id, PENDING)[1:]  # the first is the original question
    assert [r.message.retries.overload for r in requeued] == [1, 2]
    policies = settings.policies
    for level, (error, again) in enumerate(zip(errors, requeued)):
        waited = (again.timestamp_ms - error.timestamp_ms) / 1000
        assert waited >= policies.overload_delay_seconds(level) * (1 - policies.overload_jitter_fraction)
        waiting = watch.of(question.question_id, delay_topics[level])[0].message
        assert again.timestamp_ms / 1000 >= waiting.due_at.timestamp() - 0.005
    (answer,) = watch.of(question.question_id, SUCCESS)
    assert answer.message.retries.overload == 2
    stages = [h.stage for h in answer.message.hops]
    assert stages == [
        Stage.generating, Stage.retrying_overload, Stage.retrying_overload, Stage.queued,
        Stage.generating, Stage.retrying_overload, Stage.retrying_overload, Stage.queued,
        Stage.generating, Stage.scoring,
    ]  # fmt: skip
    assert gateway.stats()["by_outcome"].get("503", 0) >= 2
    assert answer.message.submitted_at < answer.message.timestamps["scoring"] - timedelta(seconds=0.3)


@pytest.mark.parametrize("fault", ["402", "insufficient_quota"])
def test_a_quota_error_is_retried_after_the_fixed_delay_until_success(
    stack_settings: QactlSettings, gateway: Gateway, fault: str
) -> None:
    """quota_delay_seconds 60 x delay_scale 0.02 = 1.2 s here."""
    settings = stack_settings.model_copy(
        update={"policies": stack_settings.policies.model_copy(update={"delay_scale": 0.02})}
    )
    question = unique_question(f"quota-{fault}")
    gateway.fault(kind=fault, count=1, match=question.question)

    def retry_quota(stop: threading.Event) -> None:
        RetryService(settings, RetryKind.quota, stop, status=StatusTracker(settings)).run()

    with watching(settings, *OUTCOMES, PENDING) as watch:
        with gateway_consumer(settings), running(retry_quota, "retry-quota"):
            produce_models(settings, PENDING, [question])
            watch.wait_for(lambda seen: watch.of(question.question_id, SUCCESS), 60, "the answer after the quota retry")
    (error,) = watch.of(question.question_id, QUOTA)
    assert not watch.of(question.question_id, OVERLOAD)  # a billing error never spins in the overload loop
    requeued = watch.of(question.question_id, PENDING)[1]
    assert requeued.timestamp_ms - error.timestamp_ms >= 1200 - 5
    (answer,) = watch.of(question.question_id, SUCCESS)
    assert answer.message.retries.quota == 1 and answer.message.retries.overload == 0


def test_overload_retries_used_up_end_in_the_dead_letter(stack_settings: QactlSettings, gateway: Gateway) -> None:
    settings = stack_settings
    question = unique_question("always-503")
    gateway.fault(kind="503", count=4, match=question.question)  # the first call and all 3 retries fail

    def retry_overload(stop: threading.Event) -> None:
        RetryService(settings, RetryKind.overload, stop, status=StatusTracker(settings)).run()

    with watching(settings, *OUTCOMES) as watch:
        with gateway_consumer(settings), running(retry_overload, "retry-overload"):
            produce_models(settings, PENDING, [question])
            watch.wait_for(lambda seen: watch.of(question.question_id, DEAD), 60, "the dead letter")
            watch.settle(0.5)
    assert len(watch.of(question.question_id, OVERLOAD)) == 4
    assert not watch.of(question.question_id, SUCCESS)
    (letter,) = watch.of(question.question_id, DEAD)
    assert letter.message.reason == "overload retries exhausted (3)"
    assert letter.message.error.kind is ErrorKind.exhausted and letter.message.error.status_code == 503
    assert letter.message.message.retries.overload == 3
    assert StatusTracker(settings).current(question.question_id) is Stage.failed


# --- flow control through a rebalance ---


def group_from_now(settings: QactlSettings, group: str) -> None:
    """A new consumer group whose committed offsets are the log end: it reads only what comes next."""
    from confluent_kafka import Consumer, TopicPartition

    from qactl.client import kafka_admin

    ends = kafka_admin.end_offsets(settings.kafka.bootstrap, PENDING)
    consumer = Consumer({"bootstrap.servers": settings.kafka.bootstrap, "group.id": group, "enable.auto.commit": False})
    try:
        consumer.commit(offsets=[TopicPartition(PENDING, p, o) for p, o in ends.items()], asynchronous=False)
    finally:
        consumer.close()


def produce_to(settings: QactlSettings, partition: int, label: str, count: int = 1) -> list[str]:
    """``count`` new questions on one partition of questions-pending; their ids."""
    from confluent_kafka import Producer

    from services.common.schemas import encode

    producer = Producer({"bootstrap.servers": settings.kafka.bootstrap})
    ids = []
    for i in range(count):
        question = unique_question(f"{label}-p{partition}-{i}")
        producer.produce(PENDING, value=encode(question), key=question.question_id.encode(), partition=partition)
        ids.append(question.question_id)
    assert producer.flush(15) == 0
    return ids


@contextmanager
def replica(settings: QactlSettings, generate: Callable, group: str, number: int) -> Iterator[LLMConsumer]:
    made: list[LLMConsumer] = []

    def run(stop: threading.Event) -> None:
        made.append(
            LLMConsumer(settings, generate, "scripted", stop, build_prompt, replica=number, drain_seconds=1.0, group_id=group)
        )
        made[0].run()

    with running(run, f"llm-consumer-{number}"):
        wait_until(lambda: made, 10, f"replica {number}")
        yield made[0]


def test_partitions_kept_through_a_rebalance_during_backpressure_consume_again(stack_settings: QactlSettings) -> None:
    """The first replica is saturated and paused when a second one joins the group: every
    partition it keeps must be resumed once its buffer drains, not stay paused for good."""
    settings = stack_settings.model_copy(update={"llm": stack_settings.llm.model_copy(update={"concurrency": 3})})
    group = f"llm-consumer-rebalance-{uuid.uuid4().hex[:8]}"
    group_from_now(settings, group)
    release = threading.Event()
    everything = set(range(topics.QUESTIONS_PENDING.partitions))

    def held_llm(prompt: str, attempt: int) -> str:
        release.wait(60)
        return "held, then answered"

    def quick_llm(prompt: str, attempt: int) -> str:
        return "answered at once"

    ids: list[str] = []
    with watching(settings, SUCCESS) as watch:
        try:
            with replica(settings, held_llm, group, 1) as first:
                wait_until(lambda: {p for _, p in first.assigned} == everything, 30, "the first replica's partitions")
                ids += produce_to(settings, 0, "in-flight", count=3)
                wait_until(lambda: first.in_flight == 3 and not first.buffer, 30, "three calls held")
                for partition in sorted(everything):  # one buffered question on every partition
                    ids += produce_to(settings, partition, "buffered")
                wait_until(lambda: first.paused and len(first.buffer) == 3, 30, "backpressure")
                assert {job.partition[1] for job in first.buffer} == everything
                for partition in sorted(everything):  # behind the pause
                    ids += produce_to(settings, partition, "waiting", count=2)
                with replica(settings, quick_llm, group, 2) as second:
                    wait_until(lambda: second.assigned and len(first.assigned) + len(second.assigned) == len(everything),
                               30, "the rebalance")
                    kept = {p for _, p in first.assigned}
                    assert kept and kept != everything
                    release.set()
                    watch.wait_for(lambda seen: set(ids) <= {s.message.question_id for s in seen}, 30,
                                   "every question answered, those of the kept partitions too")
                    after = [qid for partition in sorted(kept) for qid in produce_to(settings, partition, "after")]
                    watch.wait_for(lambda seen: set(after) <= {s.message.question_id for s in seen}, 30,
                                   "new questions on every kept partition answered")
                    assert not first.paused and first.health()["ok"]
        finally:
            release.set()
    answered_by_first = {s.message.question_id for s in watch.seen if s.message.answer == "held, then answered"}
    assert set(after) <= answered_by_first
