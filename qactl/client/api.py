"""UI-free client of the storage API: submit a question, read its status, read the API's health.

Used by ``qactl ask``, the demos and the traffic generator. Expected failures are ``QactlError``s
with a sentence the operator can act on: the API not up, a request refused (4xx), the pipeline
unable to accept (503), an unknown question (404).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import httpx

from qactl.errors import QuestionNotFound, RequestRejected, ServiceUnavailable, StackNotRunning
from services.common.schemas import TERMINAL_STAGES, Hop, Stage


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
        state = Stage(data["state"])
        hops = []
        for item in data.get("hops") or []:
            try:
                hops.append(Hop.model_validate(item))
            except ValueError:
                continue
        return cls(
            question_id=data["question_id"],
            state=state,
            terminal=bool(data.get("terminal", state in TERMINAL_STAGES)),
            hops=hops,
            answer=data.get("answer"),
            score=data.get("score"),
            model=data.get("model"),
            reason=data.get("reason"),
            warning=data.get("warning"),
            raw=data,
        )


@dataclass
class ApiHealth:
    ok: bool
    status: str
    summary: str
    dependencies: dict[str, dict[str, Any]]


def _submission(response: httpx.Response, latency_ms: float) -> Submission:
    data = response.json()
    return Submission(
        question_id=data["question_id"],
        http_status=response.status_code,
        status=data.get("status", ""),
        latency_ms=latency_ms,
        answer=data.get("answer"),
        score=data.get("score"),
        model=data.get("model"),
        source=data.get("source"),
        status_url=data.get("status_url"),
        coalesced=bool(data.get("coalesced", False)),
    )


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

    def health(self) -> ApiHealth:
        """The API's health report; a 503 is returned as a report, not raised."""
        response = self._request("GET", "/health")
        data = response.json()
        return ApiHealth(
            ok=bool(data.get("ok")),
            status=str(data.get("status", "unknown")),
            summary=str(data.get("summary", "")),
            dependencies=dict(data.get("dependencies", {})),
        )


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
