"""The body limit refuses oversized bodies before they are read whole."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from services.storage_api.limits import BodyLimitMiddleware, BodyTooLarge


class Recorder:
    """A downstream app that reads the whole body, and what it saw."""

    def __init__(self) -> None:
        self.called = False
        self.body = b""

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        self.called = True
        while True:
            message = await receive()
            self.body += message.get("body", b"")
            if not message.get("more_body"):
                break
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})


def run(app: Any, headers: list[tuple[bytes, bytes]], chunks: list[bytes]) -> tuple[list[dict[str, Any]], int]:
    """Drive one request; returns what was sent back and how many chunks were pulled."""
    pulled = 0
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        nonlocal pulled
        pulled += 1
        index = pulled - 1
        return {"type": "http.request", "body": chunks[index], "more_body": index < len(chunks) - 1}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/query", "headers": headers}
    asyncio.run(app(scope, receive, send))
    return sent, pulled


def test_declared_length_over_the_limit_is_refused_unread() -> None:
    inner = Recorder()
    sent, pulled = run(BodyLimitMiddleware(inner, 100), [(b"content-length", b"101")], [b"x" * 101])
    assert sent[0]["status"] == 413
    assert b"limit of 100 bytes" in sent[1]["body"]
    assert pulled == 0 and not inner.called


def test_a_streamed_body_stops_as_soon_as_it_passes_the_limit() -> None:
    inner = Recorder()
    with pytest.raises(BodyTooLarge):
        run(BodyLimitMiddleware(inner, 100), [], [b"x" * 60, b"x" * 60, b"x" * 60, b"x" * 60])
    assert len(inner.body) == 60  # the second chunk was refused, the rest never pulled


def test_a_body_within_the_limit_passes() -> None:
    inner = Recorder()
    sent, _ = run(BodyLimitMiddleware(inner, 100), [(b"content-length", b"100")], [b"x" * 100])
    assert sent[0]["status"] == 200 and inner.body == b"x" * 100
