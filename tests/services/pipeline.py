"""Test helpers for the pipeline services against the real Kafka: produce, watch topics, run services.

Nothing here imitates Kafka; it only reads and writes real topics and runs the real services,
in threads (``running``) or through the supervisor as processes.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import httpx
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource, ResourceType
from pydantic import BaseModel

from qactl.client import kafka_admin
from qactl.client.api import QuestionStatus, StorageApiClient
from qactl.runtime.services import components
from qactl.runtime.supervisor import ProcessSpec, Supervisor
from services.common import db
from services.common.schemas import TERMINAL_STAGES, QuestionMessage, encode, model_for_topic, question_id_for
from services.common.settings import QactlSettings


def unique_question(label: str = "question") -> QuestionMessage:
    """A question no other test (or earlier run) asks, so its messages are unmistakably ours."""
    text = f"{label} {uuid.uuid4().hex[:12]}: what is Apache Kafka?"
    return QuestionMessage(question_id=question_id_for(text), question=text)


def produce_raw(settings: QactlSettings, topic: str, value: bytes | None, key: bytes | None = None) -> tuple[int, int]:
    """Send bytes as they are; the (partition, offset) they were written at."""
    producer = Producer({"bootstrap.servers": settings.kafka.bootstrap})
    written: list[tuple[int, int]] = []
    producer.produce(topic, value=value, key=key, on_delivery=lambda err, msg: written.append((msg.partition(), msg.offset())))
    assert producer.flush(15) == 0
    return written[0]


def produce_models(settings: QactlSettings, topic: str, messages: list[BaseModel]) -> None:
    producer = Producer({"bootstrap.servers": settings.kafka.bootstrap, "enable.idempotence": True})
    for message in messages:
        producer.produce(topic, value=encode(message), key=getattr(message, "question_id").encode())
    assert producer.flush(15) == 0


@dataclass
class Seen:
    """One record read back from a topic, decoded with the topic's model."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    message: Any


class TopicWatch:
    """Reads topics from the offsets they had when the watch was opened (what a test produces next)."""

    def __init__(self, settings: QactlSettings, *topics: str) -> None:
        self.settings = settings
        self.topics = topics
        assignment = []
        for topic in topics:
            for partition, end in kafka_admin.end_offsets(settings.kafka.bootstrap, topic).items():
                assignment.append(TopicPartition(topic, partition, end))
        self._consumer = Consumer(
            {
                "bootstrap.servers": settings.kafka.bootstrap,
                "group.id": f"test-watch-{uuid.uuid4().hex[:8]}",
                "enable.auto.commit": False,
            }
        )
        self._consumer.assign(assignment)
        self.seen: list[Seen] = []

    def _read(self, timeout: float) -> None:
        for msg in self._consumer.consume(num_messages=500, timeout=timeout):
            if msg.error():
                continue
            model = model_for_topic(msg.topic())
            self.seen.append(
                Seen(msg.topic(), msg.partition(), msg.offset(), msg.timestamp()[1], model.model_validate_json(msg.value()))
            )

    def wait_for(
        self, predicate: Callable[[list[Seen]], bool], timeout: float = 30.0, what: str = "records"
    ) -> list[Seen]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._read(0.2)
            if predicate(self.seen):
                return self.seen
        raise AssertionError(
            f"timed out after {timeout:.0f}s waiting for {what}; seen: "
            + json.dumps([(s.topic, getattr(s.message, "question_id", None)) for s in self.seen])[:3000]
        )

    def of(self, question_id: str, topic: str | None = None) -> list[Seen]:
        return [
            s
            for s in self.seen
            if getattr(s.message, "question_id", None) == question_id and (topic is None or s.topic == topic)
        ]

    def settle(self, seconds: float) -> list[Seen]:
        """Keep reading for a while (to see that nothing else arrives)."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self._read(0.2)
        return self.seen

    def close(self) -> None:
        self._consumer.close()


@contextmanager
def watching(settings: QactlSettings, *topics: str) -> Iterator[TopicWatch]:
    watch = TopicWatch(settings, *topics)
    try:
        yield watch
    finally:
        watch.close()


def committed_offset(settings: QactlSettings, group: str, topic: str, partition: int) -> int:
    """The group's committed position on one partition (negative when it has none)."""
    consumer = Consumer({"bootstrap.servers": settings.kafka.bootstrap, "group.id": group, "enable.auto.commit": False})
    try:
        (position,) = consumer.committed([TopicPartition(topic, partition)], timeout=10)
        return position.offset
    finally:
        consumer.close()


@contextmanager
def records_refused(settings: QactlSettings, topic: str, over_bytes: int = 1024) -> Iterator[None]:
    """For the block the broker refuses records over ``over_bytes`` on ``topic`` (its
    ``max.message.bytes``): a send there fails for good, with an error in its delivery report."""
    admin = AdminClient({"bootstrap.servers": settings.kafka.bootstrap})

    def alter(operation: AlterConfigOpType, value: str | None) -> None:
        entry = ConfigEntry("max.message.bytes", value, incremental_operation=operation)
        resource = ConfigResource(ResourceType.TOPIC, topic, incremental_configs=[entry])
        for future in admin.incremental_alter_configs([resource]).values():
            future.result(15)

    def limit() -> str:
        resource = ConfigResource(ResourceType.TOPIC, topic)
        (described,) = admin.describe_configs([resource]).values()
        return described.result(15)["max.message.bytes"].value

    alter(AlterConfigOpType.SET, str(over_bytes))
    try:
        wait_until(lambda: limit() == str(over_bytes), 15, f"max.message.bytes of {topic}")
        yield
    finally:
        alter(AlterConfigOpType.DELETE, None)


