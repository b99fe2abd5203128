"""The routing decision of the score job, on real schema objects and the shared policies."""

from __future__ import annotations

import pytest

from flink.routing import UNSCORED_NOTE, route, scoring_reference
from services.common import topics
from services.common.schemas import (
    Hop,
    LLMAnswer,
    QuestionMessage,
    RetryCounts,
    ScoredAnswer,
    Stage,
    decode,
    encode,
    question_id_for,
)
from services.common.settings import Policies

QUESTION = "What is the capital of France?"
POLICIES = Policies()


def answer(attempt: int = 0, reference: str | None = "Paris is the capital of France.", **extra) -> LLMAnswer:
    return LLMAnswer(
        question_id=question_id_for(QUESTION),
        question=QUESTION,
        reference_answer=reference,
        attempt=attempt,
        answer="The capital of France is Paris.",
        model="qactl-sim",
        backend="gateway",
        llm_latency_ms=12.5,
        hops=[Hop(stage=Stage.queued, topic=topics.QUESTIONS_PENDING.name)],
        **extra,
    )


def roundtrip(topic: str, message):
    """What a consumer of ``topic`` would read: the message validates against its model."""
    from services.common.schemas import model_for_topic

    return decode(model_for_topic(topic), encode(message))


def test_above_threshold_is_validated() -> None:
    topic, message = route(answer(), 0.9, POLICIES)
    assert topic == topics.VALIDATED.name
    assert isinstance(message, ScoredAnswer)
    assert message.score == 0.9 and message.threshold == POLICIES.quality_threshold
    assert message.scores == [0.9]
    assert message.hops[-1].stage == Stage.validated and message.hops[-1].score == 0.9
    assert len(message.hops) == 2
    assert roundtrip(topic, message).score == 0.9


def test_threshold_itself_does_not_validate() -> None:
    topic, message = route(answer(), POLICIES.quality_threshold, POLICIES)
    assert topic == topics.QUESTIONS_PENDING.name


def test_low_score_with_regenerations_left_goes_back_to_pending() -> None:
    original = answer(attempt=1, retries=RetryCounts(overload=2))
    topic, message = route(original, 0.4, POLICIES)
    assert topic == topics.QUESTIONS_PENDING.name
    assert type(message) is QuestionMessage  # no answer fields leak into the question
    assert message.attempt == 2
    assert message.previous_answer == original.answer
    assert message.previous_score == 0.4
    assert message.reference_answer == original.reference_answer
    assert message.retries.overload == 2
    assert message.last_error is None
    hop = message.hops[-1]
    assert (hop.stage, hop.topic, hop.attempt, hop.score) == (
        Stage.regenerating, topics.QUESTIONS_PENDING.name, 2, 0.4)
    assert Stage.regenerating.value in message.timestamps
    assert roundtrip(topic, message).attempt == 2


def test_low_score_after_last_regeneration_is_low_quality_with_every_score() -> None:
    # Walk the real loop: first answer and three regenerations, all scoring low.
    current = answer()
    routed = []
    for score in (0.2, 0.3, 0.4, 0.5):
        topic, message = route(current, score, POLICIES)
        routed.append(topic)
        if topic == topics.QUESTIONS_PENDING.name:
            current = LLMAnswer(**message.model_dump(), answer=f"try {message.attempt}",
                                model="qactl-sim", backend="gateway", llm_latency_ms=1.0)
    assert routed == [topics.QUESTIONS_PENDING.name] * 3 + [topics.LOW_QUALITY.name]
    assert isinstance(message, ScoredAnswer)
    assert message.attempt == POLICIES.max_regenerations
    assert message.scores == [0.2, 0.3, 0.4, 0.5]
    assert message.hops[-1].stage == Stage.low_quality
    assert roundtrip(topic, message).scores == [0.2, 0.3, 0.4, 0.5]


def test_regenerated_answer_that_passes_keeps_the_score_history() -> None:
    topic, question = route(answer(), 0.3, POLICIES)
    regenerated = LLMAnswer(**question.model_dump(), answer="better", model="m", backend="b", llm_latency_ms=1)
    topic, message = route(regenerated, 0.8, POLICIES)
    assert topic == topics.VALIDATED.name
    assert message.scores == [0.3, 0.8] and message.attempt == 1


