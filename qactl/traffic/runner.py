"""Run traffic: the asynchronous pipeline through the storage API, or the synchronous baseline.

Pipeline (``run_async``): questions are sent open-loop at ``rate`` per second (each at its
scheduled time, whatever the previous ones are doing, so a slow pipeline cannot slow the
arrivals down); each ``POST /query`` is timed (the *perceived* latency: until the 202, or the
200 of a stored answer), then its ``/status`` is polled every ``poll_interval`` seconds until a
terminal state (``AsyncStorageApiClient.follow``; the *real* latency: until the answer is there).

Synchronous baseline (``run_sync``): the original design, in which each request blocks on the
LLM: the same questions, one after another, sent straight to the LLM backend the llm-consumers
use (``choose_backend``), with the same prompt; perceived = real = the call's duration, and a
failed call is a failed request (no retries, no scoring).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from qactl.client.api import ApiHealth, AsyncStorageApiClient, StorageApiClient, Submission
from qactl.errors import QactlError, StackNotRunning
from qactl.traffic.questions import TrafficQuestion
from services.common.schemas import Stage
from services.common.settings import QactlSettings
from services.common.waiting import Deadline

SUCCESS_STATES = frozenset({Stage.validated.value, Stage.low_quality.value})


@dataclass
class Sample:
    """One question of a run; latencies in milliseconds."""

    seq: int
    question: str
    sent_at: datetime
    outcome: str  # validated, low_quality, failed, answered, error, rejected, timeout
    question_id: str | None = None
    http_status: int | None = None
    perceived_ms: float | None = None
    real_ms: float | None = None
    from_store: bool = False
    score: float | None = None
    detail: str | None = None

    @property
    def success(self) -> bool:
        return self.outcome in SUCCESS_STATES or self.outcome == "answered"


@dataclass
class RunResult:
    mode: str  # async or sync
    samples: list[Sample]
    started_at: datetime
    wall_seconds: float
    backend: str | None = None
    model: str | None = None
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def finished(self) -> list[Sample]:
        return [s for s in self.samples if s.real_ms is not None]


# (sample just finished, samples finished so far, total); called on the event loop thread.
OnSample = Callable[[Sample, int, int], None]


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


async def _follow(
    client: AsyncStorageApiClient,
    submission: Submission,
    sample: Sample,
    deadline: Deadline,
    poll_interval: float,
) -> None:
    """Follow the question until a terminal state or the deadline; fills the sample's outcome."""

    def refused(exc: QactlError) -> None:
        # A transient refusal of one poll does not end the question: poll again.
        sample.detail = f"status poll: {exc}"

    status = await client.follow(submission.question_id, deadline, poll_interval, on_error=refused)
    if status is None:
        sample.outcome = "timeout"
    elif status.terminal:
        sample.real_ms = _ms(time.perf_counter() - deadline.started)
        sample.outcome = status.state.value
        sample.score = status.score
        sample.detail = status.reason
    else:
        sample.outcome = "timeout"
        sample.detail = f"still {status.state.value} after {deadline.seconds:.0f} s"


async def _one_async(
    client: AsyncStorageApiClient,
    seq: int,
    question: TrafficQuestion,
    poll_interval: float,
    timeout: float,
    api_down_is_refusal: bool = False,
) -> Sample:
    sample = Sample(seq=seq, question=question.question, sent_at=_now(), outcome="rejected")
    # Perceived and real latency both count from here, on the same clock as the deadline.
    deadline = Deadline(timeout, clock=time.perf_counter)
    started = deadline.started
    try:
        submission = await client.submit(question.question, question.reference_answer)
    except StackNotRunning:
        if not api_down_is_refusal:
            raise
        sample.perceived_ms = _ms(time.perf_counter() - started)
        sample.detail = "the storage API did not answer"
        return sample
    except QactlError as exc:
        # Refused (4xx) or not accepted right now (503): the asker got no answer.
        sample.perceived_ms = _ms(time.perf_counter() - started)
        sample.http_status = getattr(exc, "status_code", None)
        sample.detail = str(exc)
        return sample
    sample.perceived_ms = _ms(time.perf_counter() - started)
    sample.http_status = submission.http_status
    sample.question_id = submission.question_id
    if submission.answered:
        # Stored already: the answer came with the 200, the pipeline was not involved.
        sample.from_store = True
        sample.real_ms = sample.perceived_ms
        sample.outcome = submission.status if submission.status in SUCCESS_STATES else "validated"
        sample.score = submission.score
        sample.detail = f"answered from the {submission.source}"
        return sample
    await _follow(client, submission, sample, deadline, poll_interval)
    return sample


