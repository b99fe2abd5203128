"""The ASGI app uvicorn serves: a direct path for ``POST /query``, FastAPI for the rest."""

from __future__ import annotations

import contextlib
import gc
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel

from services.common.api_contract import (
    AcceptedReply,
    AnsweredReply,
    ErrorReply,
    HealthReply,
    QueryRequest,
    StatusReply,
)
from services.common.settings import QactlSettings
from services.storage_api.app import StorageApi
from services.storage_api.limits import BodyLimitMiddleware, BodyTooLarge, read_body, send_reply
from services.storage_api.replies import error, reply, too_large

log = logging.getLogger(__name__)


class ApiApp:
    """The ASGI app uvicorn serves: ``POST /query`` on a direct path, everything else by FastAPI.

    The 202 path is the one that must take single-digit milliseconds at 1,000 requests/s on two
    cores; FastAPI's routing and middleware layers cost about as much CPU as the work itself, so
    that route is answered here by the same ``StorageApi.query`` (FastAPI still declares it, for
    the OpenAPI document, and serves it when this wrapper is bypassed).
    """

    def __init__(self, fastapi: FastAPI, api: StorageApi, max_body_bytes: int) -> None:
        self.fastapi = fastapi
        self.api = api
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] == "/query" and scope["method"] == "POST":
            await self._query(scope, receive, send)
        else:
            await self.fastapi(scope, receive, send)

    async def _query(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        started = time.perf_counter()
        try:
            body = await read_body(scope, receive, self.max_body_bytes)
        except BodyTooLarge as exc:
            outcome, answer = "too_large", too_large(exc.limit)
        else:
            if body is None:  # the client went away
                return
            try:
                outcome, answer = await self.api.query(body)
            except Exception:  # an unexpected failure answers 500 and is logged; it never kills the server
                log.exception("POST /query failed")
                outcome, answer = "error", error(500, "internal_error", "the storage API failed; see its log")
        await send_reply(send, answer)
        self.api.metrics.observe("query", outcome, time.perf_counter() - started)


def make_app(settings: QactlSettings, freeze_gc: bool = False) -> ApiApp:
    """The storage API as an ASGI app (``.fastapi`` is the FastAPI part, ``.api`` its logic).

    ``freeze_gc`` (the server process sets it) moves every object that exists once the API has
    started (modules, FastAPI's routes, pydantic's validators, the clients) out of the garbage
    collector's reach. They live as long as the process, and without this every full collection
    walks them all: a 70-80 ms pause that every request in flight waits for.
    """
    api = StorageApi(settings)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        await api.start()
        if freeze_gc:
            gc.collect()
            gc.freeze()
        try:
            yield
        finally:
            await api.stop()

    app = FastAPI(
        title="qactl storage API",
        version="1",
        description="Accepts questions for the asynchronous LLM pipeline and answers from its store.",
        lifespan=lifespan,
    )
    app.state.api = api

    @app.exception_handler(BodyTooLarge)
    async def body_too_large(_request: Request, exc: BodyTooLarge) -> Response:
        api.metrics.observe("query", "too_large", 0.0)
        return too_large(exc.limit).response()

    @app.post(
        "/query",
        summary="Ask a question",
        status_code=202,
        response_model=None,
        # The body is read and checked by ``parse_query`` (its own 400/422 sentences), so FastAPI
        # is only told its model for the document, not asked to parse it.
        openapi_extra=_json_body(QueryRequest),
        responses={
            200: {"model": AnsweredReply, "description": "Already answered: the stored answer, its score and state."},
            202: {"model": AcceptedReply, "description": "Accepted: follow it at status_url."},
            400: {"model": ErrorReply, "description": "Body is empty, not UTF-8 or not JSON."},
            413: {"model": ErrorReply, "description": "Body over the configured limit."},
            422: {"model": ErrorReply, "description": "Fields missing, of the wrong type, empty or too long."},
            503: {"model": ErrorReply, "description": "Kafka or PostgreSQL unavailable: nothing was accepted, retry."},
        },
    )
    async def query(request: Request) -> Response:
        started = time.perf_counter()
        outcome, answer = await api.query(await request.body())
        api.metrics.observe("query", outcome, time.perf_counter() - started)
        return answer.response()

    @app.get(
        "/status/{question_id}",
        summary="Where a question is",
        response_model=None,
        responses={
            200: {"model": StatusReply, "description": "Its state, its hops and, once terminal, its answer or reason."},
            404: {"model": ErrorReply, "description": "No such question."},
            503: {"model": ErrorReply, "description": "PostgreSQL unavailable and Redis knows nothing of it."},
        },
    )
    async def status(question_id: str) -> Response:
        started = time.perf_counter()
        outcome, answer = await api.status(question_id)
        api.metrics.observe("status", outcome, time.perf_counter() - started)
        return answer.response()

    @app.get(
        "/health",
        summary="Each dependency's state; 503 when questions cannot be accepted",
        response_model=None,
        responses={
            200: {"model": HealthReply, "description": "Accepting questions (status ok or degraded)."},
            503: {"model": HealthReply, "description": "Not accepting questions: a required dependency is down."},
        },
    )
    async def health() -> Response:
        code, payload = api.health()
        return reply(code, payload).response()

    @app.get("/metrics", summary="Prometheus metrics", response_class=Response)
    async def metrics() -> Response:
        return Response(generate_latest(api.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    app.add_middleware(BodyLimitMiddleware, max_body_bytes=settings.api.max_body_bytes)
    return ApiApp(app, api, settings.api.max_body_bytes)


def _json_body(model: type[BaseModel]) -> dict[str, Any]:
    """An OpenAPI request body of ``model``, for a route that reads its body itself."""
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": model.model_json_schema()}}}}
