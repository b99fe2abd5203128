"""The storage API when a dependency is missing: it never drops a question silently."""

from __future__ import annotations

import asyncio
import signal
import socket
import time
import uuid
from pathlib import Path

import httpx

from qactl.runtime.supervisor import Supervisor
from services.common import topics
from services.common.schemas import question_id_for
from services.common.settings import QactlSettings
from services.storage_api.app import StorageApi
from tests.services.pipeline import specs_of, watching
from tests.services.storage_stack import (
    bring_back,
    pending_end_offsets,
    process,
    query,
    scalar,
    stop_component,
    wait_until,
)


def unique(label: str) -> str:
    return f"{label} {uuid.uuid4().hex[:12]}: why do consumers commit offsets?"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def without_kafka(settings: QactlSettings, tmp_path: Path) -> QactlSettings:
    """The same PostgreSQL and Redis, a Kafka address where nothing listens, an API of its own."""
    return settings.model_copy(
        update={
            "state_dir": tmp_path / "state",
            "kafka": settings.kafka.model_copy(update={"port": free_port()}),
            "api": settings.api.model_copy(update={"port": free_port()}),
        }
    )


def test_without_kafka_health_is_503_and_questions_are_refused(storage_settings: QactlSettings, tmp_path: Path) -> None:
    settings = without_kafka(storage_settings, tmp_path)
    (spec,) = specs_of(settings, "storage-api")
    url = settings.api.base_url
    text = unique("no kafka")
    with process(settings, spec, wait_healthy=False):
        health = wait_until(
            lambda: (lambda r: r if r.status_code == 503 and not r.json()["dependencies"]["kafka"]["ok"] else None)(
                httpx.get(f"{url}/health", timeout=2)
            ),
            30, "health to report Kafka down",
        )
        assert health.json()["status"] == "unavailable" and "kafka" in health.json()["summary"]
        response = httpx.post(f"{url}/query", json={"question": text}, timeout=15)
        assert response.status_code == 503
        assert response.headers["retry-after"]
        assert "Kafka is unavailable" in response.json()["detail"] and "not accepted" in response.json()["detail"]
    assert scalar(storage_settings, "SELECT count(*) FROM questions WHERE question_id = %s", question_id_for(text)) == 0


def test_a_produce_kafka_never_acknowledges_is_undone_so_a_retry_produces_again(
    storage_settings: QactlSettings, tmp_path: Path
) -> None:
    """Accepted in PostgreSQL, then Kafka fails: 503 and the claim is released, nothing left 'queued'."""
    settings = without_kafka(storage_settings, tmp_path)
    text = unique("lost produce")

    async def ask() -> tuple[str, int]:
        api = StorageApi(settings)
        await api.start()
        try:
            # Right after start Kafka is not known to be down yet: the question is claimed and
            # its produce waits for an acknowledgement that never comes.
            outcome, reply = await api.query(f'{{"question": "{text}"}}'.encode())
            return outcome, reply.status
        finally:
            await api.stop()

    outcome, status = asyncio.run(ask())
    assert (outcome, status) == ("unavailable", 503)
    assert scalar(storage_settings, "SELECT count(*) FROM questions WHERE question_id = %s", question_id_for(text)) == 0


def test_a_claim_whose_produce_was_never_confirmed_is_produced_again(storage_settings: QactlSettings) -> None:
    """An API that died between its insert and Kafka's acknowledgement leaves a row; the sweep requeues it."""
    text = unique("orphan")
    question_id = question_id_for(text)
    query(
        storage_settings,
        "INSERT INTO questions (question_id, question, state, submitted_at, updated_at)"
        " VALUES (%s, %s, 'queued', now() - interval '5 minutes', now() - interval '5 minutes')",
        question_id, text,
    )

    async def sweep() -> int:
        api = StorageApi(storage_settings)
        await api.start()
        try:
            wait = 0.0
            while not api.producer.health.ok and wait < 20:
                await asyncio.sleep(0.2)
                wait += 0.2
            return await api.requeue_unconfirmed(60)
        finally:
            await api.stop()

    with watching(storage_settings, topics.QUESTIONS_PENDING.name) as watch:
        assert asyncio.run(sweep()) >= 1
        watch.wait_for(lambda s: watch.of(question_id), timeout=15, what="the requeued question")
    message = watch.of(question_id)[0].message
    assert message.question == text and "requeued" in (message.hops[-1].note or "")
    assert scalar(storage_settings, "SELECT produced_at IS NOT NULL FROM questions WHERE question_id = %s", question_id)


