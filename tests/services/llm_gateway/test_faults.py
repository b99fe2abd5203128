"""Fault injection through the token-protected admin API, seen by the official clients."""

from __future__ import annotations

import httpx
import ollama
import openai
import pytest

from services.common.knowledge_base import KnowledgeBase
from services.common.prompts import build_prompt
from tests.services.llm_gateway.server import RunningGateway, running_gateway

QUESTION = "What is the CAP theorem?"


def oa(gateway: RunningGateway, timeout: float = 10.0) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="k", max_retries=0, timeout=timeout)


def ask_openai(gateway: RunningGateway, question: str = QUESTION, timeout: float = 10.0) -> str:
    completion = oa(gateway, timeout).chat.completions.create(
        model="m", messages=[{"role": "user", "content": build_prompt(question)}]
    )
    return completion.choices[0].message.content or ""


def ask_ollama(gateway: RunningGateway, question: str = QUESTION) -> str:
    return ollama.Client(host=gateway.url).generate(model="m", prompt=build_prompt(question), stream=False).response or ""


# --- the admin API ---


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic abc"}])
def test_admin_api_refuses_a_missing_or_wrong_token(gateway: RunningGateway, headers: dict[str, str]) -> None:
    for method, path in (("GET", "/admin/faults"), ("POST", "/admin/faults"), ("DELETE", "/admin/faults"), ("GET", "/admin/stats")):
        response = httpx.request(method, f"{gateway.url}{path}", headers=headers, json={"kind": "503", "count": 1})
        assert response.status_code == 401, (method, path)
    assert gateway.stats()["total"] == 0
    assert ask_ollama(gateway)  # nothing was injected


def test_without_a_token_configured_the_admin_api_refuses_everyone() -> None:
    """No built-in default token: a gateway started without one has no admin API at all."""
    with running_gateway(admin_token=None) as bare:
        for headers in ({}, {"Authorization": "Bearer qactl-dev-token"}):
            response = httpx.post(f"{bare.url}/admin/faults", headers=headers, json={"kind": "503", "count": 1})
            assert response.status_code == 403 and "disabled" in response.text
        assert ask_ollama(bare)  # nothing was injected


def test_rules_are_listed_and_cleared(gateway: RunningGateway) -> None:
    with gateway.admin() as admin:
        added = admin.post("/admin/faults", json=[{"kind": "503", "count": 2}, {"kind": "degrade", "rate": 0.5}])
        assert added.status_code == 201
        listed = admin.get("/admin/faults").json()["rules"]
        assert [(r["kind"], r["remaining"], r["rate"]) for r in listed] == [("503", 2, None), ("degrade", None, 0.5)]
        assert admin.delete("/admin/faults").json() == {"cleared": 2}
        assert admin.get("/admin/faults").json()["rules"] == []


@pytest.mark.parametrize(
    "rule, problem",
    [
        ({"kind": "503"}, "exactly one of count or rate"),
        ({"kind": "503", "count": 1, "rate": 0.5}, "exactly one of count or rate"),
        ({"kind": "500", "count": 1}, "kind"),
        ({"kind": "429", "rate": 1.5}, "rate"),
        ({"kind": "429", "count": 0}, "count"),
    ],
)
def test_invalid_rules_are_refused_with_the_reason(gateway: RunningGateway, rule: dict[str, object], problem: str) -> None:
    with gateway.admin() as admin:
        response = admin.post("/admin/faults", json=rule)
        assert response.status_code == 422 and problem in response.json()["detail"]
        assert admin.get("/admin/faults").json()["rules"] == []


# --- each fault kind ---


def test_503_burst_then_success_with_retry_after(gateway: RunningGateway) -> None:
    gateway.inject(kind="503", count=2, retry_after=3)
    for _ in range(2):
        with pytest.raises(ollama.ResponseError) as caught:
            ask_ollama(gateway)
        assert caught.value.status_code == 503
    raw = httpx.post(f"{gateway.url}/api/generate", json={"model": "m", "prompt": QUESTION, "stream": False})
    assert raw.status_code == 200  # the burst is used up
    gateway.inject(kind="503", count=1, retry_after=3)
    raw = httpx.post(f"{gateway.url}/api/generate", json={"model": "m", "prompt": QUESTION, "stream": False})
    assert raw.status_code == 503 and raw.headers["retry-after"] == "3"
    assert gateway.stats()["by_outcome"] == {"503": 3, "ok": 1}


def test_429_is_a_rate_limit_with_retry_after(gateway: RunningGateway) -> None:
    gateway.inject(kind="429", count=1, retry_after=1.5)
    with pytest.raises(openai.RateLimitError) as caught:
        ask_openai(gateway)
    assert caught.value.code == "rate_limit_exceeded"
    assert caught.value.response.headers["retry-after"] == "1.5"
    assert ask_openai(gateway)


def test_429_without_retry_after_has_no_header(gateway: RunningGateway) -> None:
    gateway.inject(kind="429", count=1)
    raw = httpx.post(f"{gateway.url}/v1/chat/completions", json={"model": "m", "messages": [{"role": "user", "content": "x"}]})
    assert raw.status_code == 429 and "retry-after" not in raw.headers


