"""The answer cache in Redis: written by the persister, read by the storage API.

One key per question (``question_key``: the question and its reference, whichever run answered
it) holding its validated answer as JSON; low-quality and failed outcomes are never cached, so
asking again runs the pipeline again. The cache is only a shortcut: PostgreSQL is the truth, so a
lost or expired entry costs one database read, never an answer.
"""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field

from services.common.schemas import question_key_of, utcnow

# v2: keyed by question key, validated answers only (v1 held low-quality answers too, by question id).
CACHE_PREFIX = "qactl:answer:v2:"


def cache_key(question_id: str) -> str:
    """The entry of a question: the same for every run of it (a run's id or the question key)."""
    return f"{CACHE_PREFIX}{question_key_of(question_id)}"


class CachedAnswer(BaseModel):
    """What a hit answers with: the stored answer, its score and its terminal state."""

    question_id: str
    question: str
    answer: str
    score: float | None = None
    status: str = Field(description="Terminal state: validated (what is cached and served as a hit).")
    model: str | None = None
    attempt: int = 0
    completed_at: datetime = Field(default_factory=utcnow)

    def to_bytes(self) -> bytes:
        return self.model_dump_json().encode("utf-8")

    @classmethod
    def from_bytes(cls, raw: bytes) -> "CachedAnswer":
        return cls.model_validate_json(raw)
