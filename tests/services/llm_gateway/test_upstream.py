"""In front of a real upstream (here a second gateway): pass-through, plus the front's faults."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import ollama
import openai
import pytest

from services.common.prompts import build_prompt
from tests.services.llm_gateway.server import RunningGateway, free_port, running_gateway

QUESTION = "What is a database index?"


@pytest.fixture
def pair() -> Iterator[tuple[RunningGateway, RunningGateway]]:
    """(front, upstream); different seeds, so the answers tell who wrote them."""
    with running_gateway(seed=1) as upstream, running_gateway(seed=2, upstream_url=upstream.url) as front:
        yield front, upstream


def generate(url: str, prompt: str) -> str:
    return ollama.Client(host=url).generate(model="m", prompt=prompt, stream=False).response or ""


def test_unfaulted_calls_are_answered_by_the_upstream(pair: tuple[RunningGateway, RunningGateway]) -> None:
    front, upstream = pair
    prompts = [build_prompt(q) for q in (QUESTION, "What is Redis?", "What is DNA?", "What is a REST API?")]
    through = [generate(front.url, p) for p in prompts]
    assert through == [generate(upstream.url, p) for p in prompts]
    assert upstream.stats()["by_outcome"] == {"ok": 8}
    assert front.stats()["by_outcome"] == {"upstream_ok": 4}


def test_streaming_passes_through_both_protocols(pair: tuple[RunningGateway, RunningGateway]) -> None:
    front, upstream = pair
    prompt = build_prompt(QUESTION)
    streamed = "".join(c.response or "" for c in ollama.Client(host=front.url).generate(model="m", prompt=prompt, stream=True))
    assert streamed == generate(upstream.url, prompt)
    client = openai.OpenAI(base_url=f"{front.url}/v1", api_key="k", max_retries=0)
    chunks = client.chat.completions.create(model="m", messages=[{"role": "user", "content": prompt}], stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == streamed


def test_models_are_the_upstreams(pair: tuple[RunningGateway, RunningGateway]) -> None:
    front, _ = pair
    assert [m.model for m in ollama.Client(host=front.url).list().models] == ["qactl-sim:latest"]
    client = openai.OpenAI(base_url=f"{front.url}/v1", api_key="k", max_retries=0)
    assert [m.id for m in client.models.list()] == ["qactl-sim"]


def test_front_faults_never_reach_the_upstream(pair: tuple[RunningGateway, RunningGateway]) -> None:
    front, upstream = pair
    front.inject(kind="503", count=1)
    front.inject(kind="degrade", count=1)
    with pytest.raises(ollama.ResponseError) as caught:
        generate(front.url, build_prompt(QUESTION))
    assert caught.value.status_code == 503
    degraded = generate(front.url, build_prompt(QUESTION))
    assert "index" not in degraded.lower()
    assert upstream.stats()["total"] == 0


def test_upstream_errors_pass_through_with_retry_after(pair: tuple[RunningGateway, RunningGateway]) -> None:
    front, upstream = pair
    upstream.inject(kind="429", count=1, retry_after=4)
    upstream.inject(kind="insufficient_quota", count=1)
    with httpx.Client(base_url=front.url) as client:
        body = {"model": "m", "messages": [{"role": "user", "content": QUESTION}]}
        limited = client.post("/v1/chat/completions", json=body)
        quota = client.post("/v1/chat/completions", json=body)
    assert limited.status_code == 429 and limited.headers["retry-after"] == "4"
    assert quota.status_code == 429 and quota.json()["error"]["code"] == "insufficient_quota"
    assert front.stats()["by_outcome"] == {"upstream_429": 2}


def test_an_unreachable_upstream_is_a_502_and_unhealthy() -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    with running_gateway(upstream_url=dead) as front:
        response = httpx.post(f"{front.url}/api/generate", json={"model": "m", "prompt": "x", "stream": False})
        assert response.status_code == 502 and "unreachable" in response.json()["error"]
        health = httpx.get(f"{front.url}/health")
        assert health.status_code == 503 and health.json()["upstream_reachable"] is False
