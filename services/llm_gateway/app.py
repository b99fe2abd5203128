"""The gateway's HTTP application: Ollama and OpenAI endpoints, faults, health and metrics."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Literal, TypeVar

from fastapi import FastAPI, Request
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from pydantic import BaseModel, SecretStr, ValidationError
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse

from services.common.backend_choice import GATEWAY_HEADER  # tells auto this is no real Ollama
from services.common.knowledge_base import KnowledgeBase, default_knowledge_base
from services.common.prompts import parse_prompt
from services.common.settings import GatewaySettings
from services.llm_gateway import admin, protocol
from services.llm_gateway.answers import Answerer
from services.llm_gateway.faults import ERROR_KINDS, CallStats, FaultBook
from services.llm_gateway.upstream import Upstream

GATEWAY_VERSION = "0.6.0-qactl"
# The model named on an answer that a degrade fault wrote: never passed off as the real model's.
DEGRADED_MODEL = "qactl-gateway-degrade-fault"

Endpoint = Literal["generate", "chat", "openai"]
R = TypeVar("R", bound=BaseModel)


@dataclass
class GatewayState:
    answerer: Answerer
    faults: FaultBook
    admin_token: SecretStr | None  # None: the admin API refuses every request
    model: str
    latency_ms: tuple[float, float]
    timeout_fault_seconds: float
    upstream: Upstream | None
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)
    stats: CallStats = field(default_factory=CallStats)

    def __post_init__(self) -> None:
        self._latency_rng = random.Random(self.answerer.seed)
        self.calls = Counter(
            "qactl_gateway_calls_total", "LLM calls by endpoint and outcome", ["endpoint", "outcome"], registry=self.registry
        )
        self.seconds = Histogram(
            "qactl_gateway_call_seconds", "Time to the first byte of an LLM call", ["endpoint"], registry=self.registry
        )
        Gauge("qactl_gateway_fault_rules", "Active fault rules", registry=self.registry).set_function(
            lambda: len(self.faults.rules())
        )

    def record(self, endpoint: Endpoint, question: str | None, outcome: str, started: float) -> None:
        self.stats.record(question, outcome)
        self.calls.labels(endpoint, outcome).inc()
        self.seconds.labels(endpoint).observe(time.perf_counter() - started)

    async def simulate_inference(self) -> None:
        low, high = self.latency_ms
        if high > 0:
            await asyncio.sleep(self._latency_rng.uniform(low, max(low, high)) / 1000)


def create_app(
    settings: GatewaySettings,
    *,
    knowledge_base: KnowledgeBase | None = None,
    model: str = "qactl-sim",
    timeout_fault_seconds: float = 35.0,
    upstream_timeout_seconds: float = 30.0,
) -> FastAPI:
    """``timeout_fault_seconds``: default stall of a timeout fault; longer than the clients' timeout."""
    state = GatewayState(
        answerer=Answerer(knowledge_base or default_knowledge_base(), settings.seed),
        faults=FaultBook(settings.seed),
        admin_token=settings.admin_token,
        model=model,
        latency_ms=(settings.latency_ms_min, settings.latency_ms_max),
        timeout_fault_seconds=timeout_fault_seconds,
        upstream=Upstream(settings.upstream_url, upstream_timeout_seconds) if settings.upstream_url else None,
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        if state.upstream is not None:
            await state.upstream.aclose()

    app = FastAPI(title="qactl llm-gateway", version=GATEWAY_VERSION, lifespan=lifespan)
    app.state.gateway = state
    app.include_router(admin.router)
    _add_info_routes(app, state)
    _add_llm_routes(app, state)
    return app


def _add_info_routes(app: FastAPI, state: GatewayState) -> None:
    marker = {GATEWAY_HEADER: "1"}

    @app.get("/", include_in_schema=False)
    def root() -> Response:
        return PlainTextResponse("qactl llm-gateway is running", headers=marker)

    @app.get("/api/version")
    def version() -> Response:
        return JSONResponse({"version": GATEWAY_VERSION}, headers=marker)

    @app.get("/api/tags")
    async def tags(request: Request) -> Response:
        if state.upstream is not None:
            return await state.upstream.forward("GET", "/api/tags", b"", request.headers)
        return JSONResponse(protocol.ollama_tags(state.model), headers=marker)

    @app.get("/v1/models")
    async def models(request: Request) -> Response:
        if state.upstream is not None:
            return await state.upstream.forward("GET", "/v1/models", b"", request.headers)
        return JSONResponse(protocol.openai_models(state.model), headers=marker)

    @app.get("/health")
    async def health() -> Response:
        upstream_ok = await state.upstream.reachable() if state.upstream is not None else None
        report = {
            "ok": upstream_ok is not False,
            "seed": state.answerer.seed,
            "knowledge_base": len(state.answerer.knowledge_base),
            "fault_rules": len(state.faults.rules()),
            "upstream": state.upstream.base_url if state.upstream is not None else None,
            "upstream_reachable": upstream_ok,
        }
        return JSONResponse(report, status_code=200 if report["ok"] else 503, headers=marker)

    @app.get("/metrics", include_in_schema=False)
    def metrics() -> Response:
        return Response(generate_latest(state.registry), media_type=CONTENT_TYPE_LATEST)


def _add_llm_routes(app: FastAPI, state: GatewayState) -> None:
    @app.post("/api/generate")
    async def generate(request: Request) -> Response:
        raw = await request.body()
        body = _parse(protocol.GenerateRequest, raw, "ollama")
        if isinstance(body, Response):
            state.record("generate", None, "bad_request", time.perf_counter())
            return body
        question = parse_prompt(body.prompt).question
        return await _call(state, request, raw, "generate", body.model, question, body.prompt, body.stream)

    @app.post("/api/chat")
    async def chat(request: Request) -> Response:
        raw = await request.body()
        body = _parse(protocol.ChatRequest, raw, "ollama")
        if isinstance(body, Response):
            state.record("chat", None, "bad_request", time.perf_counter())
            return body
        prompt = body.last_user_text()  # as /api/generate: the same prompt gets the same answer
        return await _call(state, request, raw, "chat", body.model, parse_prompt(prompt).question, prompt, body.stream)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        raw = await request.body()
        body = _parse(protocol.OpenAIChatRequest, raw, "openai")
        if isinstance(body, Response):
            state.record("openai", None, "bad_request", time.perf_counter())
            return body
        prompt = body.last_user_text()
        return await _call(state, request, raw, "openai", body.model, parse_prompt(prompt).question, prompt, body.stream)


def _parse(model: type[R], raw: bytes, proto: protocol.Protocol) -> R | Response:
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ())) or "body"
        return JSONResponse(protocol.bad_request(f"{where}: {first.get('msg')}", proto), status_code=400)


