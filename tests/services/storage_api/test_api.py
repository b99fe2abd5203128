"""The storage API as a process against real Kafka, PostgreSQL and Redis."""

from __future__ import annotations

import asyncio
import json
import socket
import uuid

import httpx
import pytest

from services.common import topics
from services.common.cache import CachedAnswer, cache_key
from services.common.schemas import QuestionMessage, question_id_for
from services.common.settings import QactlSettings
from services.common.status import status_key
from tests.services.pipeline import watching
from tests.services.storage_stack import pending_end_offsets, query, redis_client, scalar, wait_until


def unique(label: str) -> str:
    return f"{label} {uuid.uuid4().hex[:12]}: what does Apache Kafka store?"


def rows_for(settings: QactlSettings, question_id: str) -> int:
    return scalar(settings, "SELECT count(*) FROM questions WHERE question_id = %s", question_id)


def test_a_new_question_is_accepted_produced_and_followable(storage_settings: QactlSettings, api_url: str) -> None:
    text = unique("new")
    with watching(storage_settings, topics.QUESTIONS_PENDING.name) as watch:
        response = httpx.post(f"{api_url}/query", json={"question": text, "reference_answer": "A log of records."})
        assert response.status_code == 202, response.text
        body = response.json()
        question_id = body["question_id"]
        assert question_id == question_id_for(text, "A log of records.")
        assert body["status_url"] == f"/status/{question_id}" and body["coalesced"] is False
        seen = watch.wait_for(lambda s: watch.of(question_id), timeout=15, what="the question on questions-pending")
    message = watch.of(question_id)[0].message
    assert isinstance(message, QuestionMessage)
    assert (message.question, message.reference_answer, message.attempt) == (text, "A log of records.", 0)
    assert [h.stage.value for h in message.hops] == ["queued"]
    assert len(seen) == 1
    # Acknowledged by Kafka, and the ledger says so (written in batches behind the request).
    wait_until(
        lambda: scalar(storage_settings, "SELECT produced_at IS NOT NULL FROM questions WHERE question_id = %s", question_id),
        10, "produced_at",
    )
    status = httpx.get(f"{api_url}{body['status_url']}").json()
    assert status["state"] == "queued" and status["terminal"] is False
    assert [h["stage"] for h in status["hops"]] == ["queued"]


BAD_INPUTS = [
    pytest.param(b"", 400, "empty_body", id="empty body"),
    pytest.param(b'{"question": "   \\n\\t "}', 422, "empty_question", id="whitespace question"),
    pytest.param(b'{"question": ""}', 422, "empty_question", id="empty question"),
    pytest.param(b'{"question": 42}', 422, "invalid_field", id="number"),
    pytest.param(b'{"question": ["a"]}', 422, "invalid_field", id="array"),
    pytest.param(b'{"question": "ok?", "reference_answer": 3}', 422, "invalid_field", id="reference number"),
    pytest.param(b'{"reference_answer": "x"}', 422, "invalid_field", id="missing question"),
    pytest.param(b'{"question": "ok?", "extra": 1}', 422, "invalid_field", id="unknown field"),
    pytest.param(b'["question"]', 422, "invalid_body", id="not an object"),
    pytest.param(b'{"question": "ok?"', 400, "invalid_json", id="invalid json"),
    pytest.param(b'{"question": "caf\xe9 ?"}', 400, "invalid_utf8", id="invalid utf-8"),
    pytest.param(b'{"question": "\\ud83d?"}', 400, "invalid_unicode", id="lone surrogate"),
    pytest.param(b'{"question": "nul\\u0000?"}', 422, "invalid_character", id="nul character"),
]


@pytest.mark.parametrize(("body", "status", "code"), BAD_INPUTS)
def test_bad_input_is_refused_and_nothing_is_produced_or_stored(
    storage_settings: QactlSettings, api_url: str, body: bytes, status: int, code: str
) -> None:
    before_offsets = pending_end_offsets(storage_settings)
    before_rows = scalar(storage_settings, "SELECT count(*) FROM questions")
    response = httpx.post(f"{api_url}/query", content=body, headers={"content-type": "application/json"})
    assert response.status_code == status, response.text
    error = response.json()
    assert error["error"] == code and error["detail"]
    assert pending_end_offsets(storage_settings) == before_offsets
    assert scalar(storage_settings, "SELECT count(*) FROM questions") == before_rows


