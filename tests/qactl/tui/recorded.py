"""Recorded dashboard data: deterministic snapshots built by hand, for tests and the bench.

These stand in for a live stack only in tests; the product reads the real one.
"""

from __future__ import annotations

import threading
import time
from dataclasses import replace
from datetime import datetime, timedelta, timezone

from qactl.client.llm_server import ModelServerState
from qactl.dashboard.model import (
    ComponentRow,
    FlinkJobRow,
    GroupLag,
    Journey,
    LlmState,
    QuestionRow,
    RegenerationOutcomes,
    RetryBucket,
    Snapshot,
    TopicFlow,
    histogram,
    score_edges,
)
from services.common.backend_choice import LlmRoute
from services.common.schemas import ErrorInfo, ErrorKind, Hop, Stage

T0 = datetime(2025, 3, 14, 9, 26, 53, tzinfo=timezone.utc)
THRESHOLD = 0.75


def _flow(topic: str, end: int, rates: list[float], kind: str = "contract") -> TopicFlow:
    return TopicFlow(topic, end, rates[-1] if rates else None, tuple(rates), kind)


def recorded_snapshot() -> Snapshot:
    wave = [0, 1, 3, 6, 8, 7, 5, 4, 6, 9, 12, 10, 8, 6, 5, 4, 3, 5, 7, 8]
    scores = [0.91, 0.88, 0.86, 0.83, 0.82, 0.8, 0.79, 0.78, 0.77, 0.86, 0.87, 0.9, 0.93, 0.95,
              0.62, 0.58, 0.71, 0.74, 0.75, 0.45, 0.84, 0.85, 0.81, 0.89, 0.92]
    return Snapshot(
        taken_at=T0,
        threshold=THRESHOLD,
        delay_scale=0.05,
        poll_seconds=0.042,
        topics=(
            _flow("questions-pending", 1342, [w * 1.5 for w in wave]),
            _flow("llm-responses-success", 1198, [float(w) for w in wave]),
            _flow("llm-responses-error-overload", 96, [0, 0, 2, 3, 1, 0, 0, 0, 4, 2]),
            _flow("llm-responses-error-quota", 12, [0, 0, 0, 1, 0, 0]),
            _flow("validated-responses", 1004, [w * 0.8 for w in wave]),
            _flow("low-quality-responses", 21, [0, 0, 0, 0, 1, 0]),
            _flow("questions-dead-letter", 3, [0.0] * 10),
            _flow("retry-overload-delay-0", 61, [0, 0, 2, 3, 1, 0], "delay"),
            _flow("retry-overload-delay-1", 24, [0, 0, 0, 1, 1, 0], "delay"),
            _flow("retry-overload-delay-2", 8, [0, 0, 0, 0, 1, 0], "delay"),
            _flow("retry-quota-delay", 12, [0, 0, 0, 1, 0, 0], "delay"),
        ),
        lags=(
            GroupLag("llm-consumer", "questions-pending", 14, 2),
            GroupLag("flink-score-job", "llm-responses-success", 3, 1),
            GroupLag("persister", "validated-responses", 0, 1),
            GroupLag("retry-overload", "retry-overload-delay-0", 2, 1),
            GroupLag("retry-quota", "retry-quota-delay", 250, 1),
        ),
        retries=(
            RetryBucket("overload", 1, 61, 0.1),
            RetryBucket("overload", 2, 24, 0.2),
            RetryBucket("overload", 3, 8, 0.4),
            RetryBucket("quota", None, 12, 3.0),
        ),
        scores=histogram(scores, score_edges(THRESHOLD), THRESHOLD),
        regenerations=RegenerationOutcomes(
            validated_by_attempt={0: 880, 1: 90, 2: 25, 3: 9},
            low_quality=21,
            failed=3,
            mean_score_by_attempt={0: 0.842, 1: 0.781, 2: 0.772, 3: 0.763},
        ),
        questions=(
            QuestionRow("q-0001", Stage.validated, T0 - timedelta(seconds=1), 0, 0.912,
                        "What is the capital of France?"),
            QuestionRow("q-0002", Stage.retrying_overload, T0 - timedelta(seconds=2), 0, None,
                        "How does photosynthesis turn light into chemical energy in plants?",
                        "overload 503"),
            QuestionRow("q-0003", Stage.regenerating, T0 - timedelta(seconds=3), 1, 0.612,
                        "Explain the difference between TCP and UDP"),
            QuestionRow("q-0004", Stage.low_quality, T0 - timedelta(seconds=12), 3, 0.702,
                        "Who wrote the novel 'One Hundred Years of Solitude'?"),
            QuestionRow("q-0005", Stage.failed, T0 - timedelta(seconds=40), 0, None,
                        "What is the boiling point of water at sea level?", "exhausted"),
            QuestionRow("q-0006", Stage.queued, T0 - timedelta(seconds=0.3), 0, None, None),
        ),
        components=(
            ComponentRow("kafka", "infra", True, "broker 1 up, 11 topics"),
            ComponentRow("flink", "infra", True, "1 taskmanager, 2 slots"),
            ComponentRow("postgres", "infra", True, "accepting connections"),
            ComponentRow("redis", "infra", True, "PONG"),
            ComponentRow("llm-server", "infra", True, "SmolLM2-135M-Instruct-Q4_1, 2/2 slots busy, 1 queued"),
            ComponentRow("score-job", "job", True, "RUNNING"),
            ComponentRow("storage-api", "service", True, "healthy"),
            ComponentRow("llm-consumer", "service", True, "2 replicas"),
            ComponentRow("retry-overload", "service", True, "healthy"),
            ComponentRow("retry-quota", "service", True, "healthy"),
            ComponentRow("persister", "service", False, "no heartbeat for 12 s"),
            ComponentRow("llm-gateway", "service", True, "faults: 503 x3"),
        ),
        flink_jobs=(
            FlinkJobRow("a1b2", "qactl-score", "RUNNING", 3600.0, 118, 0, 4.2, 35.0, 1198, 1195),
        ),
        llm=recorded_llm(),
        errors={},
    )