async def _call(
    state: GatewayState,
    request: Request,
    raw: bytes,
    endpoint: Endpoint,
    model: str,
    question: str,
    prompt: str,
    stream: bool,
) -> Response:
    """One LLM call: a fault if a rule fires, else an answer (simulated or from the upstream)."""
    started = time.perf_counter()
    proto: protocol.Protocol = "openai" if endpoint == "openai" else "ollama"
    rule = state.faults.take(question)
    if rule is not None and rule.kind in ERROR_KINDS:
        status, body = protocol.error_response(rule.kind, proto)
        headers = {"Retry-After": f"{rule.retry_after:g}"} if rule.retry_after is not None else None
        state.record(endpoint, question, rule.kind, started)
        return JSONResponse(body, status_code=status, headers=headers)
    if rule is not None and rule.kind == "hang":
        # The LLM hung: the connection is accepted and nothing comes back until the rules are cleared.
        state.record(endpoint, question, "hang", started)
        await state.faults.held()
    if rule is not None and rule.kind == "timeout":
        # Counted now: the client gives up long before the stall ends. Then answer normally.
        state.record(endpoint, question, "timeout", started)
        await asyncio.sleep(rule.seconds or state.timeout_fault_seconds)
    if rule is not None and rule.kind == "degrade":
        answer = state.answerer.degraded(question, prompt)
    elif state.upstream is not None:
        response = await state.upstream.forward("POST", request.url.path, raw, request.headers)
        if rule is None:
            outcome = "upstream_ok" if response.status_code == 200 else f"upstream_{response.status_code}"
            state.record(endpoint, question, outcome, started)
        return response
    else:
        answer = state.answerer.answer(question, prompt)
    await state.simulate_inference()
    elapsed_ns = int((time.perf_counter() - started) * 1e9)
    if rule is None or rule.kind == "degrade":
        state.record(endpoint, question, "ok" if rule is None else "degraded", started)
    if rule is not None and rule.kind == "degrade":
        model = DEGRADED_MODEL
    return _render(endpoint, model, prompt, answer, stream, elapsed_ns)


def _render(endpoint: Endpoint, model: str, prompt: str, answer: str, stream: bool, elapsed_ns: int) -> Response:
    if endpoint == "openai":
        if stream:
            return StreamingResponse(protocol.openai_events(model, answer), media_type="text/event-stream")
        return JSONResponse(protocol.openai_body(model, prompt, answer))
    if stream:
        return StreamingResponse(
            protocol.ollama_chunks(endpoint, model, prompt, answer, elapsed_ns), media_type="application/x-ndjson"
        )
    return JSONResponse(protocol.ollama_body(endpoint, model, prompt, answer, elapsed_ns))
