"""Every Kafka payload of the pipeline, one pydantic model per topic.

Payloads are JSON, keyed by ``question_id``, validated when produced (``encode``) and when
consumed (``decode``). A message carries everything an operator needs to follow a question:
the attempt (regeneration count), retry counts per error type, the last error, the answer and
score when there is one, the best answer scored so far, and the history of hops with a timestamp
each.

Identity: a question is its normalized text *and* its reference answer (``question_key``); each
run of it through the pipeline has its own question id (``question_id_for``): the first run's id
is the key, a later run (asked again after it ended ``low_quality`` or ``failed``) is
``<key>-r<n>``. So one question id ends exactly once.
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


def normalize_reference(reference: str) -> str:
    """Width- and whitespace-insensitive form of a reference answer (its case is kept: it is scored)."""
    return re.sub(r"\s+", " ", unicodedata.normalize("NFKC", reference)).strip()


def question_key(question: str, reference_answer: str | None = None) -> str:
    """What identifies a question as asked: its normalized text and its reference answer.

    Two asks with the same question and reference are the same question (they share answers);
    a different reference is a different question. Without a reference (or a blank one) the key
    is the question's alone, the id questions had before references counted.
    """
    text = normalize_question(question)
    reference = normalize_reference(reference_answer) if reference_answer else ""
    if reference:
        # U+001F cannot be in either normalized text (it is whitespace, folded to a space).
        text = f"{text}\x1f{reference}"
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
    return f"q-{digest[:20]}"


_RUN_SUFFIX = re.compile(r"-r([0-9]+)$")


def run_question_id(key: str, run: int) -> str:
    """The question id of run ``run`` (1 = the first) of the question ``key``."""
    if run < 1:
        raise ValueError(f"run numbers start at 1, not {run}")
    return key if run == 1 else f"{key}-r{run}"


def question_key_of(question_id: str) -> str:
    """The question key of a run's question id (the id itself for a first run, or an id of another form)."""
    return _RUN_SUFFIX.sub("", question_id)


def run_of(question_id: str) -> int:
    """The run number of a question id (1 for a first run)."""
    found = _RUN_SUFFIX.search(question_id)
    return int(found.group(1)) if found else 1


def question_id_for(question: str, reference_answer: str | None = None, run: int = 1) -> str:
    """The id of run ``run`` of a question: the same question and reference always get the same ids."""
    return run_question_id(question_key(question, reference_answer), run)


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


class BestAnswer(BaseModel):
    """The best-scored answer of a question so far: what it keeps if it ends ``low_quality``."""

    attempt: int = Field(ge=0, description="The attempt that gave it (0 = the first answer).")
    answer: str
    score: float
    model: str
    backend: str
    llm_latency_ms: float = Field(ge=0)
    scored_at: datetime = Field(default_factory=utcnow)

    def better(self, later: "BestAnswer | None") -> "BestAnswer":
        """``later`` if it scores higher than this one, else this one (a tie keeps the earlier)."""
        return later if later is not None and later.score > self.score else self


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
    best: BestAnswer | None = Field(
        default=None, description="The best scored answer so far; kept if the question ends low_quality."
    )
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

    def earlier_scores(self) -> list[float]:
        """The scores of the attempts before this one, from their ``regenerating`` hops."""
        return [h.score for h in self.hops if h.stage == Stage.regenerating and h.score is not None]


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
    regeneration_error: ErrorInfo | None = Field(
        default=None,
        description="Set when a regeneration's LLM call failed for good: the question ends low_quality "
        "and answer/score are those of the best earlier attempt (``best``), not of this attempt.",
    )


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
