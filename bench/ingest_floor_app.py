"""The floor for bench_ingest.py --floor: an ASGI app that reads the body and answers 202.

It runs under the same uvicorn, event loop and HTTP parser as the storage API, so the load
generator's figures against it are what the server and the generator cost on this machine with
no work behind the request: no Redis, no PostgreSQL, no Kafka.
"""

from __future__ import annotations

from typing import Any

BODY = b'{"question_id":"floor","status_url":"/status/floor"}'
HEADERS = [(b"content-type", b"application/json"), (b"content-length", str(len(BODY)).encode())]


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    more = True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        more = message.get("more_body", False)
    await send({"type": "http.response.start", "status": 202, "headers": HEADERS})
    await send({"type": "http.response.body", "body": BODY})
