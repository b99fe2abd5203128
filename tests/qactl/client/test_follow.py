"""StorageApiClient.follow and its asyncio twin, against an API answered in memory."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import httpx
import pytest

from qactl.client.api import AsyncStorageApiClient, StorageApiClient
from qactl.errors import ServiceUnavailable
from services.common.api_contract import StatusReply
from services.common.schemas import Hop, Stage, utcnow
from services.common.waiting import Deadline

START = utcnow()
HOPS = [
    Hop(stage=Stage.queued, topic="questions-pending", at=START),
    Hop(stage=Stage.generating, topic="questions-pending", at=START + timedelta(seconds=1)),
    Hop(stage=Stage.scoring, topic="llm-responses-success", at=START + timedelta(seconds=2)),
    Hop(stage=Stage.validated, topic="validated-responses", at=START + timedelta(seconds=3), score=0.9),
]


def replies(*bodies: StatusReply | int) -> httpx.MockTransport:
    """Answers /status with each body in turn (an int is a bare error status), then the last one forever."""
    queue = list(bodies)

    def handle(_: httpx.Request) -> httpx.Response:
        body = queue.pop(0) if len(queue) > 1 else queue[0]
        if isinstance(body, int):
            return httpx.Response(body, json={"error": "unavailable", "detail": "down"})
        return httpx.Response(200, json=body.wire())

    return httpx.MockTransport(handle)


def status(hops: int, state: Stage) -> StatusReply:
    return StatusReply(question_id="q-1", state=state, terminal=state is Stage.validated, hops=HOPS[:hops])


def test_follow_reports_each_hop_once_until_terminal() -> None:
    client = StorageApiClient("http://api")
    client._http = httpx.Client(base_url="http://api", transport=replies(
        status(1, Stage.queued), status(2, Stage.generating), status(2, Stage.generating), status(4, Stage.validated)))
    seen: list[Stage] = []
    waits: list[Stage] = []
    final = client.follow("q-1", timeout=10, interval=0.001, on_hop=lambda h: seen.append(h.stage),
                          on_wait=lambda s: waits.append(s.state))
    assert final.terminal and final.state is Stage.validated and final.hops == HOPS
    assert seen == [Stage.queued, Stage.generating, Stage.scoring, Stage.validated]
    assert waits == [Stage.queued, Stage.generating, Stage.generating]


def test_follow_returns_the_last_status_at_the_timeout() -> None:
    client = StorageApiClient("http://api")
    client._http = httpx.Client(base_url="http://api", transport=replies(status(1, Stage.queued)))
    final = client.follow("q-1", timeout=0.05, interval=0.01)
    assert not final.terminal and final.state is Stage.queued


def test_async_follow_outlives_a_refused_read_when_asked() -> None:
    async def run() -> tuple[object, list[str]]:
        client = AsyncStorageApiClient("http://api")
        client._http = httpx.AsyncClient(base_url="http://api", transport=replies(
            status(1, Stage.queued), 503, status(4, Stage.validated)))
        errors: list[str] = []
        async with client:
            final = await client.follow("q-1", Deadline(10), interval=0.001, on_error=lambda e: errors.append(str(e)))
        return final, errors

    final, errors = asyncio.run(run())
    assert final.state is Stage.validated and len(errors) == 1


def test_async_follow_raises_a_refused_read_by_default_and_stops_at_the_deadline() -> None:
    async def run(deadline: Deadline, *bodies: StatusReply | int) -> object:
        client = AsyncStorageApiClient("http://api")
        client._http = httpx.AsyncClient(base_url="http://api", transport=replies(*bodies))
        async with client:
            return await client.follow("q-1", deadline, interval=0.001)

    with pytest.raises(ServiceUnavailable):
        asyncio.run(run(Deadline(10), 503))
    final = asyncio.run(run(Deadline(0.02), status(1, Stage.queued)))
    assert final is not None and final.state is Stage.queued
