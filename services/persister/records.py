"""What the persister writes for one message: pure functions, no database, no Kafka.

A message on ``validated-responses``, ``low-quality-responses`` or ``questions-dead-letter``
becomes an ``Outcome``: the question's terminal state and the rows that go with it (the answer or
the failure, the score of every attempt, the time spent in every stage) and, for a validated
answer, the cache entry. ``writer.py`` applies it in one transaction, once.

The answer stored is the one the question keeps: for ``validated`` the one that passed, for
``low_quality`` the best-scored of its attempts (``ScoredAnswer.best``), not necessarily the last.
Only validated answers are cached: a low-quality one is not served again (asking again is a new run).
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from services.common import topics
from services.common.cache import CachedAnswer
from services.common.schemas import DeadLetter, ErrorInfo, ErrorKind, Hop, ScoredAnswer, Stage, utcnow


@dataclass(frozen=True)
class StageTiming:
    """Time one question spent in one stage of one attempt (``processing_metrics``)."""

    stage: str
    attempt: int
    started_at: datetime
    ended_at: datetime

    @property
    def duration_ms(self) -> float:
        return (self.ended_at - self.started_at) / timedelta(milliseconds=1)


@dataclass(frozen=True)
class AttemptScore:
    """The score of one attempt (``score_history``)."""

    attempt: int
    score: float
    scored_at: datetime
    answer: str | None = None


@dataclass
class Outcome:
    question_id: str
    state: Stage  # validated, low_quality or failed
    question: str
    reference_answer: str | None
    submitted_at: datetime
    terminal_at: datetime
    source: str  # where the message came from: topic[partition]@offset
    answer: ScoredAnswer | None = None
    failure: DeadLetter | None = None
    poison_raw: bytes | None = None
    scores: list[AttemptScore] = field(default_factory=list)
    timings: list[StageTiming] = field(default_factory=list)
    hops: list[Hop] = field(default_factory=list)

    def cache_entry(self) -> CachedAnswer | None:
        """What the API serves as a hit: validated answers only."""
        if self.answer is None or self.state is not Stage.validated:
            return None
        return CachedAnswer(
            question_id=self.question_id,
            question=self.question,
            answer=self.answer.answer,
            score=self.answer.score,
            status=self.state.value,
            model=self.answer.model,
            attempt=self.answer.attempt,
            completed_at=self.terminal_at,
        )


def kept_answer(message: ScoredAnswer, state: Stage) -> ScoredAnswer:
    """The message with the answer the question keeps: for low_quality, its best-scored attempt's."""
    best = message.best
    if state is not Stage.low_quality or best is None:
        return message
    return message.model_copy(
        update={
            "answer": best.answer, "score": best.score, "model": best.model, "backend": best.backend,
            "llm_latency_ms": best.llm_latency_ms,
        }
    )


def outcome_of_answer(message: ScoredAnswer, topic: str, source: str) -> Outcome:
    state = Stage.validated if topic == topics.VALIDATED.name else Stage.low_quality
    terminal_at = message.scored_at
    return Outcome(
        question_id=message.question_id,
        state=state,
        question=message.question,
        reference_answer=message.reference_answer,
        submitted_at=message.submitted_at,
        terminal_at=terminal_at,
        source=source,
        answer=kept_answer(message, state),
        scores=attempt_scores(message),
        timings=stage_timings(message.hops, message.submitted_at, terminal_at),
        hops=list(message.hops),
    )


def outcome_of_dead_letter(letter: DeadLetter, source: str) -> Outcome:
    carried = letter.message
    hops = list(carried.hops) if carried is not None else []
    submitted_at = carried.submitted_at if carried is not None else letter.failed_at
    return Outcome(
        question_id=letter.question_id,
        state=Stage.failed,
        question=carried.question if carried is not None else "",
        reference_answer=carried.reference_answer if carried is not None else None,
        submitted_at=submitted_at,
        terminal_at=letter.failed_at,
        source=source,
        failure=letter,
        # Without the question's own message (a poison forwarded here) there is no journey to time.
        timings=stage_timings(hops, submitted_at, letter.failed_at) if carried is not None else [],
        hops=hops,
    )