def test_too_long_question_and_too_large_bodies_are_refused(storage_settings: QactlSettings, api_url: str) -> None:
    limits = storage_settings.api
    before_offsets = pending_end_offsets(storage_settings)
    before_rows = scalar(storage_settings, "SELECT count(*) FROM questions")

    long_question = httpx.post(f"{api_url}/query", json={"question": "x" * (limits.max_question_chars + 1)})
    assert long_question.status_code == 422 and long_question.json()["error"] == "question_too_long"

    declared = httpx.post(f"{api_url}/query", content=b"{" + b" " * limits.max_body_bytes + b"}")
    assert declared.status_code == 413 and "limit" in declared.json()["detail"]

    def chunks():  # no Content-Length: refused while streaming, before the end of the body
        for _ in range(limits.max_body_bytes // 1024 + 8):
            yield b" " * 1024

    streamed = httpx.post(f"{api_url}/query", content=chunks())
    assert streamed.status_code == 413

    assert pending_end_offsets(storage_settings) == before_offsets
    assert scalar(storage_settings, "SELECT count(*) FROM questions") == before_rows


def test_a_declared_oversized_body_is_refused_before_it_is_sent(storage_settings: QactlSettings, api_url: str) -> None:
    """Only the headers go out: the 413 comes back without the API waiting for a byte of body."""
    host, port = storage_settings.api.host, storage_settings.api.port
    with socket.create_connection((host, port), timeout=5) as sock:
        sock.sendall(
            f"POST /query HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {100 * 1024 * 1024}\r\n\r\n".encode()
        )
        answer = sock.recv(4096).decode()
    assert answer.startswith("HTTP/1.1 413")


def test_a_cache_hit_answers_200_and_touches_no_kafka(storage_settings: QactlSettings, api_url: str) -> None:
    text = unique("cached")
    question_id = question_id_for(text)
    entry = CachedAnswer(question_id=question_id, question=text, answer="It stores records.", score=0.91, status="validated", model="sim")
    redis_client(storage_settings).set(cache_key(question_id), entry.to_bytes(), ex=60)
    before = pending_end_offsets(storage_settings)

    response = httpx.post(f"{api_url}/query", json={"question": text.upper()})  # same normalized question

    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["answer"], body["score"], body["status"], body["source"]) == ("It stores records.", 0.91, "validated", "cache")
    assert pending_end_offsets(storage_settings) == before
    assert rows_for(storage_settings, question_id) == 0


def test_a_database_hit_answers_200_fills_the_cache_and_touches_no_kafka(
    storage_settings: QactlSettings, api_url: str
) -> None:
    text = unique("stored")
    question_id = question_id_for(text)
    query(
        storage_settings,
        "INSERT INTO responses (question_id, question, answer, score, status, attempt) VALUES (%s, %s, %s, %s, %s, %s)",
        question_id, text, "Records, in order.", 0.82, "validated", 1,
    )
    before = pending_end_offsets(storage_settings)

    response = httpx.post(f"{api_url}/query", json={"question": text})

    assert response.status_code == 200
    body = response.json()
    assert (body["question_id"], body["status"], body["score"], body["attempt"], body["source"]) == (
        question_id, "validated", 0.82, 1, "database"
    )
    assert pending_end_offsets(storage_settings) == before
    cached = wait_until(lambda: redis_client(storage_settings).get(cache_key(question_id)), 5, "the cache entry")
    assert CachedAnswer.from_bytes(cached).answer == "Records, in order."


def test_a_low_quality_answer_is_no_hit_asking_again_is_a_new_run(storage_settings: QactlSettings, api_url: str) -> None:
    """Neither the stored low-quality answer nor a cache entry of it answers: the question runs again,
    with the next run's id, and the run that ended stays as it ended."""
    text = unique("low before")
    first = question_id_for(text)
    query(
        storage_settings,
        "INSERT INTO questions (question_id, question, state, terminal_at, produced_at)"
        " VALUES (%s, %s, 'low_quality', now() - interval '1 minute', now())",
        first, text,
    )
    query(
        storage_settings,
        "INSERT INTO responses (question_id, question, answer, score, status, attempt) VALUES (%s, %s, %s, %s, %s, %s)",
        first, text, "Records, in order.", 0.42, "low_quality", 3,
    )
    # As an earlier version cached it: a low-quality answer under the question's key.
    stale = CachedAnswer(question_id=first, question=text, answer="Records, in order.", score=0.42, status="low_quality")
    redis_client(storage_settings).set(cache_key(first), stale.to_bytes(), ex=60)
    ended_at = query(storage_settings, "SELECT terminal_at FROM questions WHERE question_id = %s", first)[0][0]

    with watching(storage_settings, topics.QUESTIONS_PENDING.name) as watch:
        response = httpx.post(f"{api_url}/query", json={"question": text})
        assert response.status_code == 202, response.text
        second = response.json()["question_id"]
        assert second == question_id_for(text, run=2) == f"{first}-r2"
        watch.wait_for(lambda s: watch.of(second), timeout=15, what="the new run")
        again = httpx.post(f"{api_url}/query", json={"question": text})  # while it runs: coalesced on it
        assert again.status_code == 202 and again.json() == {**response.json(), "coalesced": True}
    assert watch.of(second)[0].message.question == text
    # The first run is untouched: it ended once, and keeps its record.
    assert query(storage_settings, "SELECT state, terminal_at FROM questions WHERE question_id = %s", first) == [
        ("low_quality", ended_at)
    ]
    assert query(storage_settings, "SELECT state, terminal_at FROM questions WHERE question_id = %s", second) == [
        ("queued", None)
    ]


