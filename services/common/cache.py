"""The answer cache in Redis: written by the persister, read by the storage API.

One key per question id holding the stored outcome as JSON. The cache is only a shortcut:
PostgreSQL is the truth, so a lost or expired entry costs one database read, never an answer.
"""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field

from services.common.schemas import utcnow

CACHE_PREFIX = "qactl:answer:"


def cache_key(question_id: str) -> str:
    return f"{CACHE_PREFIX}{question_id}"


class CachedAnswer(BaseModel):
    """What a hit answers with: the stored answer, its score and its terminal state."""

    question_id: str
    question: str
    answer: str
    score: float | None = None
    status: str = Field(description="Terminal state: validated or low_quality.")
    model: str | None = None
    attempt: int = 0
    completed_at: datetime = Field(default_factory=utcnow)

    def to_bytes(self) -> bytes:
        return self.model_dump_json().encode("utf-8")

    @classmethod
    def from_bytes(cls, raw: bytes) -> "CachedAnswer":
        return cls.model_validate_json(raw)