def outcome_of_poison_dead_letter(
    key: bytes | None, raw: bytes | None, error: str, topic: str, partition: int, offset: int
) -> Outcome:
    """A dead letter that is itself undecodable: stored as a failure, never sent anywhere again."""
    question_id = _poison_question_id(key, topic, partition, offset)
    now = utcnow()
    source = f"{topic}[{partition}]@{offset}"
    letter = DeadLetter(
        question_id=question_id,
        reason=f"poison message on {topic}: {error}"[:1000],
        error=ErrorInfo(kind=ErrorKind.poison, message=error[:1000]),
        source_topic=topic,
        raw=base64.b64encode(raw or b"").decode("ascii"),
        failed_at=now,
    )
    return Outcome(
        question_id=question_id,
        state=Stage.failed,
        question="",
        reference_answer=None,
        submitted_at=now,
        terminal_at=now,
        source=source,
        failure=letter,
        poison_raw=raw or b"",
    )


def _poison_question_id(key: bytes | None, topic: str, partition: int, offset: int) -> str:
    """The key when it looks like a question id; else one derived from the position (stable on replay)."""
    if key:
        text = key.decode("utf-8", "replace").strip()
        if text.startswith("q-") and 0 < len(text) <= 64 and text.isprintable():
            return text
    return f"poison-{topic}-{partition}-{offset}"[:64]


def attempt_scores(message: ScoredAnswer) -> list[AttemptScore]:
    """Every scored attempt: earlier ones from the ``regenerating`` hops, the last from the message.

    The answer text is kept for the last attempt and for the best one. A regeneration whose LLM
    call failed (``regeneration_error``) has no score of its own: the message's score is the best
    earlier attempt's.
    """
    found: dict[int, AttemptScore] = {}
    for hop in message.hops:
        if hop.stage == Stage.regenerating and hop.score is not None:
            # A regenerating hop carries the new attempt number and the score that caused it.
            attempt = max(hop.attempt - 1, 0)
            found[attempt] = AttemptScore(attempt, hop.score, hop.at)
    texts: dict[int, str] = {}
    if message.regeneration_error is None:
        if message.score is not None:
            found[message.attempt] = AttemptScore(message.attempt, message.score, message.scored_at, message.answer)
    elif message.previous_answer is not None:  # the last scored attempt is the one before the failed regeneration
        texts[message.attempt - 1] = message.previous_answer
    if message.best is not None:
        texts[message.best.attempt] = message.best.answer
    for attempt, text in texts.items():
        earlier = found.get(attempt)
        if earlier is not None and earlier.answer is None:
            found[attempt] = AttemptScore(earlier.attempt, earlier.score, earlier.scored_at, text)
    return [found[k] for k in sorted(found)]


def stage_timings(hops: list[Hop], submitted_at: datetime, terminal_at: datetime) -> list[StageTiming]:
    """Time in each stage: from a hop to the next one; the last stage ends at the terminal time.

    A terminal hop (validated, low_quality, failed) has no duration of its own; the total from
    submission to the terminal state is recorded as stage ``total``.
    """
    ordered = sorted(hops, key=lambda h: h.at)
    timings = []
    for current, following in zip(ordered, ordered[1:] + [None]):
        if current.stage in (Stage.validated, Stage.low_quality, Stage.failed):
            continue
        ended = following.at if following is not None else terminal_at
        if ended >= current.at:
            timings.append(StageTiming(current.stage.value, current.attempt, current.at, ended))
    if terminal_at >= submitted_at:
        timings.append(StageTiming("total", _last_attempt(ordered), submitted_at, terminal_at))
    return timings


def _last_attempt(hops: list[Hop]) -> int:
    return max((h.attempt for h in hops), default=0)