def test_without_redis_it_keeps_serving_and_says_degraded(storage_settings: QactlSettings) -> None:
    (spec,) = specs_of(storage_settings, "storage-api")
    url = storage_settings.api.base_url
    with process(storage_settings, spec):
        stop_component(storage_settings, "redis")
        try:
            health = wait_until(
                lambda: (lambda r: r if r.json()["status"] == "degraded" else None)(httpx.get(f"{url}/health", timeout=5)),
                15, "health to say degraded",
            )
            assert health.status_code == 200 and health.json()["dependencies"]["redis"]["ok"] is False

            before = pending_end_offsets(storage_settings)
            text = unique("no redis")
            accepted = httpx.post(f"{url}/query", json={"question": text}, timeout=10)
            assert accepted.status_code == 202, accepted.text
            question_id = accepted.json()["question_id"]
            assert sum(pending_end_offsets(storage_settings).values()) == sum(before.values()) + 1

            status = httpx.get(f"{url}/status/{question_id}", timeout=10)
            assert status.status_code == 200 and status.json()["state"] == "queued"
            assert "Redis is unavailable" in status.json()["warning"]
        finally:
            bring_back(storage_settings, "redis")
        wait_until(
            lambda: httpx.get(f"{url}/health", timeout=5).json()["status"] == "ok", 15, "health to be ok again"
        )


def test_without_postgres_it_refuses_clearly_and_recovers(storage_settings: QactlSettings) -> None:
    (spec,) = specs_of(storage_settings, "storage-api")
    url = storage_settings.api.base_url
    with process(storage_settings, spec):
        assert httpx.post(f"{url}/query", json={"question": unique("warm up the pool")}, timeout=10).status_code == 202
        before = pending_end_offsets(storage_settings)
        stop_component(storage_settings, "postgres")
        try:
            health = wait_until(
                lambda: (lambda r: r if r.status_code == 503 else None)(httpx.get(f"{url}/health", timeout=5)),
                15, "health to report PostgreSQL down",
            )
            assert health.json()["dependencies"]["postgres"]["ok"] is False
            refused = httpx.post(f"{url}/query", json={"question": unique("no postgres")}, timeout=15)
            assert refused.status_code == 503 and "PostgreSQL is unavailable" in refused.json()["detail"]
            assert pending_end_offsets(storage_settings) == before
        finally:
            bring_back(storage_settings, "postgres")
        wait_until(lambda: httpx.get(f"{url}/health", timeout=5).status_code == 200, 20, "health ok again")
        accepted = httpx.post(f"{url}/query", json={"question": unique("postgres back")}, timeout=10)
        assert accepted.status_code == 202, accepted.text


def test_sigterm_stops_the_api_cleanly(storage_settings: QactlSettings) -> None:
    (spec,) = specs_of(storage_settings, "storage-api")
    supervisor = Supervisor(storage_settings)
    supervisor.start(spec)
    supervisor.wait_healthy(spec)
    assert httpx.post(f"{storage_settings.api.base_url}/query", json={"question": unique("last")}, timeout=10).status_code == 202
    started = time.monotonic()
    assert supervisor.stop(spec.name, signal.SIGTERM, timeout=20)
    assert time.monotonic() - started < 15
    log = supervisor.tail(spec.name, 10)
    assert "Application shutdown complete" in log and "Traceback" not in log
