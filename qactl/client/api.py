"""UI-free client of the storage API: submit a question, follow its status, read the API's health.

Used by ``qactl ask``, the demos and the traffic generator. Every body is parsed with the models
of the API's contract (``services.common.api_contract``). Expected failures are ``QactlError``s
with a sentence the operator can act on: the API not up, a request refused (4xx), the pipeline
unable to accept (503), an unknown question (404).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from qactl.errors import QactlError, QuestionNotFound, RequestRejected, ServiceUnavailable, StackNotRunning
from services.common.api_contract import AcceptedReply, AnsweredReply, HealthReply, StatusReply
from services.common.schemas import Hop, Stage
from services.common.waiting import Deadline, poll_until

# How often a followed question's status is read.
POLL_SECONDS = 0.5

OnHop = Callable[[Hop], object]


@dataclass
class Submission:
    """What ``POST /query`` answered: a stored answer (200) or an accepted question (202)."""

    question_id: str
    http_status: int
    status: str
    latency_ms: float
    answer: str | None = None
    score: float | None = None
    model: str | None = None
    source: str | None = None
    status_url: str | None = None
    coalesced: bool = False

    @property
    def answered(self) -> bool:
        """True when the answer came back at once (cache or database hit)."""
        return self.http_status == 200


@dataclass
class QuestionStatus:
    """What ``GET /status/{id}`` answered."""

    question_id: str
    state: Stage
    terminal: bool
    hops: list[Hop] = field(default_factory=list)
    answer: str | None = None
    score: float | None = None
    model: str | None = None
    reason: str | None = None
    warning: str | None = None
    raw: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "QuestionStatus":
        reply = StatusReply.model_validate(data)
        return cls(
            question_id=reply.question_id,
            state=reply.state,
            terminal=reply.terminal,
            hops=reply.hops,
            answer=reply.answer,
            score=reply.score,
            model=reply.model,
            reason=reply.reason,
            warning=reply.warning,
            raw=data,
        )


@dataclass
class ApiHealth:
    ok: bool
    status: str
    summary: str
    dependencies: dict[str, dict[str, Any]]


def _submission(response: httpx.Response, latency_ms: float) -> Submission:
    if response.status_code == 200:
        answered = AnsweredReply.model_validate_json(response.content)
        return Submission(
            question_id=answered.question_id,
            http_status=200,
            status=answered.status,
            latency_ms=latency_ms,
            answer=answered.answer,
            score=answered.score,
            model=answered.model,
            source=answered.source,
        )
    accepted = AcceptedReply.model_validate_json(response.content)
    return Submission(
        question_id=accepted.question_id,
        http_status=response.status_code,
        status=accepted.status,
        latency_ms=latency_ms,
        status_url=accepted.status_url,
        coalesced=accepted.coalesced,
    )


class NewHops:
    """Reports each hop of a followed question once, oldest first, however often it is read."""

    def __init__(self, on_hop: OnHop | None) -> None:
        self.on_hop = on_hop
        self.seen: set[tuple[str, str | None, int, str]] = set()

    def report(self, status: QuestionStatus) -> QuestionStatus:
        for hop in sorted(status.hops, key=lambda h: h.at):
            key = (hop.stage.value, hop.topic, hop.attempt, hop.at.isoformat())
            if key not in self.seen:
                self.seen.add(key)
                if self.on_hop is not None:
                    self.on_hop(hop)
        return status


def _detail(response: httpx.Response) -> str:
    try:
        data = response.json()
    except ValueError:
        return response.text.strip()[:300] or response.reason_phrase
    if isinstance(data, dict):
        return str(data.get("detail") or data.get("summary") or data)
    return str(data)


def _raise_for(response: httpx.Response, question_id: str | None = None) -> None:
    code = response.status_code
    if code in (200, 202):
        return
    if code == 404 and question_id is not None:
        raise QuestionNotFound(f"no question with id {question_id}")
    if code == 503:
        raise ServiceUnavailable(f"the storage API cannot accept questions right now: {_detail(response)}")
    if 400 <= code < 500:
        raise RequestRejected(f"the storage API refused the request ({code}): {_detail(response)}", code)
    raise ServiceUnavailable(f"the storage API failed ({code}): {_detail(response)}")


def _not_up(base_url: str, exc: Exception) -> StackNotRunning:
    reason = "connection refused" if isinstance(exc, httpx.ConnectError) else type(exc).__name__
    return StackNotRunning(f"the storage API is not reachable at {base_url} ({reason}); start it with `qactl up`")


class StorageApiClient:
    """Synchronous client; one connection pool per instance (use as a context manager)."""

    def __init__(self, base_url: str, timeout: float = 10.0) -> None:
        self.base_url = base_url.rstrip("/")
        self._http = httpx.Client(base_url=self.base_url, timeout=timeout)

    def __enter__(self) -> "StorageApiClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            return self._http.request(method, path, **kwargs)
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.RemoteProtocolError) as exc:
            raise _not_up(self.base_url, exc) from None
        except httpx.TimeoutException as exc:
            raise ServiceUnavailable(f"the storage API at {self.base_url} did not answer in time ({type(exc).__name__})") from None

    def submit(self, question: str, reference_answer: str | None = None) -> Submission:
        body: dict[str, Any] = {"question": question}
        if reference_answer is not None:
            body["reference_answer"] = reference_answer
        started = time.perf_counter()
        response = self._request("POST", "/query", json=body)
        latency_ms = (time.perf_counter() - started) * 1000
        _raise_for(response)
        return _submission(response, latency_ms)

    def status(self, question_id: str) -> QuestionStatus:
        response = self._request("GET", f"/status/{question_id}")
        _raise_for(response, question_id)
        return QuestionStatus.from_json(response.json())

    def follow(
        self,
        question_id: str,
        timeout: float,
        interval: float = POLL_SECONDS,
        on_hop: OnHop | None = None,
        on_wait: Callable[[QuestionStatus], object] | None = None,
    ) -> QuestionStatus:
        """Read the status every ``interval`` s until a terminal state or ``timeout`` s; the last status.

        ``on_hop`` sees every new hop once, oldest first; ``on_wait`` every status that is not
        terminal yet. The first read is at once; a timeout returns the last, non-terminal status.
        """
        new_hops = NewHops(on_hop)
        return poll_until(
            lambda: new_hops.report(self.status(question_id)),
            timeout=timeout,
            interval=interval,
            done=lambda status: status.terminal,
            on_wait=on_wait,
        )

    def health(self) -> ApiHealth:
        """The API's health report; a 503 is returned as a report, not raised."""
        response = self._request("GET", "/health")
        return _health(HealthReply.model_validate_json(response.content))


