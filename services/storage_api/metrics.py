"""Prometheus metrics of the storage API, in a registry of its own (one per app instance)."""

from __future__ import annotations

import gc
import time
from typing import Any

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

        self.gc_pause = Histogram(
            "qactl_api_gc_pause_seconds",
            "Pauses of the Python garbage collector in the API process, by generation: every "
            "request in flight waits for them.",
            ["generation"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        frozen = Gauge(
            "qactl_api_gc_frozen_objects",
            "Objects kept out of the collector's reach since startup (gc.freeze): what a full "
            "collection no longer walks.",
            registry=self.registry,
        )
        frozen.set_function(gc.get_freeze_count)
        self._gc_children = [self.gc_pause.labels(str(generation)) for generation in range(3)]
        self._gc_started = 0.0

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

    def watch_gc(self) -> None:
        """Time every collection from now on (``unwatch_gc`` stops it; the hook is process-wide)."""
        if self._on_gc not in gc.callbacks:
            gc.callbacks.append(self._on_gc)

    def unwatch_gc(self) -> None:
        if self._on_gc in gc.callbacks:
            gc.callbacks.remove(self._on_gc)

    def _on_gc(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._gc_started = time.perf_counter()
        else:
            self._gc_children[info["generation"]].observe(time.perf_counter() - self._gc_started)
