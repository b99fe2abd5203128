"""Every reply the API builds by hand validates against its contract model and says exactly what it says.

The fast path (replies.py, app.py) keeps its hand-tuned encoding; these tests hold it to
services/common/api_contract.py for every kind of reply, without a stack.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
from pydantic import BaseModel

from services.common.api_contract import (
    AcceptedReply,
    AnsweredReply,
    ErrorReply,
    HealthReply,
    QueryRequest,
    StatusReply,
)
from services.common.cache import CachedAnswer
from services.common.schemas import ErrorInfo, ErrorKind, Hop, Stage, utcnow
from services.storage_api.app import StorageApi
from services.storage_api.replies import Reply, accepted, error, hit, too_large, unavailable
from services.storage_api.store import StoredStatus


def holds_to(model: type[BaseModel], answer: Reply, exclude_none: bool = False) -> BaseModel:
    """The reply's body parses as ``model`` and is exactly that model's JSON (no more, no less)."""
    parsed = model.model_validate_json(answer.body())
    assert json.loads(answer.body()) == parsed.model_dump(mode="json", exclude_none=exclude_none)
    return parsed


def test_query_replies_hold_to_their_models() -> None:
    cached = CachedAnswer(question_id="q-1", question="why?", answer="because", score=0.9, status="validated", model="m", attempt=1)
    for source in ("cache", "database"):
        parsed = holds_to(AnsweredReply, hit(cached, source))
        assert parsed.completed_at == cached.completed_at and parsed.source == source
    holds_to(AnsweredReply, hit(cached.model_copy(update={"score": None, "model": None}), "cache"))
    for coalesced in (False, True):
        answer = accepted("q-1", coalesced)
        parsed = holds_to(AcceptedReply, answer)
        assert answer.status == 202 and dict(answer.headers)["Location"] == parsed.status_url == "/status/q-1"
    for answer in (error(422, "invalid_field", "question: bad"), unavailable("Kafka down"), too_large(100)):
        holds_to(ErrorReply, answer)


def test_the_request_model_is_what_the_api_parses() -> None:
    from services.storage_api import inputs

    assert inputs.QueryRequest is QueryRequest


@dataclass
class FakeRedis:
    live: tuple[Stage | None, list[Hop]] | None
    ok: bool = True
    detail: str = "ok"

    async def live_status(self, _: str) -> tuple[Stage | None, list[Hop]] | None:
        return self.live


@dataclass
class FakeStore:
    stored: StoredStatus | None
    down: bool = False
    ok: bool = True
    detail: str = "ok"

    async def status(self, _: str) -> StoredStatus | None:
        from services.storage_api.store import DatabaseUnavailable

        if self.down:
            raise DatabaseUnavailable("connection refused")
        return self.stored


@dataclass
class FakeHealth:
    ok: bool
    detail: str


@dataclass
class FakeProducer:
    health: FakeHealth


def fake_api(live: Any = None, stored: StoredStatus | None = None, db_down: bool = False, redis_ok: bool = True) -> StorageApi:
    api = object.__new__(StorageApi)
    api.redis = FakeRedis(live, ok=redis_ok, detail="ok" if redis_ok else "unreachable: refused")  # type: ignore[assignment]
    api.store = FakeStore(stored, down=db_down, ok=not db_down, detail="down" if db_down else "ok")  # type: ignore[assignment]
    api.producer = FakeProducer(FakeHealth(True, "ok"))  # type: ignore[assignment]
    return api


def stored_status(**changes: Any) -> StoredStatus:
    now = utcnow()
    hop = Hop(stage=Stage.validated, topic="validated-responses", at=now, score=0.9)
    fields: dict[str, Any] = dict(
        state=Stage.validated, question="why?", submitted_at=now - timedelta(seconds=3), updated_at=now,
        terminal_at=now, answer="because", score=0.9, model="m", attempt=0, reason=None,
        hops=[hop.model_dump(mode="json", exclude_none=True)],
    )
    fields.update(changes)
    return StoredStatus(**fields)


LIVE_HOPS = [
    Hop(stage=Stage.queued, topic="questions-pending"),
    Hop(
        stage=Stage.retrying_overload,
        topic="llm-responses-error-overload",
        error=ErrorInfo(kind=ErrorKind.overload, status_code=503, message="busy"),
        delay_seconds=1.0,
    ),
]


@pytest.mark.parametrize(
    "api",
    [
        fake_api(live=(Stage.generating, LIVE_HOPS)),
        fake_api(live=(Stage.generating, LIVE_HOPS), redis_ok=False),
        fake_api(live=(Stage.generating, LIVE_HOPS), db_down=True),
        fake_api(stored=stored_status()),
        fake_api(live=(Stage.validated, LIVE_HOPS), stored=stored_status()),
        fake_api(stored=stored_status(state=Stage.failed, answer=None, score=None, model=None, attempt=None, reason="LLM refused")),
        fake_api(stored=stored_status(state=Stage.queued, terminal_at=None, answer=None, score=None, model=None, attempt=None, hops=[])),
    ],
    ids=["live", "live-no-redis", "live-no-db", "stored", "both", "failed", "queued"],
)
def test_status_replies_hold_to_the_status_model(api: StorageApi) -> None:
    outcome, answer = asyncio.run(api.status("q-1"))
    assert outcome == "found"
    parsed = holds_to(StatusReply, answer, exclude_none=True)
    assert parsed.wire() == json.loads(answer.body())


@pytest.mark.parametrize("api", [fake_api(stored=None), fake_api(db_down=True)], ids=["not-found", "db-down"])
def test_status_refusals_hold_to_the_error_model(api: StorageApi) -> None:
    _, answer = asyncio.run(api.status("q-1"))
    holds_to(ErrorReply, answer)


@pytest.mark.parametrize(
    "api", [fake_api(), fake_api(redis_ok=False), fake_api(db_down=True)], ids=["ok", "degraded", "unavailable"]
)
def test_health_replies_hold_to_the_health_model(api: StorageApi) -> None:
    from services.storage_api.replies import reply

    code, payload = api.health()
    parsed = holds_to(HealthReply, reply(code, payload))
    assert (code == 200) == parsed.ok


def test_openapi_documents_every_endpoint_from_the_models() -> None:
    from services.common.settings import QactlSettings
    from services.storage_api.asgi import make_app

    spec = make_app(QactlSettings()).fastapi.openapi()
    paths = spec["paths"]
    assert set(paths) == {"/query", "/status/{question_id}", "/health", "/metrics"}
    body = paths["/query"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    model = QueryRequest.model_json_schema()
    assert (body["required"], set(body["properties"])) == (model["required"], set(model["properties"]))

    def model_of(path: str, method: str, code: str) -> str:
        return paths[path][method]["responses"][code]["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[1]

    assert model_of("/query", "post", "200") == "AnsweredReply"
    assert model_of("/query", "post", "202") == "AcceptedReply"
    assert {model_of("/query", "post", c) for c in ("400", "413", "422", "503")} == {"ErrorReply"}
    assert model_of("/status/{question_id}", "get", "200") == "StatusReply"
    assert model_of("/status/{question_id}", "get", "404") == "ErrorReply"
    assert model_of("/health", "get", "200") == model_of("/health", "get", "503") == "HealthReply"
