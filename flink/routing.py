"""Where a scored answer goes next: pure functions of the answer, its score and the policies.

- score > threshold                            -> validated-responses (ScoredAnswer)
- score <= threshold, attempt < max_regenerations -> questions-pending (QuestionMessage with
  attempt + 1, previous_answer and previous_score set, a ``regenerating`` hop appended)
- score <= threshold, regenerations used up    -> low-quality-responses (ScoredAnswer); the
  question keeps its best answer (``best``), which the persister stores, not necessarily the last
- no reference to score against (score None)   -> validated-responses, ``score=None`` and a hop
  note saying it was not scored (the policy of flink/SCORING.md: never a silent pass, never a
  crash, and the user still gets the answer).

Every scored answer updates ``best``, the best-scored answer of the question so far, carried in
the message from one regeneration to the next (``services/common/endings.py`` keeps it when a
regeneration's LLM call fails for good).

Nothing here touches Kafka, Flink or the model; the job calls these functions per record.
"""

from __future__ import annotations

import math
from datetime import datetime
from collections.abc import Mapping
from functools import lru_cache
from typing import NamedTuple

from services.common import topics
from services.common.schemas import (
    BestAnswer,
    Hop,
    LLMAnswer,
    QuestionMessage,
    ScoredAnswer,
    Stage,
    question_key,
    question_key_of,
    utcnow,
)
from services.common.settings import Policies

UNSCORED_NOTE = "unscored: no reference answer in the message nor in the knowledge base"


class Routing(NamedTuple):
    """The output topic and the message to produce to it (unpacks as ``topic, message``)."""

    topic: str
    message: ScoredAnswer | QuestionMessage


def scoring_reference(
    answer: QuestionMessage, knowledge_base: Mapping[str, str] | None = None
) -> str | None:
    """The reference to score against: the message's own, else the knowledge base's, else None.

    ``knowledge_base`` maps question keys (of the question alone) to reference answers; by default the one of
    ``demo_scenarios/`` (loaded once per process), so a demo question asked without a reference
    is still scored against the curated answer.
    """
    if answer.reference_answer and answer.reference_answer.strip():
        return answer.reference_answer
    references = knowledge_base_references() if knowledge_base is None else knowledge_base
    for key in (question_key_of(answer.question_id), question_key(answer.question)):
        found = references.get(key)
        if found and found.strip():
            return found
    return None


@lru_cache(maxsize=1)
def knowledge_base_references() -> Mapping[str, str]:
    """Question id -> reference answer of the demo knowledge base; empty if there is none."""
    from services.common.knowledge_base import default_knowledge_base

    try:
        base = default_knowledge_base()
    except FileNotFoundError:  # an installation without demo_scenarios/
        return {}
    return {question_key(entry.question): entry.reference_answer for entry in base.entries}


def scores_so_far(answer: LLMAnswer) -> list[float]:
    """The scores of the earlier attempts, from the hops this module appended."""
    return answer.earlier_scores()


def best_so_far(answer: LLMAnswer, score: float, at: datetime) -> BestAnswer:
    """The better of the question's best answer so far and this one."""
    this = BestAnswer(
        attempt=answer.attempt, answer=answer.answer, score=score, model=answer.model,
        backend=answer.backend, llm_latency_ms=answer.llm_latency_ms, scored_at=at,
    )
    return this if answer.best is None else answer.best.better(this)


def route(answer: LLMAnswer, score: float | None, policies: Policies) -> Routing:
    """Decide the output of a scored (or unscorable, ``score=None``) answer."""
    now = utcnow()
    threshold = policies.quality_threshold
    if score is None:
        hop = Hop(stage=Stage.validated, topic=topics.VALIDATED.name, at=now,
                  attempt=answer.attempt, note=UNSCORED_NOTE)
        return Routing(topics.VALIDATED.name, _scored(answer, None, threshold, hop))
    if not math.isfinite(score):
        raise ValueError(f"score of {answer.question_id} is not a number: {score}")

    best = best_so_far(answer, score, now)
    if score > threshold:
        hop = Hop(stage=Stage.validated, topic=topics.VALIDATED.name, at=now,
                  attempt=answer.attempt, score=score)
        return Routing(topics.VALIDATED.name, _scored(answer, score, threshold, hop, best))

    if answer.attempt < policies.max_regenerations:
        attempt = answer.attempt + 1
        hop = Hop(
            stage=Stage.regenerating,
            topic=topics.QUESTIONS_PENDING.name,
            at=now,
            attempt=attempt,
            score=score,
            note=f"score {score:.3f} <= {threshold}: regeneration {attempt} of {policies.max_regenerations}",
        )
        question = answer.advance(
            hop,
            attempt=attempt,
            previous_answer=answer.answer,
            previous_score=score,
            best=best,
            # A new generation starts clean; the retry counts stay (a per-question budget).
            last_error=None,
        )
        return Routing(topics.QUESTIONS_PENDING.name, question)

    hop = Hop(
        stage=Stage.low_quality,
        topic=topics.LOW_QUALITY.name,
        at=now,
        attempt=answer.attempt,
        score=score,
        note=f"score {score:.3f} <= {threshold} after {answer.attempt} regenerations"
        + ("" if best.attempt == answer.attempt else f"; kept best answer of attempt {best.attempt} (score {best.score:.3f})"),
    )
    return Routing(topics.LOW_QUALITY.name, _scored(answer, score, threshold, hop, best))


def _scored(
    answer: LLMAnswer, score: float | None, threshold: float, hop: Hop, best: BestAnswer | None = None
) -> ScoredAnswer:
    """This attempt's answer and score, every attempt's score, and the best answer so far."""
    scores = scores_so_far(answer) + ([score] if score is not None else [])
    return answer.advance(
        hop, ScoredAnswer, score=score, threshold=threshold, scored_at=hop.at, scores=scores,
        best=best if best is not None else answer.best,
    )