def test_a_different_reference_is_a_different_question(storage_settings: QactlSettings, api_url: str) -> None:
    """The second asker's reference is kept: they are not given an answer scored against the first's."""
    text = unique("two references")
    validated = question_id_for(text, "Records in partitions.")
    query(
        storage_settings,
        "INSERT INTO responses (question_id, question, reference_answer, answer, score, status)"
        " VALUES (%s, %s, %s, %s, %s, 'validated')",
        validated, text, "Records in partitions.", "Records, in partitions.", 0.9,
    )
    same = httpx.post(f"{api_url}/query", json={"question": text.upper(), "reference_answer": " Records  in partitions. "})
    assert same.status_code == 200 and same.json()["question_id"] == validated

    with watching(storage_settings, topics.QUESTIONS_PENDING.name) as watch:
        other = httpx.post(f"{api_url}/query", json={"question": text, "reference_answer": "Messages on topics."})
        none = httpx.post(f"{api_url}/query", json={"question": text})
        assert (other.status_code, none.status_code) == (202, 202)
        ids = other.json()["question_id"], none.json()["question_id"]
        assert ids == (question_id_for(text, "Messages on topics."), question_id_for(text))
        assert len({validated, *ids}) == 3
        watch.wait_for(lambda s: all(watch.of(i) for i in ids), timeout=15, what="both questions")
    assert watch.of(ids[0])[0].message.reference_answer == "Messages on topics."
    assert watch.of(ids[1])[0].message.reference_answer is None


def test_an_answer_stored_with_a_reference_under_the_question_alone_is_no_hit_without_one(
    storage_settings: QactlSettings, api_url: str
) -> None:
    """Before the reference counted, an answer scored against one had the question's id alone."""
    text = unique("legacy reference")
    question_id = question_id_for(text)
    query(
        storage_settings,
        "INSERT INTO responses (question_id, question, reference_answer, answer, score, status)"
        " VALUES (%s, %s, %s, %s, %s, 'validated')",
        question_id, text, "Someone else's reference.", "An answer.", 0.9,
    )
    response = httpx.post(f"{api_url}/query", json={"question": text})
    assert response.status_code == 202, response.text
    assert response.json()["question_id"] == question_id_for(text, run=2)


def test_a_terminal_state_cannot_be_rewritten(storage_settings: QactlSettings) -> None:
    import psycopg2

    text = unique("ended")
    question_id = question_id_for(text)
    query(storage_settings, "INSERT INTO questions (question_id, question, state, terminal_at) VALUES (%s, %s, 'failed', now())", question_id, text)
    for change in ("state = 'queued', terminal_at = NULL", "terminal_at = now() + interval '1 second'", "state = 'validated'"):
        with pytest.raises(psycopg2.IntegrityError, match="written once"):
            query(storage_settings, f"UPDATE questions SET {change} WHERE question_id = %s", question_id)
    query(storage_settings, "UPDATE questions SET produced_at = now() WHERE question_id = %s", question_id)  # not terminal data
    assert query(storage_settings, "SELECT question_key, run FROM questions WHERE question_id = %s", question_id) == [
        (question_id, 1)
    ]


def test_fifty_concurrent_identical_questions_make_one_message(storage_settings: QactlSettings, api_url: str) -> None:
    text = unique("concurrent")
    variants = [text, text.upper(), f"  {text}  ", text.replace(" ", "   ")]

    async def ask_all() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=50)
        async with httpx.AsyncClient(base_url=api_url, limits=limits, timeout=30) as client:
            return await asyncio.gather(
                *(client.post("/query", json={"question": variants[i % len(variants)]}) for i in range(50))
            )

    with watching(storage_settings, topics.QUESTIONS_PENDING.name) as watch:
        responses = asyncio.run(ask_all())
        assert {r.status_code for r in responses} == {202}
        ids = {r.json()["question_id"] for r in responses}
        assert ids == {question_id_for(text)}
        assert sum(1 for r in responses if not r.json()["coalesced"]) == 1
        (question_id,) = ids
        watch.wait_for(lambda s: watch.of(question_id), timeout=15, what="the question")
        watch.settle(2.0)
    assert len(watch.of(question_id)) == 1
    assert rows_for(storage_settings, question_id) == 1


