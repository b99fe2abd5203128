"""The gateway's protocols are genuine: the official ollama and openai clients speak to it."""

from __future__ import annotations

import httpx
import ollama
import openai
import pytest

from services.common.knowledge_base import KnowledgeBase
from services.common.prompts import build_prompt
from tests.services.llm_gateway.server import RunningGateway

QUESTION = "What is Apache Kafka?"


def ollama_client(gateway: RunningGateway) -> ollama.Client:
    return ollama.Client(host=gateway.url)


def openai_client(gateway: RunningGateway, **options: object) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="not-needed", max_retries=0, **options)  # type: ignore[arg-type]


def test_ollama_generate_answers_a_known_question_with_a_paraphrase(gateway: RunningGateway, kb: KnowledgeBase) -> None:
    reply = ollama_client(gateway).generate(model="qactl-sim", prompt=build_prompt(QUESTION), stream=False)
    assert reply.done and reply.done_reason == "stop"
    assert reply.model == "qactl-sim"
    assert reply.response in kb.lookup(QUESTION).paraphrases  # type: ignore[union-attr]
    assert reply.eval_count and reply.eval_count > 5


def test_ollama_generate_streams_the_same_answer_in_pieces(gateway: RunningGateway) -> None:
    client = ollama_client(gateway)
    whole = client.generate(model="m", prompt=QUESTION, stream=False).response
    chunks = list(client.generate(model="m", prompt=QUESTION, stream=True))
    assert len(chunks) > 3
    assert all(not c.done for c in chunks[:-1]) and chunks[-1].done
    assert "".join(c.response or "" for c in chunks) == whole


def test_ollama_chat_plain_and_streaming(gateway: RunningGateway, kb: KnowledgeBase) -> None:
    client = ollama_client(gateway)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is Redis?"}]
    reply = client.chat(model="qactl-sim", messages=messages, stream=False)
    assert reply.message.role == "assistant"
    assert reply.message.content in kb.lookup("What is Redis?").paraphrases  # type: ignore[union-attr]
    streamed = "".join(part.message.content or "" for part in client.chat(model="qactl-sim", messages=messages, stream=True))
    assert streamed == reply.message.content


def test_ollama_list_and_version(gateway: RunningGateway) -> None:
    models = ollama_client(gateway).list().models
    assert [m.model for m in models] == ["qactl-sim:latest"]
    version = httpx.get(f"{gateway.url}/api/version")
    assert version.json()["version"] and version.headers["x-qactl-gateway"] == "1"


def test_ollama_bad_request_is_a_400_error(gateway: RunningGateway) -> None:
    response = httpx.post(f"{gateway.url}/api/generate", json={"prompt": "no model"})
    assert response.status_code == 400 and "model" in response.json()["error"]
    response = httpx.post(f"{gateway.url}/api/chat", json={"model": "m", "messages": "not a list"})
    assert response.status_code == 400 and "messages" in response.json()["error"]
    with pytest.raises(openai.BadRequestError):
        openai_client(gateway).chat.completions.create(model="m", messages=[{"content": "no role"}])  # type: ignore[list-item]


def test_openai_chat_completion(gateway: RunningGateway, kb: KnowledgeBase) -> None:
    completion = openai_client(gateway).chat.completions.create(
        model="qactl-sim", messages=[{"role": "user", "content": build_prompt(QUESTION)}]
    )
    choice = completion.choices[0]
    assert choice.finish_reason == "stop" and choice.message.role == "assistant"
    assert choice.message.content in kb.lookup(QUESTION).paraphrases  # type: ignore[union-attr]
    assert completion.model == "qactl-sim"
    assert completion.usage is not None and completion.usage.total_tokens > 0


def test_openai_streaming_chat_completion(gateway: RunningGateway) -> None:
    client = openai_client(gateway)
    messages = [{"role": "user", "content": "Why is the sky blue?"}]
    whole = client.chat.completions.create(model="m", messages=messages).choices[0].message.content  # type: ignore[arg-type]
    chunks = list(client.chat.completions.create(model="m", messages=messages, stream=True))  # type: ignore[arg-type]
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == whole


def test_openai_content_parts_are_read(gateway: RunningGateway, kb: KnowledgeBase) -> None:
    completion = openai_client(gateway).chat.completions.create(
        model="m", messages=[{"role": "user", "content": [{"type": "text", "text": "What is DNA?"}]}]
    )
    assert completion.choices[0].message.content in kb.lookup("What is DNA?").paraphrases  # type: ignore[union-attr]


def test_openai_models_list(gateway: RunningGateway) -> None:
    assert [m.id for m in openai_client(gateway).models.list()] == ["qactl-sim"]


def test_unknown_question_gets_a_generic_answer_about_it(gateway: RunningGateway) -> None:
    answer = ollama_client(gateway).generate(model="m", prompt=build_prompt("What is a quokka?"), stream=False).response
    assert answer and "quokka" in answer


def test_regeneration_prompt_is_answered_for_its_question(gateway: RunningGateway, kb: KnowledgeBase) -> None:
    prompt = build_prompt(QUESTION, previous_answer="Kafka was a novelist from Prague.", previous_score=0.41)
    answer = ollama_client(gateway).generate(model="m", prompt=prompt, stream=False).response
    assert answer in kb.lookup(QUESTION).paraphrases  # type: ignore[union-attr]
    assert QUESTION.lower() in gateway.stats()["by_question"]


def test_health_and_metrics(gateway: RunningGateway) -> None:
    ollama_client(gateway).generate(model="m", prompt=QUESTION, stream=False)
    health = httpx.get(f"{gateway.url}/health").json()
    assert health["ok"] and health["knowledge_base"] >= 30 and health["upstream"] is None
    metrics = httpx.get(f"{gateway.url}/metrics").text
    assert 'qactl_gateway_calls_total{endpoint="generate",outcome="ok"} 1.0' in metrics
