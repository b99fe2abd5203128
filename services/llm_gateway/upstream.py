"""Forwarding to a real LLM when the gateway sits in front of one.

Calls the gateway does not fault are passed through unchanged (same path, body, status,
Retry-After), so the consumer sees the real LLM's answers and errors; the gateway adds only
its faults. A refused or timed-out upstream becomes a 502/504, which clients treat as overload.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping

import httpx
from starlette.background import BackgroundTask
from starlette.responses import JSONResponse, Response, StreamingResponse

# Request headers worth passing on (the API key for an OpenAI-compatible upstream).
_FORWARD_REQUEST = ("authorization", "content-type", "accept", "openai-organization", "openai-project")
# Response headers a client may need; hop-by-hop and length headers are the server's business.
_FORWARD_RESPONSE = ("content-type", "retry-after", "retry-after-ms", "x-request-id")


class Upstream:
    def __init__(self, base_url: str, timeout_seconds: float) -> None:
        self.base_url = base_url.rstrip("/")
        self._client = httpx.AsyncClient(timeout=timeout_seconds)

    def url_for(self, path: str) -> str:
        # An OpenAI-style base URL already ends in /v1; do not repeat it.
        if self.base_url.endswith("/v1") and path.startswith("/v1/"):
            return self.base_url + path[3:]
        return self.base_url + path

    async def forward(self, method: str, path: str, body: bytes, headers: Mapping[str, str]) -> Response:
        sent = {k: v for k, v in headers.items() if k.lower() in _FORWARD_REQUEST}
        sent["accept-encoding"] = "identity"  # relay bytes as they come, never re-encoded
        request = self._client.build_request(method, self.url_for(path), content=body or None, headers=sent)
        try:
            upstream = await self._client.send(request, stream=True)
        except httpx.TimeoutException as exc:
            return JSONResponse({"error": f"upstream timed out: {exc!r}"}, status_code=504)
        except httpx.TransportError as exc:
            return JSONResponse({"error": f"upstream unreachable: {exc!r}"}, status_code=502)
        kept = {k: v for k, v in upstream.headers.items() if k.lower() in _FORWARD_RESPONSE}
        return StreamingResponse(
            _relay(upstream), status_code=upstream.status_code, headers=kept, background=BackgroundTask(upstream.aclose)
        )

    async def reachable(self) -> bool:
        """Any HTTP answer at all means the upstream is there."""
        try:
            await self._client.get(self.base_url, timeout=1.0)
        except httpx.HTTPError:
            return False
        return True

    async def aclose(self) -> None:
        await self._client.aclose()


async def _relay(response: httpx.Response) -> AsyncIterator[bytes]:
    async for chunk in response.aiter_raw():
        yield chunk
