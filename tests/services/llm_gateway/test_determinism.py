"""Answers are a function of (seed, prompt); the simulated latency is applied."""

from __future__ import annotations

import time

import httpx

from services.common.knowledge_base import KnowledgeBase
from services.common.prompts import build_prompt
from tests.services.llm_gateway.server import running_gateway


def answers(seed: int, prompts: list[str]) -> list[str]:
    with running_gateway(seed=seed) as gateway, httpx.Client(base_url=gateway.url) as client:
        return [
            client.post("/api/generate", json={"model": "m", "prompt": p, "stream": False}).json()["response"]
            for p in prompts
        ]


def test_same_seed_same_answers_other_seed_other_choices(kb: KnowledgeBase) -> None:
    prompts = [build_prompt(e.question) for e in kb.entries]
    first = answers(42, prompts)
    assert first == answers(42, prompts)
    assert first != answers(43, prompts)
    for entry, answer in zip(kb.entries, first):
        assert answer in entry.paraphrases
    # The choice spreads over the paraphrases rather than always taking the first.
    chosen = {entry.paraphrases.index(answer) for entry, answer in zip(kb.entries, first)}
    assert chosen == {0, 1, 2}


def test_a_regeneration_can_get_another_paraphrase(kb: KnowledgeBase) -> None:
    entries = kb.entries
    firsts = answers(42, [build_prompt(e.question) for e in entries])
    regenerations = answers(42, [build_prompt(e.question, a, 0.5) for e, a in zip(entries, firsts)])
    assert all(r in e.paraphrases for e, r in zip(entries, regenerations))
    assert sum(a != r for a, r in zip(firsts, regenerations)) >= len(entries) // 3


def test_latency_is_drawn_between_min_and_max() -> None:
    with running_gateway(latency_ms_min=200, latency_ms_max=300) as gateway, httpx.Client(base_url=gateway.url) as client:
        started = time.perf_counter()
        for _ in range(3):
            client.post("/api/generate", json={"model": "m", "prompt": "What is DNA?", "stream": False}).raise_for_status()
        # A lower bound only: the calls cannot be faster than the simulated inference.
        assert time.perf_counter() - started >= 0.6