@contextmanager
def running(target: Callable[[threading.Event], None], name: str) -> Iterator[threading.Event]:
    """Run a service loop in a thread until the block ends; re-raise what it raised."""
    stop = threading.Event()
    errors: list[BaseException] = []

    def main() -> None:
        try:
            target(stop)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    thread = threading.Thread(target=main, name=name, daemon=True)
    thread.start()
    try:
        yield stop
    finally:
        stop.set()
        thread.join(60)
        assert not thread.is_alive(), f"{name} did not stop within 60 s"
    if errors:
        raise errors[0]


# --- the built-in gateway, in a thread ---


class Gateway:
    """The real llm-gateway app served by uvicorn in a thread, with its admin API."""

    def __init__(self, settings: QactlSettings, latency_ms: float = 0.0) -> None:
        import uvicorn

        from services.llm_gateway.app import create_app

        gateway = settings.gateway.model_copy(update={"latency_ms_min": latency_ms, "latency_ms_max": latency_ms})
        self.base_url = gateway.base_url
        self.token = gateway.admin_token.get_secret_value()
        app = create_app(gateway, model=settings.llm.model, timeout_fault_seconds=settings.llm.timeout_seconds + 5)
        config = uvicorn.Config(app, host=gateway.host, port=gateway.port, log_config=None, access_log=False)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="gateway", daemon=True)

    def __enter__(self) -> "Gateway":
        self.thread.start()
        deadline = time.monotonic() + 15
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("gateway did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(15)

    def _admin(self, method: str, path: str, body: Any = None) -> Any:
        response = httpx.request(
            method, f"{self.base_url}{path}", json=body, headers={"Authorization": f"Bearer {self.token}"}, timeout=5
        )
        response.raise_for_status()
        return response.json()

    def fault(self, **rule: Any) -> None:
        self._admin("POST", "/admin/faults", rule)

    def clear_faults(self) -> None:
        self._admin("DELETE", "/admin/faults")

    def stats(self) -> dict[str, Any]:
        return self._admin("GET", "/admin/stats")


# --- the stack these tests run against ---


def pipeline_settings(infra: QactlSettings) -> QactlSettings:
    """The session stack's settings (tests/stack.py) as the pipeline tests use them.

    The LLM is the built-in gateway with a 10 s timeout, and retry delays are scaled by 0.1
    (overload 0.1 / 0.2 / 0.4 s, quota 6 s) so the retry paths run in seconds; tests that need
    other delays say so.
    """
    return infra.model_copy(
        update={
            "llm": infra.llm.model_copy(update={"backend": "gateway", "timeout_seconds": 10.0}),
            "policies": infra.policies.model_copy(update={"delay_scale": 0.1}),
        }
    )


def settings_for_tests(**overrides: Any) -> QactlSettings:
    """``pipeline_settings`` of ``tests.stack.test_settings``, without starting anything.

    ``overrides`` are merged into the nested sections (``kafka={"port": ...}`` keeps the rest).
    """
    from tests.stack import test_settings

    settings = pipeline_settings(test_settings())
    if not overrides:
        return settings
    values = settings.model_dump()
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(values.get(key), dict):
            values[key] = {**values[key], **value}
        else:
            values[key] = value
    return type(settings).model_validate(values)


# --- services as processes, declared as `qactl up` declares them ---


def specs_of(settings: QactlSettings, name: str) -> list[ProcessSpec]:
    (component,) = [c for c in components(settings) if c.name == name]
    return list(component.processes())


@contextmanager
def supervised(settings: QactlSettings, specs: list[ProcessSpec]) -> Iterator[Supervisor]:
    supervisor = Supervisor(settings)
    try:
        for spec in specs:
            supervisor.start(spec)
        for spec in specs:
            supervisor.wait_healthy(spec)
        yield supervisor
    finally:
        for spec in specs:
            supervisor.stop(spec.name, timeout=20)


def health_of(spec: ProcessSpec) -> dict:
    return httpx.get(f"http://127.0.0.1:{spec.ports[0].number}/health", timeout=2).json()


def wait_until(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


# --- terminal states, as the storage API and PostgreSQL hold them ---


def wait_terminal(api: StorageApiClient, question_id: str, timeout: float = 300.0) -> QuestionStatus:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = api.status(question_id)
        if status.state in TERMINAL_STAGES:
            return status
        time.sleep(0.3)
    raise AssertionError(f"{question_id} not terminal after {timeout:.0f}s: {api.status(question_id)}")


def terminal_rows(settings: QactlSettings, question_ids: list[str]) -> dict[str, list[str]]:
    """Every terminal record per question: responses' status, failed_questions' 'failed'."""
    found: dict[str, list[str]] = {qid: [] for qid in question_ids}
    with db.connect(settings.postgres.url, timeout=None) as conn, conn.cursor() as cur:
        cur.execute("SELECT question_id, status FROM responses WHERE question_id = ANY(%s)", (question_ids,))
        for qid, status in cur.fetchall():
            found[qid].append(status)
        cur.execute("SELECT question_id FROM failed_questions WHERE question_id = ANY(%s)", (question_ids,))
        for (qid,) in cur.fetchall():
            found[qid].append("failed")
    return found