def recorded_llm() -> LlmState:
    """The local model server, both slots busy and one request waiting."""
    model = "SmolLM2-135M-Instruct-Q4_1"
    route = LlmRoute("local", model, "http://127.0.0.1:11435/v1", "http://127.0.0.1:11436")
    server = ModelServerState(
        reachable=True, loaded=True, model=model, slots=2, requests_processing=2, requests_deferred=1,
        tokens_per_second=55.4, tokens_predicted=27293,
    )
    return LlmState(route, server, tokens_per_second=96.2)


def recorded_journey(question_id: str = "q-0002") -> Journey:
    at = T0 - timedelta(seconds=9)
    hops = (
        Hop(stage=Stage.queued, topic="questions-pending", at=at),
        Hop(stage=Stage.generating, topic="questions-pending", at=at + timedelta(milliseconds=20)),
        Hop(stage=Stage.retrying_overload, topic="retry-overload-delay-0", at=at + timedelta(seconds=1.2),
            error=ErrorInfo(kind=ErrorKind.overload, status_code=503, message="Service Unavailable"),
            delay_seconds=2.0),
        Hop(stage=Stage.generating, topic="questions-pending", at=at + timedelta(seconds=3.3)),
        Hop(stage=Stage.scoring, topic="llm-responses-success", at=at + timedelta(seconds=4.5)),
        Hop(stage=Stage.regenerating, topic="questions-pending", at=at + timedelta(seconds=4.9),
            score=0.612, attempt=0),
        Hop(stage=Stage.scoring, topic="llm-responses-success", at=at + timedelta(seconds=6.1), attempt=1),
        Hop(stage=Stage.validated, topic="validated-responses", at=at + timedelta(seconds=6.4),
            score=0.884, attempt=1),
    )
    return Journey(question_id, hops, "How does photosynthesis turn light into chemical energy in plants?",
                   Stage.validated)


class RecordedSource:
    """Serves recorded snapshots; ``delay`` makes each poll slow, and concurrency is counted."""

    def __init__(self, snapshot: Snapshot | None = None, delay: float = 0.0) -> None:
        self.base = snapshot or recorded_snapshot()
        self.delay = delay
        self.calls = 0
        self.running = 0
        self.max_running = 0
        self.closed = False
        self._lock = threading.Lock()

    def snapshot(self) -> Snapshot:
        with self._lock:
            self.calls += 1
            self.running += 1
            self.max_running = max(self.max_running, self.running)
        try:
            if self.delay:
                time.sleep(self.delay)
            return replace(self.base)
        finally:
            with self._lock:
                self.running -= 1

    def journey(self, question_id: str) -> Journey:
        return recorded_journey(question_id)

    def close(self) -> None:
        self.closed = True
