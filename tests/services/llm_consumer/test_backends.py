"""The consumer's LLM backends over real HTTP: answers, and every classification rule."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime
from typing import Any

import pytest
from pydantic import SecretStr

from services.common.knowledge_base import default_knowledge_base
from services.common.prompts import build_prompt
from services.common.schemas import ErrorInfo, ErrorKind, LLMError, decode, encode
from services.common.settings import load_settings
from services.llm_consumer.backends import (
    LLMBackend,
    LocalBackend,
    LLMCallError,
    OllamaBackend,
    OpenAIBackend,
    Sampling,
    SimulatedBackend,
    choose_backend,
    parse_retry_after,
)
from services.common.backend_choice import (
    LlmRoute,
    consumer_concurrency,
    gateway_upstream,
    llm_route,
    resolve_backend_kind,
)
from tests.services.llm_consumer.scripted_http import Script, scripted_server
from tests.services.llm_gateway.server import RunningGateway, free_port, running_gateway

QUESTION = "What is exponential backoff?"
PARAPHRASES = default_knowledge_base().lookup(QUESTION).paraphrases  # type: ignore[union-attr]


@pytest.fixture
def gateway() -> Iterator[RunningGateway]:
    with running_gateway() as running:
        yield running


def backend_for(kind: str, url: str, timeout: float = 5.0) -> LLMBackend:
    if kind == "openai":
        return OpenAIBackend(f"{url}/v1", "qactl-sim", timeout, SecretStr("sk-test"))
    if kind == "simulated":
        return SimulatedBackend(url, "qactl-sim", timeout)
    return OllamaBackend(url, "qactl-sim", timeout)


async def failure(backend: LLMBackend) -> ErrorInfo:
    async with backend:
        with pytest.raises(LLMCallError) as caught:
            await backend.generate(build_prompt(QUESTION))
    return caught.value.info


KINDS = ["ollama", "simulated", "openai"]


# --- answers ---


@pytest.mark.asyncio
@pytest.mark.parametrize("kind", KINDS)
async def test_a_200_is_an_answer(gateway: RunningGateway, kind: str) -> None:
    async with backend_for(kind, gateway.url) as backend:
        result = await backend.generate(build_prompt(QUESTION))
    assert result.answer in PARAPHRASES
    assert result.backend == kind and result.model == "qactl-sim" and result.latency_ms >= 0


@pytest.mark.asyncio
async def test_openai_backend_sends_the_key_and_a_user_message() -> None:
    script = Script(body={"model": "gpt-x", "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}}]})
    with scripted_server(script) as url:
        async with OpenAIBackend(f"{url}/v1", "gpt-x", 5.0, SecretStr("sk-secret")) as backend:
            result = await backend.generate("the prompt")
    method, path, headers, body = script.requests[0]
    assert (method, path) == ("POST", "/v1/chat/completions")
    assert headers["Authorization"] == "Bearer sk-secret"
    assert b'"content": "the prompt"' in body or b'"content":"the prompt"' in body
    assert (result.answer, result.model, result.backend) == ("hi", "gpt-x", "openai")
    assert "sk-secret" not in repr(backend.__dict__)


# --- classification, through the gateway's faults ---


@pytest.mark.asyncio
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    "rule, expected_kind, status, retry_after",
    [
        ({"kind": "503", "count": 1, "retry_after": 2}, ErrorKind.overload, 503, 2.0),
        ({"kind": "503", "count": 1}, ErrorKind.overload, 503, None),
        ({"kind": "429", "count": 1, "retry_after": 1.5}, ErrorKind.overload, 429, 1.5),
        ({"kind": "insufficient_quota", "count": 1}, ErrorKind.quota, 429, None),
        ({"kind": "402", "count": 1}, ErrorKind.quota, 402, None),
    ],
)
async def test_injected_errors_are_classified(
    gateway: RunningGateway, kind: str, rule: dict[str, Any], expected_kind: ErrorKind, status: int, retry_after: float | None
) -> None:
    gateway.inject(**rule)
    info = await failure(backend_for(kind, gateway.url))
    assert (info.kind, info.status_code, info.retry_after_seconds) == (expected_kind, status, retry_after)
    assert info.message


@pytest.mark.asyncio
@pytest.mark.parametrize("kind", KINDS)
async def test_a_timeout_is_overload(gateway: RunningGateway, kind: str) -> None:
    gateway.inject(kind="timeout", count=1, seconds=1.5)
    info = await failure(backend_for(kind, gateway.url, timeout=0.3))
    assert info.kind == ErrorKind.overload and info.status_code is None and "timed out" in info.message


@pytest.mark.asyncio
@pytest.mark.parametrize("kind", KINDS)
async def test_a_refused_connection_is_overload(kind: str) -> None:
    info = await failure(backend_for(kind, f"http://127.0.0.1:{free_port()}"))
    assert info.kind == ErrorKind.overload and info.status_code is None and "connection failed" in info.message


@pytest.mark.asyncio
@pytest.mark.parametrize("kind", KINDS)
async def test_another_5xx_is_overload(kind: str) -> None:
    # A gateway whose upstream is gone answers 502.
    with running_gateway(upstream_url=f"http://127.0.0.1:{free_port()}") as front:
        info = await failure(backend_for(kind, front.url))
    assert (info.kind, info.status_code) == (ErrorKind.overload, 502)


@pytest.mark.asyncio
@pytest.mark.parametrize("kind", KINDS)
async def test_another_4xx_is_a_client_error(gateway: RunningGateway, kind: str) -> None:
    info = await failure(backend_for(kind, f"{gateway.url}/no-such-prefix"))
    assert (info.kind, info.status_code) == (ErrorKind.client, 404)


@pytest.mark.asyncio
@pytest.mark.parametrize("status", [400, 401, 403, 422])
async def test_client_errors_with_their_message(status: int) -> None:
    script = Script(status=status, body={"error": {"message": "model 'x' not found", "type": "invalid_request_error"}})
    with scripted_server(script) as url:
        info = await failure(OpenAIBackend(f"{url}/v1", "x", 5.0))
    assert (info.kind, info.status_code, info.message) == (ErrorKind.client, status, "model 'x' not found")


@pytest.mark.asyncio
async def test_ollama_shaped_quota_code_and_plain_429() -> None:
    with scripted_server(Script(status=429, body={"error": "slow down"})) as url:
        assert (await failure(OllamaBackend(url, "m", 5.0))).kind == ErrorKind.overload
    with scripted_server(Script(status=429, body={"error": "no credit", "code": "insufficient_quota"})) as url:
        assert (await failure(OllamaBackend(url, "m", 5.0))).kind == ErrorKind.quota


@pytest.mark.asyncio
async def test_retry_after_as_an_http_date() -> None:
    when = datetime.now(timezone.utc) + timedelta(seconds=30)
    script = Script(status=503, body={"error": "busy"}, headers={"Retry-After": format_datetime(when, usegmt=True)})
    with scripted_server(script) as url:
        info = await failure(OllamaBackend(url, "m", 5.0))
    assert info.kind == ErrorKind.overload and info.retry_after_seconds is not None
    assert 25 <= info.retry_after_seconds <= 30


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("header", "expected"),
    [("1e12", 1e12), ("1e400", sys.float_info.max), ("9" * 400, sys.float_info.max)],
    ids=["1e12", "1e400", "400-digits"],
)
async def test_a_huge_retry_after_stays_a_number_on_its_way_to_the_retry_service(header: str, expected: float) -> None:
    """Infinity would become JSON null: the retry service would see no Retry-After at all."""
    with scripted_server(Script(status=503, body={"error": "busy"}, headers={"Retry-After": header})) as url:
        info = await failure(OllamaBackend(url, "m", 5.0))
    assert info.retry_after_seconds == expected
    failed = LLMError(question_id="q-huge-retry-after", question="Why wait?", error=info)
    assert decode(LLMError, encode(failed)).error.retry_after_seconds == expected


@pytest.mark.asyncio
@pytest.mark.parametrize("body", [b"not json", {"unexpected": True}, {"error": "model is loading"}])
async def test_a_200_without_an_answer_is_overload(body: Any) -> None:
    with scripted_server(Script(status=200, body=body)) as url:
        info = await failure(OllamaBackend(url, "m", 5.0))
    assert (info.kind, info.status_code) == (ErrorKind.overload, 200) and "malformed" in info.message


def test_parse_retry_after_forms() -> None:
    now = datetime(2026, 1, 1, 12, 0, 0, tzinfo=timezone.utc)
    assert parse_retry_after({"Retry-After": "7"}) == 7.0
    assert parse_retry_after({"Retry-After": " 0.25 "}) == 0.25
    assert parse_retry_after({"Retry-After": "Thu, 01 Jan 2026 12:00:10 GMT"}, now=now) == 10.0
    assert parse_retry_after({"Retry-After": "Thu, 01 Jan 2026 11:00:00 GMT"}, now=now) == 0.0
    assert parse_retry_after({"Retry-After": "-3"}) == 0.0
    assert parse_retry_after({"Retry-After": "soon"}) is None
    assert parse_retry_after({"Retry-After": "nan"}) is None
    assert parse_retry_after({"retry-after-ms": "1500"}) == 1.5
    assert parse_retry_after({}) is None


# --- choosing a backend ---


def settings_with(**llm: Any) -> Any:
    return load_settings(llm={"model": "qactl-sim", **llm}, gateway={"host": "127.0.0.1", "port": 11435})


def test_auto_without_ollama_uses_the_local_model_through_the_gateway() -> None:
    settings = settings_with(backend="auto", ollama_url=f"http://127.0.0.1:{free_port()}")
    backend, description = choose_backend(settings, probe_timeout=0.5)
    assert isinstance(backend, LocalBackend) and backend.base_url == "http://127.0.0.1:11435/v1"
    assert backend.model == settings.llm_server.alias
    assert "local at http://127.0.0.1:11435/v1" in description and "no Ollama" in description
    assert resolve_backend_kind(settings, probe_timeout=0.5) == "local"
    assert gateway_upstream(settings, "local") == settings.llm_server.base_url


def test_auto_does_not_take_the_gateway_at_the_ollama_url_for_an_ollama(gateway: RunningGateway) -> None:
    backend, description = choose_backend(settings_with(backend="auto", ollama_url=gateway.url))
    assert isinstance(backend, LocalBackend)
    assert "built-in gateway, not an Ollama" in description


@pytest.mark.parametrize(
    "models, configured, chosen",
    [(["llama3.2:latest", "qwen2:0.5b"], "qactl-sim", "llama3.2:latest"), (["llama3.2:latest", "qwen2:0.5b"], "qwen2:0.5b", "qwen2:0.5b")],
)
def test_auto_with_a_real_ollama_uses_it(models: list[str], configured: str, chosen: str) -> None:
    tags = {"models": [{"name": m, "model": m} for m in models]}
    with scripted_server(Script(body=tags)) as url:
        settings = settings_with(backend="auto", ollama_url=url, model=configured)
        backend, description = choose_backend(settings)
        assert resolve_backend_kind(settings) == "ollama"
    assert type(backend) is OllamaBackend and backend.model == chosen
    assert description.startswith(f"ollama at {url} (model {chosen})")


def test_auto_with_an_ollama_without_models_falls_back_to_the_local_model() -> None:
    with scripted_server(Script(body={"models": []})) as url:
        backend, description = choose_backend(settings_with(backend="auto", ollama_url=url))
    assert isinstance(backend, LocalBackend) and "has no model" in description


def test_explicit_backends() -> None:
    backend, description = choose_backend(
        settings_with(backend="openai", openai_base_url="https://llm.example/v1", openai_api_key="sk-1", model="gpt-x")
    )
    assert isinstance(backend, OpenAIBackend) and description == "openai at https://llm.example/v1 (model gpt-x)"
    backend, _ = choose_backend(settings_with(backend="ollama", ollama_url="http://10.0.0.5:11434"))
    assert type(backend) is OllamaBackend and backend.base_url == "http://10.0.0.5:11434"
    backend, _ = choose_backend(settings_with(backend="simulated"))
    assert isinstance(backend, SimulatedBackend) and backend.base_url == "http://127.0.0.1:11435"
    backend, _ = choose_backend(settings_with(backend="gateway"))  # the simulator's former name
    assert isinstance(backend, SimulatedBackend)
    assert gateway_upstream(settings_with(backend="simulated"), "simulated") is None
    assert resolve_backend_kind(settings_with(backend="openai")) == "openai"


def test_the_route_shown_to_the_operator_is_the_one_the_consumers_take() -> None:
    """`qactl status` and `watch` show ``llm_route``; ``choose_backend`` builds the client from it."""
    local = settings_with(backend="local")
    assert llm_route(local) == LlmRoute(
        "local", local.llm_server.alias, "http://127.0.0.1:11435/v1", local.llm_server.base_url
    )
    simulated = llm_route(settings_with(backend="simulated"))
    assert simulated == LlmRoute("simulated", "qactl-sim", "http://127.0.0.1:11435")
    assert simulated.simulated and simulated.answered_by == "simulated (canned answers)"
    forwarded = llm_route(load_settings(llm={"backend": "simulated"}, gateway={"upstream_url": "http://llm.example"}))
    assert not forwarded.simulated and forwarded.answered_by == "qactl-sim"  # the upstream answers
    ollama = llm_route(settings_with(backend="ollama", ollama_url="http://10.0.0.5:11434", model="llama3.2"))
    assert ollama == LlmRoute("ollama", "llama3.2", "http://10.0.0.5:11434")
    assert ollama.answered_by == "llama3.2"
    auto = llm_route(settings_with(backend="auto", ollama_url=f"http://127.0.0.1:{free_port()}"), probe_timeout=0.5)
    assert auto.kind == "local" and auto.why.startswith("auto: no Ollama")


# --- sampling and concurrency ---


def test_every_attempt_is_a_new_sample_and_a_retry_the_same() -> None:
    sampling = Sampling(max_tokens=70, temperature=0.7, temperature_step=0.15)
    assert [sampling.temperature_for(a) for a in range(4)] == [0.7, 0.85, 1.0, 1.15]
    seeds = {sampling.seed_for("p", a) for a in range(4)}
    assert len(seeds) == 4
    assert sampling.seed_for("p", 1) == sampling.seed_for("p", 1)


def test_another_sample_of_an_attempt_draws_another_seed() -> None:
    """flink/calibrate.py draws several first answers; the pipeline's seeds (sample 0) stay."""
    first, third = (LocalBackend("http://gw/v1", "m", 5.0, sampling=Sampling(sample=k)) for k in (0, 2))
    assert first._request("p", 0)[1]["seed"] == Sampling.seed_for("p", 0)
    assert third._request("p", 0)[1]["seed"] == Sampling.seed_for("p", 0, 2) != Sampling.seed_for("p", 0)
    assert third._request("p", 0)[1]["temperature"] == first._request("p", 0)[1]["temperature"]


def test_openai_requests_carry_the_system_message_and_the_attempts_sampling() -> None:
    backend = LocalBackend("http://gw/v1", "m", 5.0, sampling=Sampling(max_tokens=50, temperature=0.5, temperature_step=0.25))
    url, body, _ = backend._request("the prompt", 2)
    assert url == "http://gw/v1/chat/completions"
    assert [m["role"] for m in body["messages"]] == ["system", "user"]
    assert body["messages"][1]["content"] == "the prompt"
    assert body["max_tokens"] == 50 and body["temperature"] == 1.0 and body["seed"] == Sampling.seed_for("the prompt", 2)


def test_local_concurrency_keeps_the_slots_busy_without_queueing_in_the_server() -> None:
    settings = load_settings(llm_server={"slots": 2}, services={"llm_consumer_replicas": 2})
    assert consumer_concurrency(settings, "local") == 1  # 2 slots over 2 replicas
    assert consumer_concurrency(load_settings(llm_server={"slots": 4}, services={"llm_consumer_replicas": 3}), "local") == 2
    assert consumer_concurrency(settings, "simulated") == 8
    assert consumer_concurrency(load_settings(llm={"concurrency": 5}), "local") == 5
