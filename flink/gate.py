"""The quality gate's logic, free of Flink: decode a batch, score it in one pass, route each answer.

The Flink operator (flink/job.py) only buffers records and hands batches to ``QualityGate``, so
everything here runs and is tested without a cluster.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from pydantic import BaseModel

from services.common import topics
from services.common.schemas import (
    DeadLetter,
    ErrorInfo,
    ErrorKind,
    LLMAnswer,
    PoisonMessage,
    decode,
    encode,
)
from services.common.settings import Policies, QactlSettings

log = logging.getLogger(__name__)

Routed = tuple[str, str, str]  # (topic, question_id, JSON payload)


class JobConfig(BaseModel):
    """What the job needs from the one configuration; passed as an argument at submission."""

    bootstrap_servers: str
    redis_url: str | None
    policies: Policies

    @classmethod
    def from_settings(cls, settings: QactlSettings) -> "JobConfig":
        return cls(
            bootstrap_servers=settings.kafka.bootstrap,
            redis_url=settings.redis.connection_url,
            policies=settings.policies,
        )


class QualityGate:
    def __init__(self, config: JobConfig, scorer=None, status=None) -> None:
        from flink.scoring import get_scorer

        self.config = config
        self.scorer = scorer if scorer is not None else get_scorer()
        self.status = status if status is not None else _status_tracker(config.redis_url)

    def process_batch(self, raws: Sequence[str]) -> list[Routed]:
        """Decode, score every decodable answer in one batch, and route each of them."""
        from flink.routing import route, scoring_reference

        routed: list[Routed] = []
        answers: list[LLMAnswer] = []
        for raw in raws:
            try:
                answers.append(decode(LLMAnswer, raw.encode("utf-8")))
            except PoisonMessage as exc:
                routed.append(_poison(raw, exc))
        references = [scoring_reference(a) for a in answers]
        scorable = [i for i, ref in enumerate(references) if ref is not None]
        scores: list[float | None] = [None] * len(answers)
        if scorable:
            batch = self.scorer.score([answers[i].answer for i in scorable], [references[i] for i in scorable])
            for i, score in zip(scorable, batch):
                scores[i] = score
        for answer, score in zip(answers, scores):
            topic, message = route(answer, score, self.config.policies)
            self._record(answer.question_id, message, topic)
            routed.append((topic, answer.question_id, encode(message).decode("utf-8")))
        return routed

    def _record(self, question_id: str, message: BaseModel, topic: str) -> None:
        if self.status is None:
            return
        hops = getattr(message, "hops", None)
        if hops:
            self.status.record(question_id, hops[-1])

    def close(self) -> None:
        if self.status is not None:
            self.status.close()


def _poison(raw: str, error: PoisonMessage) -> Routed:
    import base64

    letter = DeadLetter(
        question_id=_question_id_of(raw),
        reason=f"poison message on {topics.LLM_SUCCESS.name}: {error}",
        error=ErrorInfo(kind=ErrorKind.poison, message=str(error)),
        source_topic=topics.LLM_SUCCESS.name,
        raw=base64.b64encode(raw.encode("utf-8", "replace")).decode("ascii"),
    )
    log.warning("poison on %s: %s", topics.LLM_SUCCESS.name, error)
    return topics.DEAD_LETTER.name, letter.question_id, encode(letter).decode("utf-8")


def _question_id_of(raw: str) -> str:
    """Best effort: the id of a malformed message if it has one, so the dead letter can be traced."""
    import json

    try:
        value = json.loads(raw).get("question_id")
    except (ValueError, AttributeError):
        value = None
    return value[:64] if isinstance(value, str) and value else "unknown"


def _status_tracker(redis_url: str | None):
    if redis_url is None:
        return None
    from services.common.status import StatusTracker

    return StatusTracker.from_url(redis_url)


__all__ = ["JobConfig", "QualityGate", "Routed"]