def test_limit_comes_from_the_policies() -> None:
    strict = Policies(max_regenerations=0, quality_threshold=0.5)
    assert route(answer(), 0.45, strict).topic == topics.LOW_QUALITY.name
    assert route(answer(), 0.55, strict).topic == topics.VALIDATED.name


def test_unscored_answer_is_validated_with_a_note_and_no_score() -> None:
    topic, message = route(answer(reference=None), None, POLICIES)
    assert topic == topics.VALIDATED.name
    assert message.score is None and message.scores == []
    assert message.hops[-1].note == UNSCORED_NOTE
    assert roundtrip(topic, message).score is None


def test_non_finite_score_is_refused() -> None:
    with pytest.raises(ValueError):
        route(answer(), float("nan"), POLICIES)


def test_reference_comes_from_the_message_first() -> None:
    kb = {question_id_for(QUESTION): "From the knowledge base."}
    assert scoring_reference(answer(), kb) == "Paris is the capital of France."


def test_reference_falls_back_to_the_knowledge_base_by_question_id() -> None:
    kb = {question_id_for(QUESTION): "From the knowledge base."}
    assert scoring_reference(answer(reference=None), kb) == "From the knowledge base."
    assert scoring_reference(answer(reference="   "), kb) == "From the knowledge base."


def test_unknown_question_without_reference_has_none() -> None:
    assert scoring_reference(answer(reference=None), {}) is None


def test_default_knowledge_base_supplies_references_for_its_questions() -> None:
    from services.common.knowledge_base import default_knowledge_base

    entry = default_knowledge_base().entries[0]
    message = QuestionMessage(question_id=question_id_for(entry.question), question=entry.question)
    assert scoring_reference(message) == entry.reference_answer


def regenerate(message: QuestionMessage, text: str, model: str = "qactl-sim") -> LLMAnswer:
    """The next attempt's answer, as the llm-consumer would produce it."""
    return LLMAnswer(**message.model_dump(), answer=text, model=model, backend="gateway", llm_latency_ms=2.0)


def test_the_best_answer_is_carried_through_regenerations_and_kept_at_the_end() -> None:
    current = answer()
    texts = ["first", "second", "third", "fourth"]
    for number, score in enumerate((0.3, 0.5, 0.2, 0.45)):
        topic, message = route(current, score, POLICIES)
        if topic == topics.QUESTIONS_PENDING.name:
            assert message.best is not None and message.best.score == max((0.3, 0.5, 0.2, 0.45)[: number + 1])
            current = regenerate(roundtrip(topic, message), texts[number + 1], model=f"m{number + 1}")
    assert topic == topics.LOW_QUALITY.name and isinstance(message, ScoredAnswer)
    # The last attempt's own answer and score, every score, and the best answer to keep.
    assert (message.answer, message.score, message.scores) == ("fourth", 0.45, [0.3, 0.5, 0.2, 0.45])
    best = roundtrip(topic, message).best
    assert (best.attempt, best.answer, best.score, best.model) == (1, "second", 0.5, "m1")
    assert message.hops[-1].note.endswith("kept best answer of attempt 1 (score 0.500)")


def test_a_last_answer_that_is_the_best_is_kept_without_a_note() -> None:
    topic, question = route(answer(), 0.2, POLICIES)
    strict = Policies(max_regenerations=1)
    topic, message = route(regenerate(question, "better"), 0.4, strict)
    assert topic == topics.LOW_QUALITY.name
    assert (message.best.attempt, message.best.answer) == (1, "better")
    assert "kept" not in message.hops[-1].note


def test_a_tie_keeps_the_earlier_answer() -> None:
    topic, question = route(answer(), 0.4, POLICIES)
    topic, question = route(regenerate(question, "as good"), 0.4, POLICIES)
    assert (question.best.attempt, question.best.answer) == (0, "The capital of France is Paris.")


def test_a_validated_answer_is_its_own_best() -> None:
    topic, question = route(answer(), 0.3, POLICIES)
    topic, message = route(regenerate(question, "right"), 0.9, POLICIES)
    assert topic == topics.VALIDATED.name and (message.best.attempt, message.best.answer) == (1, "right")


def test_the_knowledge_base_is_found_for_a_later_run_and_a_question_asked_with_a_blank_reference() -> None:
    kb = {question_id_for(QUESTION): "From the knowledge base."}
    later_run = answer(reference=None).model_copy(update={"question_id": question_id_for(QUESTION, run=3)})
    assert scoring_reference(later_run, kb) == "From the knowledge base."
