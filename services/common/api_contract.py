"""The storage API's HTTP contract: every request and response body, one pydantic model each.

The server (``services/storage_api``) documents its endpoints with these models in
``/openapi.json``; its replies are built for speed by ``replies.py``, and a test checks that each
kind of reply validates against its model and says exactly what the model says. The client
(``qactl/client/api.py``) parses every answer with them.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, PlainSerializer

from services.common.schemas import Hop, Stage

# Datetimes go on the wire as Python's ``isoformat`` ("+00:00"), as the server has always sent them.
WireDatetime = Annotated[datetime, PlainSerializer(lambda moment: moment.isoformat(), when_used="json")]


def status_url(question_id: str) -> str:
    """Where ``POST /query`` tells the asker to follow an accepted question."""
    return f"/status/{question_id}"


class QueryRequest(BaseModel):
    """The body of ``POST /query``."""

    model_config = ConfigDict(extra="forbid", strict=True)

    question: str = Field(description="The question; not empty, at most `api.max_question_chars` characters.")
    reference_answer: str | None = Field(
        default=None, description="An answer to score against (BERTScore); optional."
    )


class AnsweredReply(BaseModel):
    """``POST /query`` 200: the question was answered before; the stored answer."""

    question_id: str
    status: str = Field(description="Terminal state: validated or low_quality.")
    answer: str
    score: float | None
    model: str | None
    attempt: int
    completed_at: WireDatetime
    source: Literal["cache", "database"]


class AcceptedReply(BaseModel):
    """``POST /query`` 202: accepted and in Kafka; follow it at ``status_url``."""

    question_id: str
    status: Literal["queued"] = Stage.queued.value
    status_url: str
    coalesced: bool = Field(description="True when it joined the identical question already in flight.")


class ErrorReply(BaseModel):
    """Every 4xx and 5xx: a stable error code and a sentence that says what is wrong."""

    error: str
    detail: str


class StatusReply(BaseModel):
    """``GET /status/{question_id}``: where a question is; fields without a value are left out."""

    question_id: str
    state: Stage
    terminal: bool
    hops: list[Hop] = Field(default_factory=list, description="Oldest first.")
    question: str | None = None
    submitted_at: WireDatetime | None = None
    updated_at: WireDatetime | None = None
    terminal_at: WireDatetime | None = Field(default=None, description="Set once PostgreSQL holds the terminal state.")
    answer: str | None = None
    score: float | None = None
    model: str | None = None
    attempt: int | None = None
    reason: str | None = None
    warning: str | None = None

    def wire(self) -> dict[str, object]:
        """The JSON body, as sent: absent values left out."""
        return self.model_dump(mode="json", exclude_none=True)


class DependencyHealth(BaseModel):
    ok: bool
    detail: str
    required: bool = Field(description="Whether questions can be accepted without it.")


class HealthReply(BaseModel):
    """``GET /health``: 200 when questions are accepted (``ok`` or ``degraded``), else 503."""

    ok: bool
    status: Literal["ok", "degraded", "unavailable"]
    summary: str
    dependencies: dict[str, DependencyHealth]
