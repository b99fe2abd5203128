"""A regeneration whose LLM call fails for good keeps the best answer the question already had.

On the real Kafka, with the real llm-consumer (a genuine 404 from the built-in gateway) and the
real retry services (retries used up): the question goes to low-quality-responses with its best
scored answer, never to the dead letter; a first answer that fails still goes to the dead letter.
"""

from __future__ import annotations

import random
import threading

import pytest

from services.common import topics
from services.common.prompts import build_prompt
from services.common.schemas import (
    BestAnswer,
    DeadLetter,
    ErrorInfo,
    ErrorKind,
    Hop,
    LLMError,
    QuestionMessage,
    RetryCounts,
    ScoredAnswer,
    Stage,
)
from services.common.settings import QactlSettings
from services.common.status import StatusTracker
from services.llm_consumer.backends import SimulatedBackend
from services.llm_consumer.consumer import LLMConsumer
from services.retry.policy import RetryKind
from services.retry.service import RetryService
from tests.services.pipeline import Gateway, pipeline_settings, produce_models, running, unique_question, watching

pytestmark = pytest.mark.stack

LOW = topics.LOW_QUALITY.name
DEAD = topics.DEAD_LETTER.name
PENDING = topics.QUESTIONS_PENDING.name


@pytest.fixture(scope="module")
def stack_settings(infra_stack: QactlSettings) -> QactlSettings:
    return pipeline_settings(infra_stack)


def regeneration(label: str, attempt: int = 2) -> QuestionMessage:
    """Regeneration ``attempt`` of a question whose attempt 0 scored 0.55 and attempt 1 0.41."""
    question = unique_question(label)
    best = BestAnswer(attempt=0, answer="Kafka is a distributed log.", score=0.55, model="m0", backend="gateway",
                      llm_latency_ms=120.0)
    hops = [
        Hop(stage=Stage.queued, topic=PENDING),
        Hop(stage=Stage.regenerating, topic=PENDING, attempt=1, score=0.55),
        Hop(stage=Stage.regenerating, topic=PENDING, attempt=2, score=0.41),
    ][: attempt + 1]
    return question.model_copy(
        update={"attempt": attempt, "best": best, "previous_answer": "A novelist.", "previous_score": 0.41, "hops": hops}
    )


def assert_kept_best(seen_message: object, attempt: int, reason_part: str) -> ScoredAnswer:
    assert isinstance(seen_message, ScoredAnswer)
    kept = seen_message
    assert (kept.answer, kept.score, kept.model, kept.attempt) == ("Kafka is a distributed log.", 0.55, "m0", attempt)
    assert kept.regeneration_error is not None and kept.scores == [0.55, 0.41][:attempt]
    hop = kept.hops[-1]
    assert hop.stage is Stage.low_quality and hop.topic == LOW
    assert hop.note.startswith(f"regeneration {attempt} failed: ") and reason_part in hop.note
    assert hop.note.endswith("kept best answer (score 0.550)")
    return kept


def test_a_regeneration_the_llm_refuses_ends_low_quality_with_its_best_answer(stack_settings: QactlSettings) -> None:
    """A genuine 404 (a path the gateway does not serve) on regeneration 2, and on a first answer."""
    settings = stack_settings
    regenerating, first = regeneration("refused regeneration"), unique_question("refused first answer")
    backend = SimulatedBackend(f"{settings.gateway.base_url}/no-such-prefix", settings.llm.model, settings.llm.timeout_seconds)

    def consume(stop: threading.Event) -> None:
        LLMConsumer(settings, backend.generate, "simulated", stop, build_prompt, status=StatusTracker(settings)).run()

    with Gateway(settings), watching(settings, LOW, DEAD, topics.LLM_SUCCESS.name) as watch:
        with running(consume, "llm-consumer"):
            produce_models(settings, PENDING, [regenerating, first])
            watch.wait_for(
                lambda seen: watch.of(regenerating.question_id) and watch.of(first.question_id), 30, "both outcomes"
            )
            watch.settle(0.3)
    (kept,) = watch.of(regenerating.question_id)
    assert kept.topic == LOW
    assert_kept_best(kept.message, 2, "LLM refused the request (404)")
    assert kept.message.regeneration_error.kind is ErrorKind.client
    (failed,) = watch.of(first.question_id)  # nothing to keep: the dead letter, as before
    assert failed.topic == DEAD and isinstance(failed.message, DeadLetter)


@pytest.mark.parametrize("kind", [RetryKind.overload, RetryKind.quota])
def test_a_regeneration_whose_retries_are_used_up_ends_low_quality_with_its_best_answer(
    stack_settings: QactlSettings, kind: RetryKind
) -> None:
    settings = stack_settings
    limit = settings.policies.overload_max_retries if kind is RetryKind.overload else settings.policies.quota_max_retries
    error_kind = ErrorKind.overload if kind is RetryKind.overload else ErrorKind.quota
    error = ErrorInfo(kind=error_kind, status_code=503 if kind is RetryKind.overload else 402, message="test")
    question = regeneration(f"exhausted regeneration {kind.value}", attempt=1)
    used_up = LLMError(
        **question.model_dump(exclude={"retries", "last_error"}),
        retries=RetryCounts(**{kind.value: limit}), last_error=error, error=error,
    )
    error_topic = topics.LLM_OVERLOAD.name if kind is RetryKind.overload else topics.LLM_QUOTA.name

    def retry(stop: threading.Event) -> None:
        RetryService(settings, kind, stop, status=StatusTracker(settings), rng=random.Random(7)).run()

    with watching(settings, LOW, DEAD, PENDING) as watch:
        with running(retry, f"retry-{kind.value}"):
            produce_models(settings, error_topic, [used_up])
            watch.wait_for(lambda seen: watch.of(question.question_id), 30, "the ending")
            watch.settle(0.3)
    (ending,) = watch.of(question.question_id)  # not re-queued, not dead-lettered
    assert ending.topic == LOW
    kept = assert_kept_best(ending.message, 1, f"{kind.value} retries exhausted ({limit})")
    assert kept.regeneration_error.kind is ErrorKind.exhausted
    assert kept.last_error == error  # the LLM's own error is kept with the question