async def run_async(
    settings: QactlSettings,
    questions: list[TrafficQuestion],
    rate: float | None,
    poll_interval: float = 0.5,
    timeout: float = 300.0,
    on_sample: OnSample | None = None,
    api_down_is_refusal: bool = False,
) -> RunResult:
    """Send ``questions`` through the storage API at ``rate``/s (None: all at once).

    The API must answer when the run starts. Later, a question the API does not answer at all
    ends the run (``StackNotRunning``), unless ``api_down_is_refusal``: then it is a refused
    question like a 503 (`qactl chaos` kills the API on purpose).
    """
    started_at = _now()
    finished = 0
    limits = max(16, min(512, len(questions)))
    # Fail fast and clearly when the API is not up, before the clock of the run matters.
    health = await asyncio.to_thread(_api_health, settings)
    if not health.ok:
        raise StackNotRunning(f"the storage API is not accepting questions: {health.summary}")
    t0 = time.perf_counter()
    async with AsyncStorageApiClient(settings.api.base_url, max_connections=limits) as client:
        async def scheduled(seq: int, question: TrafficQuestion) -> Sample:
            nonlocal finished
            if rate:
                delay = t0 + (seq - 1) / rate - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
            sample = await _one_async(client, seq, question, poll_interval, timeout, api_down_is_refusal)
            finished += 1
            if on_sample is not None:
                on_sample(sample, finished, len(questions))
            return sample

        tasks = [asyncio.create_task(scheduled(i, q)) for i, q in enumerate(questions, start=1)]
        try:
            samples = list(await asyncio.gather(*tasks))
        except BaseException:
            for task in tasks:
                task.cancel()
            raise
    return RunResult(
        mode="async",
        samples=samples,
        started_at=started_at,
        wall_seconds=time.perf_counter() - t0,
        settings=run_settings(settings, rate=rate, poll_interval=poll_interval),
    )


async def run_sync(
    settings: QactlSettings,
    questions: list[TrafficQuestion],
    on_sample: OnSample | None = None,
) -> RunResult:
    """The synchronous design: each question blocks on one direct LLM call, one after another."""
    from services.common.prompts import build_prompt
    from services.llm_consumer.backends import LLMCallError, choose_backend

    backend, description = choose_backend(settings)
    started_at = _now()
    t0 = time.perf_counter()
    samples: list[Sample] = []
    try:
        for seq, question in enumerate(questions, start=1):
            sample = Sample(seq=seq, question=question.question, sent_at=_now(), outcome="error")
            started = time.perf_counter()
            try:
                result = await backend.generate(build_prompt(question.question))
            except LLMCallError as exc:
                sample.http_status = exc.info.status_code
                sample.detail = f"{exc.info.kind.value}: {exc.info.message}"[:500]
            else:
                sample.outcome = "answered"
                sample.http_status = 200
                sample.detail = f"{result.backend} ({result.model})"
            elapsed = _ms(time.perf_counter() - started)
            sample.perceived_ms = sample.real_ms = elapsed
            samples.append(sample)
            if on_sample is not None:
                on_sample(sample, seq, len(questions))
            if seq == 1 and sample.outcome == "error" and sample.http_status is None and "connection" in (sample.detail or ""):
                raise StackNotRunning(f"the LLM backend is not reachable: {description}: {sample.detail}")
    finally:
        await backend.aclose()
    return RunResult(
        mode="sync",
        samples=samples,
        started_at=started_at,
        wall_seconds=time.perf_counter() - t0,
        backend=description,
        model=getattr(backend, "model", None),
        settings=run_settings(settings),
    )


def _api_health(settings: QactlSettings) -> ApiHealth:
    with StorageApiClient(settings.api.base_url, timeout=5.0) as client:
        return client.health()


def run_settings(settings: QactlSettings, **extra: Any) -> dict[str, Any]:
    """What shaped a run besides its questions, recorded with it."""
    return {
        "llm_consumer_replicas": settings.services.llm_consumer_replicas,
        "llm_concurrency": settings.llm.concurrency,
        "llm_backend_setting": settings.llm.backend,
        "llm_timeout_seconds": settings.llm.timeout_seconds,
        "gateway_latency_ms": [settings.gateway.latency_ms_min, settings.gateway.latency_ms_max],
        "delay_scale": settings.policies.delay_scale,
        **{k: v for k, v in extra.items() if v is not None},
    }