def test_status_of_an_unknown_question_is_404(api_url: str) -> None:
    response = httpx.get(f"{api_url}/status/q-{'0' * 20}")
    assert response.status_code == 404
    assert response.json()["error"] == "not_found"


def test_the_terminal_state_in_postgres_wins_over_the_live_stage(storage_settings: QactlSettings, api_url: str) -> None:
    text = unique("terminal")
    question_id = question_id_for(text)
    query(
        storage_settings,
        "INSERT INTO questions (question_id, question, state, terminal_at) VALUES (%s, %s, 'failed', now())",
        question_id, text,
    )
    query(
        storage_settings,
        "INSERT INTO failed_questions (question_id, question, reason, error_kind) VALUES (%s, %s, %s, 'exhausted')",
        question_id, text, "overload retries used up (3)",
    )
    redis_client(storage_settings).hset(status_key(question_id), mapping={"stage": "retrying-overload", "attempt": 0})

    status = httpx.get(f"{api_url}/status/{question_id}").json()

    assert (status["state"], status["terminal"], status["reason"]) == ("failed", True, "overload retries used up (3)")


def test_a_failed_question_asked_again_is_a_new_run(storage_settings: QactlSettings, api_url: str) -> None:
    text = unique("failed before")
    first = question_id_for(text)
    query(
        storage_settings,
        "INSERT INTO questions (question_id, question, state, terminal_at, produced_at) VALUES (%s, %s, 'failed', now(), now())",
        first, text,
    )
    ended = query(storage_settings, "SELECT state, terminal_at FROM questions WHERE question_id = %s", first)
    with watching(storage_settings, topics.QUESTIONS_PENDING.name) as watch:
        response = httpx.post(f"{api_url}/query", json={"question": text})
        assert response.status_code == 202 and response.json()["coalesced"] is False
        second = response.json()["question_id"]
        assert second == question_id_for(text, run=2)
        watch.wait_for(lambda s: watch.of(second), timeout=15, what="the new run")
    assert not watch.of(first)
    # The failed run keeps its terminal state and time: one question id ends once.
    assert query(storage_settings, "SELECT state, terminal_at FROM questions WHERE question_id = %s", first) == ended
    assert query(
        storage_settings, "SELECT state, terminal_at, question_key, run FROM questions WHERE question_id = %s", second
    ) == [("queued", None, first, 2)]


def test_openapi_health_and_metrics_are_served(api_url: str) -> None:
    spec = httpx.get(f"{api_url}/openapi.json").json()
    assert {"/query", "/status/{question_id}", "/health", "/metrics"} <= set(spec["paths"])
    assert spec["paths"]["/query"]["post"]["requestBody"]["content"]["application/json"]["schema"]["required"] == ["question"]
    assert httpx.get(f"{api_url}/docs").status_code == 200

    health = httpx.get(f"{api_url}/health")
    assert health.status_code == 200
    assert health.json()["status"] == "ok"
    assert {name: dep["ok"] for name, dep in health.json()["dependencies"].items()} == {
        "kafka": True, "postgres": True, "redis": True,
    }

    httpx.post(f"{api_url}/query", content=b"nope")
    metrics = httpx.get(f"{api_url}/metrics").text
    assert 'qactl_api_requests_total{endpoint="query",outcome="invalid"}' in metrics
    assert "qactl_api_request_seconds_bucket" in metrics
    assert 'qactl_api_dependency_up{dependency="kafka"} 1.0' in metrics


def test_json_error_bodies_say_what_is_wrong(api_url: str) -> None:
    response = httpx.post(f"{api_url}/query", json={"question": 7})
    assert response.headers["content-type"] == "application/json"
    assert json.loads(response.text) == {"error": "invalid_field", "detail": "question: input should be a valid string, got a number"}


def test_status_of_an_answer_stored_without_a_run_says_its_state(storage_settings: QactlSettings, api_url: str) -> None:
    """An imported answer has a responses row and no questions row."""
    text = unique("imported")
    question_id = question_id_for(text)
    query(
        storage_settings,
        "INSERT INTO responses (question_id, question, answer, score, status, source) VALUES (%s, %s, %s, %s, %s, 'import')",
        question_id, text, "From the earlier run.", 0.7, "low_quality",
    )
    status = httpx.get(f"{api_url}/status/{question_id}").json()
    assert (status["state"], status["terminal"], status["answer"]) == ("low_quality", True, "From the earlier run.")


def test_the_server_keeps_its_startup_objects_out_of_the_collectors_reach(api_url: str) -> None:
    # Without gc.freeze() every full collection walks all of them: a 70-80 ms pause on this machine.
    metrics = httpx.get(f"{api_url}/metrics").text
    (line,) = [line for line in metrics.splitlines() if line.startswith("qactl_api_gc_frozen_objects ")]
    assert float(line.split()[1]) > 10_000
