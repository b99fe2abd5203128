"""The knowledge base file is valid, varied, and found by normalized question."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.common.knowledge_base import default_knowledge_base, load_knowledge_base
from services.common.schemas import normalize_question


def test_every_entry_has_three_paraphrases_and_two_degraded_answers() -> None:
    kb = default_knowledge_base()
    assert len(kb) >= 30
    for entry in kb.entries:
        assert len(entry.paraphrases) == 3, entry.question
        assert len(entry.degraded) == 2, entry.question
        assert entry.reference_answer not in entry.degraded


def test_questions_are_unique_after_normalization() -> None:
    kb = default_knowledge_base()
    normalized = [normalize_question(e.question) for e in kb.entries]
    assert len(set(normalized)) == len(normalized)


def test_lookup_ignores_case_width_and_whitespace() -> None:
    kb = default_knowledge_base()
    entry = kb.lookup("  what  is APACHE kafka?\n")
    assert entry is not None and entry.question == "What is Apache Kafka?"
    assert kb.lookup("What is the airspeed of an unladen swallow?") is None


def test_invalid_file_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "kb.yaml"
    bad.write_text("entries:\n  - question: q\n    reference_answer: r\n    paraphrases: []\n    degraded: [x]\n")
    with pytest.raises(ValueError):
        load_knowledge_base(bad)


def test_a_tagged_question_gets_the_entry_it_starts_with():
    kb = load_knowledge_base()
    entry = kb.entries[0]
    assert kb.lookup(f"{entry.question.upper()}  (run 7)") is entry
    assert kb.lookup(f"Tell me: {entry.question}") is None
