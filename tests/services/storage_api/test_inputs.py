"""POST /query input checks, without a server: every refusal says what is wrong."""

from __future__ import annotations

import json

import pytest

from services.common.settings import ApiSettings
from services.storage_api.inputs import BadInput, parse_query

LIMITS = ApiSettings(max_body_bytes=1024, max_question_chars=50)


def refused(body: bytes) -> BadInput:
    with pytest.raises(BadInput) as caught:
        parse_query(body, LIMITS)
    return caught.value


def test_a_question_with_a_reference_is_accepted() -> None:
    request = parse_query(json.dumps({"question": "What is Kafka?", "reference_answer": "A log."}).encode(), LIMITS)
    assert request.question == "What is Kafka?"
    assert request.reference_answer == "A log."


def test_a_blank_reference_counts_as_none() -> None:
    assert parse_query(b'{"question": "q?", "reference_answer": "  "}', LIMITS).reference_answer is None


@pytest.mark.parametrize(
    ("body", "status", "code", "says"),
    [
        (b"", 400, "empty_body", "empty"),
        (b"   ", 400, "empty_body", "empty"),
        (b'{"question": "caf\xe9"}', 400, "invalid_utf8", "UTF-8"),
        (b'{"question": ', 400, "invalid_json", "not valid JSON"),
        (b"[1, 2]", 422, "invalid_body", "an array"),
        (b'"just a string"', 422, "invalid_body", "a string"),
        (b"{}", 422, "invalid_field", "question: required field is missing"),
        (b'{"question": 42}', 422, "invalid_field", "got a number"),
        (b'{"question": null}', 422, "invalid_field", "got null"),
        (b'{"question": ["a"]}', 422, "invalid_field", "got an array"),
        (b'{"question": "q", "reference_answer": 1}', 422, "invalid_field", "reference_answer"),
        (b'{"question": "q", "refrence": "x"}', 422, "invalid_field", "unknown field"),
        (b'{"question": ""}', 422, "empty_question", "empty or only whitespace"),
        (b'{"question": " \\t\\n "}', 422, "empty_question", "empty or only whitespace"),
        (json.dumps({"question": "x" * 51}).encode(), 422, "question_too_long", "51 characters; the limit is 50"),
        (b'{"question": "a\\u0000b"}', 422, "invalid_character", "NUL"),
        (b'{"question": "\\ud800"}', 400, "invalid_unicode", "surrogate"),
    ],
)
def test_bad_input_is_refused_with_a_reason(body: bytes, status: int, code: str, says: str) -> None:
    error = refused(body)
    assert (error.status, error.code) == (status, code)
    assert says in error.detail


def test_the_question_limit_counts_characters_not_bytes() -> None:
    assert parse_query(json.dumps({"question": "é" * 50}).encode(), LIMITS).question == "é" * 50
