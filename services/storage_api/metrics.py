"""Prometheus metrics of the storage API, in a registry of its own (one per app instance)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# Fine buckets at the low end: the 202 path is expected in single-digit milliseconds.
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class ApiMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "qactl_api_requests",
            "Requests by endpoint and outcome (cache_hit, db_hit, accepted, coalesced, invalid, "
            "too_large, unavailable, found, not_found, error).",
            ["endpoint", "outcome"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "qactl_api_request_seconds",
            "Time from request to response, by endpoint and outcome.",
            ["endpoint", "outcome"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.step_latency = Histogram(
            "qactl_api_step_seconds",
            "Time of each step of POST /query: cache (Redis read), database (lookup or claim, one "
            "batched statement), kafka (until the broker acknowledged the question, acks=all).",
            ["step"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.dependency_up = Gauge(
            "qactl_api_dependency_up", "1 when the dependency answered its last probe.", ["dependency"],
            registry=self.registry,
        )
        self.requeued = Counter(
            "qactl_api_requeued",
            "Accepted questions produced again because their first produce was never confirmed.",
            registry=self.registry,
        )

        # Labelled children looked up once: a label lookup costs as much as the observation.
        self._children: dict[tuple[str, str], tuple[Counter, Histogram]] = {}
        self.cache_step, self.database_step, self.kafka_step = (
            self.step_latency.labels(step) for step in ("cache", "database", "kafka")
        )

    def observe(self, endpoint: str, outcome: str, seconds: float) -> None:
        children = self._children.get((endpoint, outcome))
        if children is None:
            children = self._children[(endpoint, outcome)] = (
                self.requests.labels(endpoint, outcome), self.latency.labels(endpoint, outcome),
            )
        children[0].inc()
        children[1].observe(seconds)
