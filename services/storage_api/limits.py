"""Refuse request bodies over the configured size before they are read whole: the one home of the limit.

``read_body`` (the direct ``POST /query`` path) and ``BodyLimitMiddleware`` (a pure ASGI
middleware for what FastAPI serves: no per-request task or buffering) apply the same rule: a
declared ``Content-Length`` over the limit is answered 413 before a byte of the body is read; a
body without one (chunked) is counted while it streams and the read stops with ``BodyTooLarge``
as soon as it passes the limit.
"""

from __future__ import annotations

from typing import Any, Awaitable, Callable

from services.storage_api.replies import Reply, too_large

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class BodyTooLarge(Exception):
    def __init__(self, limit: int) -> None:
        super().__init__(f"request body is larger than the limit of {limit} bytes")
        self.limit = limit


async def read_body(scope: Scope, receive: Receive, limit: int) -> bytes | None:
    """The whole request body (None when the client went away), or ``BodyTooLarge``.

    A declared ``Content-Length`` over the limit is refused before a byte is read; a streamed
    body stops being read as soon as it passes the limit.
    """
    if declared_over(scope, limit):
        raise BodyTooLarge(limit)
    chunks: list[bytes] = []
    size = 0
    more = True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(limit)
        chunks.append(chunk)
        more = message.get("more_body", False)
    return b"".join(chunks)


class BodyLimitMiddleware:
    """The same limit for the routes FastAPI serves, without buffering their bodies."""

    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app = app
        self.limit = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if declared_over(scope, self.limit):
            await send_reply(send, too_large(self.limit))
            return
        limit = self.limit
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)
            return message

        await self.app(scope, counting_receive, send)


def declared_over(scope: Scope, limit: int) -> bool:
    """True when the request declares a ``Content-Length`` over ``limit``."""
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value) > limit
            except ValueError:
                return False
    return False


async def send_reply(send: Send, answer: Reply) -> None:
    """Send a ``Reply`` as a raw ASGI response (the fast path and the middleware)."""
    body = answer.body()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.lower().encode(), v.encode()) for k, v in answer.headers]
    await send({"type": "http.response.start", "status": answer.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
