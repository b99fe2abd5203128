"""What the simulated LLM says: deterministic under a seed, from the knowledge base.

A known question gets one of its paraphrases, chosen by a hash of (seed, question, prompt):
the same prompt always gets the same answer, and a regeneration (whose prompt carries the
previous answer and score) may get another one. A degraded answer is one of the question's
off-topic answers. An unknown question gets a plausible generic answer built from it.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence

from services.common.knowledge_base import KnowledgeBase
from services.common.schemas import normalize_question

_INTERROGATIVE = re.compile(
    r"^(?:what|who|why|how|when|where|which)\s+(?:is|are|was|were|does|do|did|can|should)?\s*"
    r"(?:the|a|an)?\s*",
    re.IGNORECASE,
)

_GENERIC = (
    "{Topic} is best understood through its definition and its purpose: it describes how "
    "something works under specific conditions, and it is commonly used to reason about the "
    "trade-offs involved in practice.",
    "In short, {topic} comes down to a few key principles. The most important is how its parts "
    "interact, and the practical details vary with the context in which it is applied.",
    "The widely accepted answer is that {topic} follows from a small set of well-understood "
    "rules; once those are clear, its common uses and its main limitations follow naturally.",
)

_OFF_TOPIC = (
    "The Eiffel Tower was completed in 1889 and remained the tallest man-made structure in the "
    "world for about forty years.",
    "A good cup of tea depends mostly on the water temperature and on how long the leaves are "
    "left to steep.",
)


def topic_of(question: str) -> str:
    """'What is Apache Kafka?' -> 'Apache Kafka' (or the question when nothing is left)."""
    core = question.strip().rstrip("?.! ")
    topic = _INTERROGATIVE.sub("", core).strip()
    return topic or core or "this question"


class Answerer:
    def __init__(self, knowledge_base: KnowledgeBase, seed: int) -> None:
        self.knowledge_base = knowledge_base
        self.seed = seed

    def _pick(self, options: Sequence[str], *parts: str) -> str:
        digest = hashlib.sha256("\x1f".join((str(self.seed), *parts)).encode("utf-8")).digest()
        return options[int.from_bytes(digest[:8], "big") % len(options)]

    def answer(self, question: str, prompt: str) -> str:
        """A good answer: a paraphrase of the reference, or a generic one for an unknown question."""
        key = normalize_question(question)
        entry = self.knowledge_base.lookup(question)
        if entry is not None:
            return self._pick(entry.paraphrases, "good", key, prompt)
        topic = topic_of(question)
        template = self._pick(_GENERIC, "generic", key, prompt)
        return template.format(topic=topic, Topic=topic[:1].upper() + topic[1:])

    def degraded(self, question: str, prompt: str) -> str:
        """A fluent answer about something else."""
        entry = self.knowledge_base.lookup(question)
        options = entry.degraded if entry is not None else _OFF_TOPIC
        return self._pick(options, "degraded", normalize_question(question), prompt)
