"""Demo cases are data: every shipped case parses, and a bad case says what is wrong."""

from __future__ import annotations

from pathlib import Path

import pytest

from qactl.demo.cases import CASE_ORDER, PathStep, case_names, load_case, load_cases
from qactl.errors import ConfigError
from services.common.knowledge_base import default_knowledge_base
from services.common.schemas import Stage


def test_the_plan_cases_and_the_extra_ones_ship() -> None:
    names = case_names()
    assert names[: len(CASE_ORDER)] == list(CASE_ORDER)
    assert {"low-quality", "exhausted"} <= set(names)


@pytest.mark.parametrize("name", case_names())
def test_every_shipped_case_is_valid_and_uses_known_questions(name: str) -> None:
    case = load_case(name)
    assert case.name == name
    for ask in case.asks:
        # The built-in gateway answers knowledge-base questions well: the cases rely on that.
        assert default_knowledge_base().lookup(ask.question) is not None
        assert ask.reference
        if ask.expect.response == "accepted":
            assert ask.expect.path[0].label == "queued @ questions-pending"


def test_each_case_uses_its_own_question() -> None:
    """Distinct questions keep each case's narration, statistics and fault rules its own."""
    owners: dict[str, str] = {}
    for case in load_cases(["all"]):
        for question in case.questions:
            assert owners.setdefault(question, case.name) == case.name


def test_all_expands_in_plan_order() -> None:
    assert [c.name for c in load_cases(["all"])][:5] == list(CASE_ORDER)
    assert [c.name for c in load_cases(["quota", "normal", "quota"])] == ["quota", "normal"]


def test_path_steps_from_text_and_mappings() -> None:
    step = PathStep.model_validate("retrying-overload @ retry-overload-delay-1")
    assert (step.stage, step.topic) == (Stage.retrying_overload, "retry-overload-delay-1")
    checked = PathStep.model_validate({"hop": "validated @ validated-responses", "score": "above", "attempt": 1})
    assert (checked.stage, checked.score, checked.attempt) == (Stage.validated, "above", 1)
    assert PathStep.model_validate("failed").topic is None


def test_a_fault_aims_at_the_case_question_unless_it_says_otherwise() -> None:
    case = load_case("overload")
    (fault,) = case.asks[0].faults
    assert fault.rule(case.asks[0].question) == {"kind": "503", "count": 2, "match": case.asks[0].question}


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "case.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("name: x\ntitle: t\nasks: [", "not valid YAML"),
        ("name: x\ntitle: t\nasks: []", "asks"),
        (
            "name: x\ntitle: t\nasks:\n  - question: Not in the knowledge base?\n    expect: {terminal: validated, path: [validated @ validated-responses]}\n",
            "give its reference_answer",
        ),
        (
            "name: x\ntitle: t\nasks:\n  - question: What is Redis?\n    expect: {terminal: failed, path: [queued @ questions-pending, validated @ validated-responses]}\n",
            "not in terminal failed",
        ),
        (
            "name: x\ntitle: t\nasks:\n  - question: What is Redis?\n    expect: {terminal: validated}\n",
            "needs its expected path",
        ),
        (
            "name: x\ntitle: t\nasks:\n  - question: What is Redis?\n    faults: [{kind: '503'}]\n    expect: {response: answered, terminal: validated}\n",
            "exactly one of count or rate",
        ),
        (
            "name: x\ntitle: t\nasks:\n  - question: What is Redis?\n    expect: {response: answered, terminal: validated, extra: 1}\n",
            "extra",
        ),
    ],
)
def test_an_invalid_case_is_refused_with_the_reason(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_case(write(tmp_path, text))


def test_an_unknown_case_lists_the_known_ones() -> None:
    with pytest.raises(ConfigError, match="no demo case 'nosuch'.*normal"):
        load_case("nosuch")
