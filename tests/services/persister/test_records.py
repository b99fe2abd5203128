"""From a terminal message to the rows the persister writes (no database)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from services.common import topics
from services.common.schemas import (
    BestAnswer,
    DeadLetter,
    ErrorInfo,
    ErrorKind,
    Hop,
    QuestionMessage,
    ScoredAnswer,
    Stage,
)
from services.persister.records import (
    attempt_scores,
    outcome_of_answer,
    outcome_of_dead_letter,
    outcome_of_poison_dead_letter,
    stage_timings,
)

T0 = datetime(2025, 1, 1, 12, 0, 0, tzinfo=timezone.utc)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def regenerated_answer() -> ScoredAnswer:
    """Attempt 0 scored 0.5, regenerated; attempt 1 scored 0.9 and validated."""
    hops = [
        Hop(stage=Stage.queued, at=at(0)),
        Hop(stage=Stage.generating, at=at(0.1)),
        Hop(stage=Stage.scoring, at=at(1.1)),
        Hop(stage=Stage.regenerating, at=at(1.3), attempt=1, score=0.5),
        Hop(stage=Stage.generating, at=at(1.4), attempt=1),
        Hop(stage=Stage.scoring, at=at(2.4), attempt=1),
        Hop(stage=Stage.validated, at=at(2.6), attempt=1, score=0.9),
    ]
    return ScoredAnswer(
        question_id="q-1", question="What is Kafka?", reference_answer="A log.", attempt=1,
        submitted_at=at(0), hops=hops, answer="A distributed log.", model="sim", backend="gateway",
        llm_latency_ms=1000, score=0.9, threshold=0.75, scored_at=at(2.6), scores=[0.5, 0.9],
    )


def test_every_attempt_has_its_score() -> None:
    scores = attempt_scores(regenerated_answer())
    assert [(s.attempt, s.score) for s in scores] == [(0, 0.5), (1, 0.9)]
    assert scores[1].answer == "A distributed log."


def test_each_stage_lasts_until_the_next_hop_and_the_total_is_kept() -> None:
    message = regenerated_answer()
    timings = {(t.stage, t.attempt): round(t.duration_ms) for t in stage_timings(message.hops, at(0), at(2.6))}
    assert timings == {
        ("queued", 0): 100, ("generating", 0): 1000, ("scoring", 0): 200, ("regenerating", 1): 100,
        ("generating", 1): 1000, ("scoring", 1): 200, ("total", 1): 2600,
    }


def test_a_validated_answer_becomes_a_cache_entry() -> None:
    outcome = outcome_of_answer(regenerated_answer(), topics.VALIDATED.name, "validated-responses[0]@3")
    assert outcome.state is Stage.validated
    entry = outcome.cache_entry()
    assert entry is not None and (entry.answer, entry.score, entry.status) == ("A distributed log.", 0.9, "validated")


def test_low_quality_topic_means_low_quality_and_is_not_cached() -> None:
    outcome = outcome_of_answer(regenerated_answer(), topics.LOW_QUALITY.name, "x")
    assert outcome.state is Stage.low_quality
    assert outcome.cache_entry() is None  # never served as a hit: asking again runs again


def with_best(message: ScoredAnswer, **fields) -> ScoredAnswer:
    best = BestAnswer(attempt=0, answer="A log of records.", score=0.95, model="other", backend="ollama",
                      llm_latency_ms=7.0, scored_at=at(1.2))
    return message.model_copy(update={"best": best, **fields})


def test_a_low_quality_outcome_stores_the_best_answer_and_every_score() -> None:
    message = with_best(regenerated_answer())
    outcome = outcome_of_answer(message, topics.LOW_QUALITY.name, "x")
    kept = outcome.answer
    assert (kept.answer, kept.score, kept.model, kept.backend, kept.llm_latency_ms) == (
        "A log of records.", 0.95, "other", "ollama", 7.0)
    assert kept.attempt == 1  # regenerations used, whichever answer is kept
    assert [(s.attempt, s.score, s.answer) for s in outcome.scores] == [
        (0, 0.5, "A log of records."), (1, 0.9, "A distributed log.")]
    # A validated answer is the one that passed, whatever ``best`` says.
    assert outcome_of_answer(message, topics.VALIDATED.name, "x").answer.answer == "A distributed log."


def test_a_failed_regeneration_has_no_score_of_its_own() -> None:
    """Regeneration 1's call failed: the message's answer and score are attempt 0's, kept."""
    message = with_best(
        regenerated_answer(), answer="A log of records.", score=0.95, previous_answer="A log.",
        regeneration_error=ErrorInfo(kind=ErrorKind.exhausted, message="overload retries exhausted (3)"),
        hops=regenerated_answer().hops[:4],
    )
    outcome = outcome_of_answer(message, topics.LOW_QUALITY.name, "x")
    assert [(s.attempt, s.score) for s in outcome.scores] == [(0, 0.5)]


def test_a_dead_letter_keeps_the_question_and_its_hops() -> None:
    question = QuestionMessage(question_id="q-2", question="Why?", submitted_at=at(0), hops=[Hop(stage=Stage.queued, at=at(0))])
    letter = DeadLetter(
        question_id="q-2", reason="overload retries used up (3)", error=ErrorInfo(kind=ErrorKind.exhausted),
        source_topic=topics.LLM_OVERLOAD.name, message=question, failed_at=at(15),
    )
    outcome = outcome_of_dead_letter(letter, "questions-dead-letter[0]@0")
    assert (outcome.state, outcome.question, outcome.cache_entry()) == (Stage.failed, "Why?", None)
    assert [(t.stage, round(t.duration_ms)) for t in outcome.timings] == [("queued", 15000), ("total", 15000)]


def test_a_poison_dead_letter_gets_a_stable_id() -> None:
    first = outcome_of_poison_dead_letter(None, b"\xff", "undecodable", "questions-dead-letter", 0, 7)
    again = outcome_of_poison_dead_letter(None, b"\xff", "undecodable", "questions-dead-letter", 0, 7)
    assert first.question_id == again.question_id == "poison-questions-dead-letter-0-7"
    keyed = outcome_of_poison_dead_letter(b"q-abc", b"{}", "bad", "questions-dead-letter", 0, 8)
    assert keyed.question_id == "q-abc" and keyed.failure is not None and keyed.failure.error.kind is ErrorKind.poison
