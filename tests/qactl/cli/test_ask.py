"""`qactl ask` against the real storage API and persister (Kafka, PostgreSQL, Redis)."""

from __future__ import annotations

import json
import socket
import threading
import uuid
from collections.abc import Iterator
from datetime import timedelta

import pytest
from typer.testing import CliRunner

from flink.routing import route
from qactl.cli.main import app
from services.common import topics
from services.common.cache import CachedAnswer, cache_key
from services.common.schemas import Hop, LLMAnswer, QuestionMessage, Stage, question_id_for, utcnow
from services.common.settings import QactlSettings, get_settings
from services.common.status import StatusTracker
from tests.services.pipeline import produce_models, specs_of, watching
from tests.services.storage_stack import process, redis_client

runner = CliRunner()


@pytest.fixture(scope="module")
def stack(infra_stack: QactlSettings) -> Iterator[QactlSettings]:
    """The storage API and the persister as `qactl up` runs them, on the session stack."""
    settings = infra_stack
    (api,) = specs_of(settings, "storage-api")
    (persister,) = specs_of(settings, "persister")
    with process(settings, api), process(settings, persister):
        yield settings


@pytest.fixture
def cli_env(stack: QactlSettings, monkeypatch: pytest.MonkeyPatch) -> QactlSettings:
    monkeypatch.setenv("QACTL_API__PORT", str(stack.api.port))
    get_settings.cache_clear()
    yield stack
    get_settings.cache_clear()


def unique(label: str) -> str:
    return f"{label} {uuid.uuid4().hex[:10]}: what is a Kafka partition?"


def test_a_clear_error_when_the_api_is_not_up(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("QACTL_API__PORT", str(port))
    get_settings.cache_clear()
    result = runner.invoke(app, ["ask", "anyone there?"])
    get_settings.cache_clear()
    assert result.exit_code == 1
    assert "storage API is not reachable" in result.output and "qactl up" in result.output
    assert "Traceback" not in result.output


def test_a_new_question_prints_its_id(cli_env: QactlSettings) -> None:
    text = unique("new")
    result = runner.invoke(app, ["ask", text])
    assert result.exit_code == 0, result.output
    assert "accepted" in result.output and question_id_for(text) in result.output


def test_a_known_answer_comes_back_at_once_with_its_exit_code(cli_env: QactlSettings) -> None:
    good, poor = unique("known good"), unique("known poor")
    cache = redis_client(cli_env)
    for text, status, score in ((good, "validated", 0.9), (poor, "low_quality", 0.5)):
        entry = CachedAnswer(question_id=question_id_for(text), question=text, answer=f"stored {status}", score=score, status=status)
        cache.set(cache_key(entry.question_id), entry.to_bytes(), ex=60)

    answered = runner.invoke(app, ["ask", good])
    assert answered.exit_code == 0 and "stored validated" in answered.output and "answered at once" in answered.output

    as_json = runner.invoke(app, ["ask", good, "--json"])
    assert as_json.exit_code == 0
    assert json.loads(as_json.output)["answer"] == "stored validated"

    # A low-quality answer is never served again (an earlier version cached it): asked again, it runs again.
    again = runner.invoke(app, ["ask", poor])
    assert again.exit_code == 0 and "accepted" in again.output and "stored low_quality" not in again.output


def test_a_refused_question_is_one_line(cli_env: QactlSettings) -> None:
    result = runner.invoke(app, ["ask", "   "])
    assert result.exit_code == 1
    assert "refused the request (422)" in result.output and "empty" in result.output


def pipeline_for(settings: QactlSettings, text: str, ready: threading.Event, done: threading.Event) -> None:
    """Answer the question as the stages would: hops in Redis, then Flink's validated message."""
    question_id = question_id_for(text)
    with watching(settings, topics.QUESTIONS_PENDING.name) as watch:
        ready.set()
        watch.wait_for(lambda s: watch.of(question_id), timeout=30, what="the question")
    question: QuestionMessage = watch.of(question_id)[0].message
    tracker = StatusTracker(settings)
    now = utcnow()
    generating = Hop(stage=Stage.generating, topic=topics.QUESTIONS_PENDING.name, at=now, note="llm-consumer-1")
    scoring = Hop(stage=Stage.scoring, topic=topics.LLM_SUCCESS.name, at=now + timedelta(milliseconds=300))
    tracker.record(question_id, generating)
    tracker.record(question_id, scoring)
    answer = LLMAnswer(
        **question.model_dump(exclude={"hops"}), hops=[*question.hops, generating, scoring],
        answer="A partition is an ordered, append-only log.", model="qactl-sim", backend="gateway", llm_latency_ms=300,
    )
    topic, scored = route(answer, 0.93, settings.policies)
    tracker.record(question_id, scored.hops[-1])
    tracker.close()
    produce_models(settings, topic, [scored])
    done.set()


def test_follow_narrates_each_hop_until_validated(cli_env: QactlSettings) -> None:
    text = unique("followed")
    ready, done = threading.Event(), threading.Event()
    worker = threading.Thread(target=pipeline_for, args=(cli_env, text, ready, done), daemon=True)
    worker.start()
    assert ready.wait(30)

    result = runner.invoke(app, ["ask", text, "--follow", "--timeout", "60"])

    worker.join(30)
    assert done.is_set()
    assert result.exit_code == 0, result.output
    for stage in ("queued", "generating", "scoring", "validated"):
        assert stage in result.output
    assert "A partition is an ordered, append-only log." in result.output and "0.930" in result.output
