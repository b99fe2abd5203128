"""Request models and response bodies of the two protocols the gateway speaks.

Ollama: ``/api/generate`` and ``/api/chat``, one JSON object, or NDJSON chunks when streaming
(Ollama streams unless told otherwise). OpenAI: ``/v1/chat/completions``, one JSON object, or
server-sent events ending with ``data: [DONE]`` when ``stream`` is true.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timezone
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

Protocol = Literal["ollama", "openai"]


class _Request(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: str


class GenerateRequest(_Request):
    prompt: str = ""
    system: str | None = None
    stream: bool = True


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: str
    content: str | list[dict[str, Any]] | None = None

    @property
    def text(self) -> str:
        """The text of a message; OpenAI allows a list of typed parts."""
        if isinstance(self.content, list):
            return "".join(str(part.get("text", "")) for part in self.content if part.get("type") == "text")
        return self.content or ""


class ChatRequest(_Request):
    messages: list[ChatMessage]
    stream: bool = True

    def last_user_text(self) -> str:
        for message in reversed(self.messages):
            if message.role == "user":
                return message.text
        return self.messages[-1].text if self.messages else ""


class OpenAIChatRequest(ChatRequest):
    stream: bool = False


def words(text: str) -> list[str]:
    """Stream pieces: each word with the whitespace after it."""
    return re.findall(r"\S+\s*", text) or [text]


def _token_count(text: str) -> int:
    return len(text.split())


def _now_iso() -> str:
    return datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")


def _ollama_stats(prompt: str, answer: str, elapsed_ns: int) -> dict[str, Any]:
    return {
        "done": True,
        "done_reason": "stop",
        "total_duration": elapsed_ns,
        "load_duration": 0,
        "prompt_eval_count": _token_count(prompt),
        "prompt_eval_duration": 0,
        "eval_count": _token_count(answer),
        "eval_duration": elapsed_ns,
    }


def ollama_body(endpoint: Literal["generate", "chat"], model: str, prompt: str, answer: str, elapsed_ns: int) -> dict[str, Any]:
    content: dict[str, Any] = (
        {"response": answer} if endpoint == "generate" else {"message": {"role": "assistant", "content": answer}}
    )
    return {"model": model, "created_at": _now_iso(), **content, **_ollama_stats(prompt, answer, elapsed_ns)}


def ollama_chunks(endpoint: Literal["generate", "chat"], model: str, prompt: str, answer: str, elapsed_ns: int) -> Iterator[bytes]:
    def piece(text: str) -> dict[str, Any]:
        if endpoint == "generate":
            return {"response": text}
        return {"message": {"role": "assistant", "content": text}}

    for word in words(answer):
        yield (json.dumps({"model": model, "created_at": _now_iso(), **piece(word), "done": False}) + "\n").encode()
    final = {"model": model, "created_at": _now_iso(), **piece(""), **_ollama_stats(prompt, answer, elapsed_ns)}
    yield (json.dumps(final) + "\n").encode()


def openai_body(model: str, prompt: str, answer: str) -> dict[str, Any]:
    usage = {"prompt_tokens": _token_count(prompt), "completion_tokens": _token_count(answer)}
    usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": answer}, "finish_reason": "stop", "logprobs": None}
        ],
        "usage": usage,
    }


def openai_events(model: str, answer: str) -> Iterator[bytes]:
    base = {"id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "object": "chat.completion.chunk", "created": int(time.time()), "model": model}

    def event(delta: dict[str, Any], finish: str | None) -> bytes:
        chunk = {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]}
        return f"data: {json.dumps(chunk)}\n\n".encode()

    yield event({"role": "assistant", "content": ""}, None)
    for word in words(answer):
        yield event({"content": word}, None)
    yield event({}, "stop")
    yield b"data: [DONE]\n\n"


# --- errors, in each protocol's own shape ---

_ERRORS: dict[str, tuple[int, str, str, str | None]] = {
    # kind: (status, message, OpenAI type, OpenAI code)
    "503": (503, "The server is overloaded or not ready yet, please retry shortly.", "server_error", "server_overloaded"),
    "429": (429, "Rate limit reached for requests, please retry later.", "requests", "rate_limit_exceeded"),
    "insufficient_quota": (
        429,
        "You exceeded your current quota, please check your plan and billing details.",
        "insufficient_quota",
        "insufficient_quota",
    ),
    "402": (402, "Payment required: the account has no credit left.", "billing_error", "payment_required"),
}


def openai_error(message: str, type_: str, code: str | None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": None, "code": code}}


def error_response(kind: str, protocol: Protocol) -> tuple[int, dict[str, Any]]:
    """Status and body of an injected error. A quota error is always OpenAI-shaped, since
    that shape (``code: insufficient_quota``) is how clients tell it from a rate limit."""
    status, message, type_, code = _ERRORS[kind]
    if protocol == "openai" or kind == "insufficient_quota":
        return status, openai_error(message, type_, code)
    return status, {"error": message}


def bad_request(message: str, protocol: Protocol) -> dict[str, Any]:
    return openai_error(message, "invalid_request_error", None) if protocol == "openai" else {"error": message}


def ollama_tags(model: str) -> dict[str, Any]:
    name = model if ":" in model else f"{model}:latest"
    return {
        "models": [
            {
                "name": name,
                "model": name,
                "modified_at": _now_iso(),
                "size": 0,
                "digest": uuid.uuid5(uuid.NAMESPACE_URL, name).hex,
                "details": {
                    "format": "simulated",
                    "family": "qactl",
                    "families": ["qactl"],
                    "parameter_size": "0",
                    "quantization_level": "none",
                },
            }
        ]
    }


def openai_models(model: str) -> dict[str, Any]:
    return {"object": "list", "data": [{"id": model, "object": "model", "created": 0, "owned_by": "qactl"}]}
