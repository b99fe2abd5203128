"""`qactl migrate`'s records: reading the file and checking each record, no database."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import pytest

from qactl.importer.records import ImportFileError, Rejected, validate_file, validate_record
from services.common.schemas import question_id_for

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)


def write_json(path: Path, records: list[object]) -> Path:
    path.write_text(json.dumps(records), encoding="utf-8")
    return path


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_a_complete_record_maps_to_every_column() -> None:
    row = validate_record(
        {
            "question": "What is Kafka?",
            "answer": "A log.",
            "score": 0.91,
            "status": "validated",
            "reference_answer": "A distributed log.",
            "attempt": 2,
            "model": "llama3",
            "backend": "ollama",
            "latency_ms": 1234.5,
            "timestamp": "2025-05-01T10:00:00Z",
            "submitted_at": 1746093590,
            "retries_overload": 1,
            "retries_quota": 0,
            "extra": "ignored",
        },
        0.75,
        NOW,
    )
    (qid, question, reference, answer, score, status, threshold, attempt, r_over, r_quota, model, backend, latency,
     submitted, completed) = row.values
    # The pipeline's id of the same question asked with the same reference.
    assert qid == question_id_for("What is Kafka?", "A distributed log.") and question == "What is Kafka?"
    assert qid != question_id_for("What is Kafka?")
    assert (reference, answer, score, status, threshold) == ("A distributed log.", "A log.", 0.91, "validated", None)
    assert (attempt, r_over, r_quota, model, backend, latency) == (2, 1, 0, "llama3", "ollama", 1234.5)
    assert completed == datetime(2025, 5, 1, 10, tzinfo=timezone.utc)
    assert submitted == datetime.fromtimestamp(1746093590, tz=timezone.utc)


def test_aliases_and_missing_optional_fields_are_tolerated() -> None:
    row = validate_record({"question": "Q?", "response": "A.", "bert_score": 0.5, "latency_seconds": 1.5}, 0.75, NOW)
    values = dict(zip(("qid", "q", "ref", "answer", "score", "status", "threshold"), row.values[:7]))
    assert values["answer"] == "A." and values["score"] == 0.5
    # No status: derived from the score against the threshold, which is recorded with it.
    assert values["status"] == "low_quality" and values["threshold"] == 0.75 and row.status_from_score
    assert row.values[12] == 1500.0  # latency_seconds -> ms
    assert row.values[14] == NOW  # no timestamp: the import time
    bare = validate_record({"question": "Q?", "answer": "A."}, 0.75, NOW)
    assert bare.values[5] == "validated" and bare.values[4] is None and bare.unscored_defaulted


def test_a_null_field_is_a_field_not_given_and_the_first_alias_given_wins() -> None:
    row = validate_record(
        {"question": "Q?", "answer": None, "response": "R.", "llm_response": "L.", "score": None, "f1": 0.9,
         "latency_ms": 20, "latency_seconds": "ignored when latency_ms is given"},
        0.75,
        NOW,
    )
    assert (row.values[3], row.values[4], row.values[12]) == ("R.", 0.9, 20.0)


@pytest.mark.parametrize(
    ("record", "reason"),
    [
        (["not", "an", "object"], "not a JSON object"),
        ({"answer": "A."}, "field question: missing"),
        ({"question": "   ", "answer": "A."}, "field question: empty"),
        ({"question": "Q?", "answer": ""}, "field answer: empty"),
        ({"question": "Q?", "answer": 42}, "field answer: expected a string"),
        ({"question": "Q?", "answer": "A.", "score": "high"}, "field score: expected a number"),
        ({"question": "Q?", "answer": "A.", "score": 1.7}, "outside [-1, 1]"),
        ({"question": "Q?", "answer": "A.", "score": True}, "field score: expected a number"),
        ({"question": "Q?", "answer": "A.", "status": "great"}, "field status"),
        ({"question": "Q?", "answer": "A.", "attempt": -1}, "field attempt"),
        ({"question": "Q?", "answer": "A.", "timestamp": "yesterday"}, "not an ISO-8601 timestamp"),
        ({"question": "Q?", "answer": "A.", "latency_ms": -3}, "negative"),
        ({"question": "Q\x00?", "answer": "A."}, "NUL"),
    ],
)
def test_a_malformed_record_is_rejected_with_its_reason(record: object, reason: str) -> None:
    with pytest.raises(Rejected, match=reason.replace("[", r"\[").replace("]", r"\]")):
        validate_record(record, 0.75, NOW)


def test_json_lines_with_bad_lines_and_duplicates(tmp_path: Path) -> None:
    path = write_lines(
        tmp_path / "response.jsonl",
        [
            json.dumps({"question": "One?", "answer": "1"}),
            "{not json",
            "",
            json.dumps({"question": "  one?  ", "answer": "again"}),  # same normalized question
            json.dumps({"question": "Two?", "answer": "2", "score": 0.9}),
        ],
    )
    rows, report = validate_file(path, 0.75)
    assert (report.records, report.valid, report.rejected) == (4, 2, 2)
    assert [(r.record, r.reason.split(":")[0]) for r in report.rejections] == [(2, "invalid JSON"), (4, "duplicate")]
    assert "record 1" in report.rejections[1].reason
    assert report.reasons() == {"invalid JSON": 1, "duplicate": 1}


@pytest.mark.parametrize(
    ("content", "message"),
    [("", "is empty"), ("[{\"question\": ", "not valid JSON"), (b"\xff\xfe\x00garbage", "not UTF-8")],
)
def test_a_file_that_cannot_be_read_as_a_whole_is_refused(tmp_path: Path, content: str | bytes, message: str) -> None:
    path = tmp_path / "response.json"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(ImportFileError, match=message):
        validate_file(path, 0.75)


def test_a_missing_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ImportFileError, match="no such file"):
        validate_file(tmp_path / "nope.json", 0.75)
