"""The knowledge base of questions and reference answers kept as data in ``demo_scenarios/``.

The built-in LLM gateway answers from it (good answers are paraphrases of the reference,
degraded ones are off-topic), the demo cases pick their questions from it, and the Flink
scorer is calibrated on it.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import yaml
from pydantic import BaseModel, Field

from services.common.schemas import normalize_question

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_PATH = REPO_ROOT / "demo_scenarios" / "knowledge_base.yaml"


class KnowledgeEntry(BaseModel):
    question: str = Field(min_length=1)
    reference_answer: str = Field(min_length=1)
    paraphrases: list[str] = Field(min_length=1, description="Good answers: close paraphrases.")
    degraded: list[str] = Field(min_length=1, description="Fluent but off-topic answers.")


class KnowledgeBase(BaseModel):
    version: int = 1
    entries: list[KnowledgeEntry]

    def model_post_init(self, __context: object) -> None:
        self._by_question = {normalize_question(e.question): e for e in self.entries}

    def lookup(self, question: str) -> KnowledgeEntry | None:
        """The entry of a question, compared after normalization (case, width, whitespace).

        A question that starts with a known one ("What is Apache Flink? (run 7)") gets that
        entry too, as an LLM would answer the question and ignore the tag; the longest match wins.
        """
        normalized = normalize_question(question)
        exact = self._by_question.get(normalized)
        if exact is not None:
            return exact
        prefixes = [known for known in self._by_question if normalized.startswith(known)]
        return self._by_question[max(prefixes, key=len)] if prefixes else None

    def __len__(self) -> int:
        return len(self.entries)


def load_knowledge_base(path: Path | str | None = None) -> KnowledgeBase:
    """Parse and validate a knowledge base file (the project's own by default)."""
    source = Path(path) if path is not None else DEFAULT_PATH
    with source.open(encoding="utf-8") as handle:
        return KnowledgeBase.model_validate(yaml.safe_load(handle))


@lru_cache(maxsize=1)
def default_knowledge_base() -> KnowledgeBase:
    """The project's knowledge base, parsed once per process."""
    return load_knowledge_base(DEFAULT_PATH)
