"""How a question ends when an LLM call of it fails for good: the dead letter, or its best answer.

The llm-consumer (an unrecoverable 4xx) and the retry services (retries used up, a Retry-After
over the quota cap) end a question through ``failure_ending``, so the rule is written once:

- a question with no scored answer yet (its first answer failed) ends ``failed``: a
  ``DeadLetter`` to ``questions-dead-letter`` with the reason;
- a regeneration that failed does not throw away what the question already has: it ends
  ``low_quality`` with the best answer scored so far, a ``ScoredAnswer`` to
  ``low-quality-responses`` whose hop says "regeneration N failed: <reason>; kept best answer
  (score x)".
"""

from __future__ import annotations

from datetime import datetime
from typing import NamedTuple

from services.common import topics
from services.common.schemas import DeadLetter, ErrorInfo, Hop, QuestionMessage, ScoredAnswer, Stage, utcnow


class Ending(NamedTuple):
    """The topic, the message to produce there, and the terminal hop it carries."""

    topic: str
    message: DeadLetter | ScoredAnswer
    hop: Hop


def kept_best_note(attempt: int, reason: str, score: float) -> str:
    return f"regeneration {attempt} failed: {reason}; kept best answer (score {score:.3f})"


def failure_ending(
    question: QuestionMessage,
    reason: str,
    error: ErrorInfo,
    source_topic: str,
    threshold: float,
    now: datetime | None = None,
    last_error: ErrorInfo | None = None,
) -> Ending:
    """End ``question``, whose LLM call failed for good with ``error`` because of ``reason``.

    ``last_error`` is the error the question carries on (default ``error``): the retry services
    end with an ``exhausted`` error but keep the last LLM error in the message.
    """
    now = now or utcnow()
    carried_error = last_error or error
    best = question.best
    if best is None:
        hop = Hop(stage=Stage.failed, topic=topics.DEAD_LETTER.name, at=now, attempt=question.attempt,
                  error=error, note=reason)
        letter = DeadLetter(
            question_id=question.question_id,
            reason=reason,
            error=error,
            source_topic=source_topic,
            message=question.advance(hop, QuestionMessage, last_error=carried_error),
            failed_at=now,
        )
        return Ending(topics.DEAD_LETTER.name, letter, hop)
    hop = Hop(
        stage=Stage.low_quality,
        topic=topics.LOW_QUALITY.name,
        at=now,
        attempt=question.attempt,
        error=error,
        note=kept_best_note(question.attempt, reason, best.score),
    )
    kept = question.advance(
        hop,
        ScoredAnswer,
        answer=best.answer,
        model=best.model,
        backend=best.backend,
        llm_latency_ms=best.llm_latency_ms,
        score=best.score,
        threshold=threshold,
        scored_at=now,
        scores=question.earlier_scores(),
        regeneration_error=error,
        last_error=carried_error,
    )
    return Ending(topics.LOW_QUALITY.name, kept, hop)
