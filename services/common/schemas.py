"""Every Kafka payload of the pipeline, one pydantic model per topic.

Payloads are JSON, keyed by ``question_id``, validated when produced (``encode``) and when
consumed (``decode``). A message carries everything an operator needs to follow a question:
the attempt (regeneration count), retry counts per error type, the last error, the answer and
score when there is one, and the history of hops with a timestamp each.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from datetime import datetime, timezone
from enum import StrEnum
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

SCHEMA_VERSION = 1


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def normalize_question(question: str) -> str:
    """Case-, width- and whitespace-insensitive form used to identify identical questions."""
    text = unicodedata.normalize("NFKC", question).casefold()
    return re.sub(r"\s+", " ", text).strip()


def question_id_for(question: str) -> str:
    """Stable id of a question: the same normalized question always gets the same id."""
    digest = hashlib.sha256(normalize_question(question).encode("utf-8")).hexdigest()
    return f"q-{digest[:20]}"


class ErrorKind(StrEnum):
    overload = "overload"  # 429 / 503 / other 5xx / timeouts / refused connections
    quota = "quota"  # 402 and 429 insufficient_quota
    client = "client"  # other 4xx: unrecoverable
    poison = "poison"  # a payload that failed validation
    exhausted = "exhausted"  # retries used up
    internal = "internal"  # a bug or unexpected failure in a stage
    stuck = "stuck"  # not terminal within Policies.max_open_seconds (the persister's sweeper)


class Stage(StrEnum):
    """Where a question is; the last four are terminal or about to be."""

    queued = "queued"
    generating = "generating"
    retrying_overload = "retrying-overload"
    retrying_quota = "retrying-quota"
    scoring = "scoring"
    regenerating = "regenerating"
    validated = "validated"
    low_quality = "low_quality"
    failed = "failed"


TERMINAL_STAGES = frozenset({Stage.validated, Stage.low_quality, Stage.failed})


class ErrorInfo(BaseModel):
    kind: ErrorKind
    status_code: int | None = None
    message: str = ""
    retry_after_seconds: float | None = None


class Hop(BaseModel):
    """One step of a question's journey, as shown by ``/status`` and the dashboard."""

    stage: Stage
    topic: str | None = None
    at: datetime = Field(default_factory=utcnow)
    attempt: int = 0
    error: ErrorInfo | None = None
    score: float | None = None
    delay_seconds: float | None = None
    note: str | None = None


class RetryCounts(BaseModel):
    overload: int = 0
    quota: int = 0


class _Payload(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=False)

    schema_version: Literal[1] = SCHEMA_VERSION
    question_id: str = Field(min_length=1, max_length=64)


class QuestionMessage(_Payload):
    """questions-pending: a new question, an error retry, or a regeneration request."""

    question: str = Field(min_length=1)
    reference_answer: str | None = None
    attempt: int = Field(default=0, ge=0, description="Regenerations so far (0 = first answer).")
    retries: RetryCounts = Field(default_factory=RetryCounts)
    last_error: ErrorInfo | None = None
    previous_answer: str | None = None
    previous_score: float | None = None
    submitted_at: datetime = Field(default_factory=utcnow)
    # Stage name -> when the question entered it, for per-stage latency.
    timestamps: dict[str, datetime] = Field(default_factory=dict)
    hops: list[Hop] = Field(default_factory=list)

    def advance(
        self, hop: Hop, into: type[Q] | None = None, *, keep_entry_time: bool = False, **fields: Any
    ) -> Q:
        """The message that carries this question on to ``hop``'s stage: the one way to build a next hop.

        It is an ``into`` (default ``QuestionMessage``) with every field it shares with this
        message, ``hop`` appended to the hops, the time the question entered ``hop.stage``
        stamped (an earlier stamp of that stage is kept with ``keep_entry_time``), and ``fields``
        (what the stage adds: an answer, an error, a retry count) set last.
        """
        model = into or QuestionMessage
        shared = set(model.model_fields).intersection(type(self).model_fields) - {"timestamps", "hops"}
        stamps = (
            {hop.stage.value: hop.at, **self.timestamps}
            if keep_entry_time
            else {**self.timestamps, hop.stage.value: hop.at}
        )
        data = self.model_dump(include=shared)
        data.update(timestamps=stamps, hops=[*self.hops, hop], **fields)
        return model(**data)  # type: ignore[return-value]


Q = TypeVar("Q", bound=QuestionMessage)


class LLMAnswer(QuestionMessage):
    """llm-responses-success: the LLM answered (HTTP 200)."""

    answer: str
    model: str
    backend: str
    llm_latency_ms: float = Field(ge=0)


class LLMError(QuestionMessage):
    """llm-responses-error-overload and llm-responses-error-quota."""

    error: ErrorInfo
    model: str | None = None
    backend: str | None = None


class DelayedRetry(QuestionMessage):
    """A retry waiting in a delay topic until ``due_at``."""

    due_at: datetime
    delay_seconds: float = Field(ge=0)


class ScoredAnswer(LLMAnswer):
    """validated-responses and low-quality-responses."""

    score: float | None = Field(description="BERTScore F1 (rescaled as documented); None = unscored")
    threshold: float
    scored_at: datetime = Field(default_factory=utcnow)
    scores: list[float] = Field(default_factory=list, description="Score of every attempt so far.")


class DeadLetter(_Payload):
    """questions-dead-letter: where a question ends when it cannot be answered."""

    question_id: str = Field(min_length=1, max_length=64)
    reason: str
    error: ErrorInfo
    source_topic: str
    message: QuestionMessage | None = Field(
        default=None, description="The last valid message, when there was one."
    )
    raw: str | None = Field(default=None, description="The undecodable bytes, base64, for poison.")
    failed_at: datetime = Field(default_factory=utcnow)


M = TypeVar("M", bound=BaseModel)


class PoisonMessage(ValueError):
    """A payload that cannot be decoded or does not validate against its topic's model."""


def encode(message: BaseModel) -> bytes:
    """Validate (by re-parsing) and serialize: an invalid message is never produced."""
    data = message.model_dump_json().encode("utf-8")
    type(message).model_validate_json(data)
    return data


def decode(model: type[M], raw: bytes | None) -> M:
    if raw is None:
        raise PoisonMessage("empty payload (tombstone)")
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ())) or "payload"
        raise PoisonMessage(f"{where}: {first.get('msg')}") from exc
    except (UnicodeDecodeError, ValueError) as exc:
        raise PoisonMessage(f"undecodable payload: {exc}") from exc


def _topic_models() -> dict[str, type[_Payload]]:
    from services.common import topics

    return {
        topics.QUESTIONS_PENDING.name: QuestionMessage,
        topics.LLM_SUCCESS.name: LLMAnswer,
        topics.LLM_OVERLOAD.name: LLMError,
        topics.LLM_QUOTA.name: LLMError,
        topics.VALIDATED.name: ScoredAnswer,
        topics.LOW_QUALITY.name: ScoredAnswer,
        topics.DEAD_LETTER.name: DeadLetter,
        topics.QUOTA_DELAY.name: DelayedRetry,
    }


def model_for_topic(topic: str) -> type[_Payload]:
    """The payload model of a topic (delay levels included)."""
    if topic.startswith("retry-overload-delay-"):
        return DelayedRetry
    return _topic_models()[topic]