def test_insufficient_quota_is_a_429_with_openais_error_code(gateway: RunningGateway) -> None:
    gateway.inject(kind="insufficient_quota", count=2)
    with pytest.raises(openai.RateLimitError) as caught:
        ask_openai(gateway)
    assert caught.value.status_code == 429 and caught.value.code == "insufficient_quota"
    # The Ollama endpoints use the same OpenAI-shaped body, so a client can tell it from a rate limit.
    raw = httpx.post(f"{gateway.url}/api/generate", json={"model": "m", "prompt": QUESTION, "stream": False})
    assert raw.status_code == 429 and raw.json()["error"]["code"] == "insufficient_quota"


def test_402_is_payment_required(gateway: RunningGateway) -> None:
    gateway.inject(kind="402", count=1)
    with pytest.raises(openai.APIStatusError) as caught:
        ask_openai(gateway)
    assert caught.value.status_code == 402 and caught.value.code == "payment_required"
    gateway.inject(kind="402", count=1)
    with pytest.raises(ollama.ResponseError) as ollama_caught:
        ask_ollama(gateway)
    assert ollama_caught.value.status_code == 402


def test_timeout_stalls_past_the_client_timeout_then_answers(gateway: RunningGateway, kb: KnowledgeBase) -> None:
    gateway.inject(kind="timeout", count=1, seconds=1.5)
    with pytest.raises(openai.APITimeoutError):
        ask_openai(gateway, timeout=0.5)
    gateway.inject(kind="timeout", count=1, seconds=0.5)
    assert ask_openai(gateway, timeout=5) in kb.lookup(QUESTION).paraphrases  # type: ignore[union-attr]
    assert gateway.stats()["by_outcome"]["timeout"] == 2


def test_hang_holds_every_call_until_the_rules_are_cleared(gateway: RunningGateway, kb: KnowledgeBase) -> None:
    """The LLM hung: connections accepted, nothing answered, however long the client waits."""
    import concurrent.futures

    gateway.inject(kind="hang", rate=1.0)
    with pytest.raises(openai.APITimeoutError):
        ask_openai(gateway, timeout=1.5)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        held = pool.submit(ask_openai, gateway, QUESTION, 30.0)
        with pytest.raises(concurrent.futures.TimeoutError):
            held.result(timeout=1.5)  # still held
        with gateway.admin() as admin:
            admin.delete("/admin/faults").raise_for_status()
        assert held.result(timeout=10) in kb.lookup(QUESTION).paraphrases  # type: ignore[union-attr]
    assert gateway.stats()["by_outcome"]["hang"] == 2


def test_degrade_answers_off_topic(gateway: RunningGateway, kb: KnowledgeBase) -> None:
    entry = kb.lookup(QUESTION)
    assert entry is not None
    gateway.inject(kind="degrade", count=1)
    assert ask_openai(gateway) in entry.degraded
    assert ask_openai(gateway) in entry.paraphrases
    gateway.inject(kind="degrade", count=1)
    unknown = ask_ollama(gateway, "What is a quokka?")
    assert unknown and "quokka" not in unknown
    assert gateway.stats()["by_question"][QUESTION.lower()] == {"degraded": 1, "ok": 1}


def test_match_targets_one_question(gateway: RunningGateway) -> None:
    gateway.inject(kind="503", count=1, match="  CAP THEOREM ")
    assert ask_openai(gateway, "What is Redis?")  # not targeted: untouched, rule kept
    with pytest.raises(openai.InternalServerError):
        ask_openai(gateway, QUESTION)
    assert ask_openai(gateway, QUESTION)


def test_rate_fires_on_about_that_share_and_is_reproducible() -> None:
    def pattern() -> list[int]:
        with running_gateway(seed=7) as gateway:
            gateway.inject(kind="503", rate=0.3)
            with httpx.Client(base_url=gateway.url) as client:
                return [
                    client.post("/api/generate", json={"model": "m", "prompt": f"q{i}", "stream": False}).status_code
                    for i in range(100)
                ]

    first, second = pattern(), pattern()
    assert first == second
    assert 15 <= first.count(503) <= 45 and set(first) == {200, 503}


def test_first_matching_rule_wins_and_count_rules_expire(gateway: RunningGateway) -> None:
    gateway.inject(kind="429", count=1)
    gateway.inject(kind="402", count=1)
    with httpx.Client(base_url=gateway.url) as client:
        codes = [client.post("/api/generate", json={"model": "m", "prompt": "x", "stream": False}).status_code for _ in range(3)]
    assert codes == [429, 402, 200]
    with gateway.admin() as admin:
        assert admin.get("/admin/faults").json()["rules"] == []


def test_stats_count_by_outcome_and_question_and_reset(gateway: RunningGateway) -> None:
    gateway.inject(kind="503", count=1, match="redis")
    with pytest.raises(openai.InternalServerError):
        ask_openai(gateway, "What is Redis?")
    ask_openai(gateway, "What is Redis?")
    ask_ollama(gateway, QUESTION)
    stats = gateway.stats()
    assert stats["total"] == 3 and stats["by_outcome"] == {"503": 1, "ok": 2}
    assert stats["by_question"]["what is redis?"] == {"503": 1, "ok": 1}
    with gateway.admin() as admin:
        admin.delete("/admin/stats").raise_for_status()
    assert gateway.stats()["total"] == 0