class AsyncStorageApiClient:
    """The same client for asyncio callers (the traffic generator keeps many requests in flight)."""

    def __init__(self, base_url: str, timeout: float = 10.0, max_connections: int = 100) -> None:
        self.base_url = base_url.rstrip("/")
        limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
        self._http = httpx.AsyncClient(base_url=self.base_url, timeout=timeout, limits=limits)

    async def __aenter__(self) -> "AsyncStorageApiClient":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._http.aclose()

    async def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            return await self._http.request(method, path, **kwargs)
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.RemoteProtocolError) as exc:
            raise _not_up(self.base_url, exc) from None
        except httpx.TimeoutException as exc:
            raise ServiceUnavailable(f"the storage API at {self.base_url} did not answer in time ({type(exc).__name__})") from None

    async def submit(self, question: str, reference_answer: str | None = None) -> Submission:
        body: dict[str, Any] = {"question": question}
        if reference_answer is not None:
            body["reference_answer"] = reference_answer
        started = time.perf_counter()
        response = await self._request("POST", "/query", json=body)
        latency_ms = (time.perf_counter() - started) * 1000
        _raise_for(response)
        return _submission(response, latency_ms)

    async def status(self, question_id: str) -> QuestionStatus:
        response = await self._request("GET", f"/status/{question_id}")
        _raise_for(response, question_id)
        return QuestionStatus.from_json(response.json())

    async def follow(
        self,
        question_id: str,
        deadline: Deadline,
        interval: float = POLL_SECONDS,
        on_hop: OnHop | None = None,
        on_error: Callable[[QactlError], object] | None = None,
    ) -> QuestionStatus | None:
        """``StorageApiClient.follow`` for asyncio callers, until ``deadline``.

        Each read comes after an ``interval`` (the caller has just been told the question was
        accepted). With ``on_error``, a read the API refuses does not end the following: it is
        reported and the next read follows; None when the deadline passes right after such a read.
        """
        new_hops = NewHops(on_hop)
        while True:
            await asyncio.sleep(interval)
            try:
                status = new_hops.report(await self.status(question_id))
            except QactlError as exc:
                if on_error is None:
                    raise
                on_error(exc)
                if deadline.passed:
                    return None
                continue
            if status.terminal or deadline.passed:
                return status


def _health(reply: HealthReply) -> ApiHealth:
    return ApiHealth(
        ok=reply.ok,
        status=reply.status,
        summary=reply.summary,
        dependencies={name: dep.model_dump() for name, dep in reply.dependencies.items()},
    )
