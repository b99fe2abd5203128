"""A circuit breaker for calls to Redis, which every stage uses only as a best-effort shortcut.

A stopped Redis refuses at once, but a hung one (it accepts connections and never answers, e.g.
SIGSTOP) costs the whole socket timeout on every call: 0.5 s per message in the Flink job, the
retry services and the persister. After a failure the breaker is *open*: calls are skipped
(they return their default at once) for ``cooldown_seconds``; then one call is let through as a
probe (*half-open*): its success closes the breaker, its failure opens it for another cool-down.
So a hung Redis costs at most one timeout per cool-down, not one per message.

The state and the counts are exported in ``/metrics`` (``qactl_redis_breaker_*``, labelled with
the breaker's name; the Flink job registers them as Flink gauges instead, ``flink/job.py``); the
storage API's ``RedisView`` keeps the same state in the same class.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TypeVar

from prometheus_client import Counter, Gauge

log = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_COOLDOWN_SECONDS = 2.0

CALLS = Counter(
    "qactl_redis_breaker_calls",
    "Redis calls through a circuit breaker, by result (ok, failed, skipped while open)",
    ["breaker", "result"],
)
TRIPS = Counter("qactl_redis_breaker_trips", "Times a circuit breaker opened", ["breaker"])
OPEN = Gauge("qactl_redis_breaker_open", "1 while the breaker skips Redis calls", ["breaker"])


class CircuitBreaker:
    """Thread-safe; ``allow`` before a call, then ``succeeded`` or ``failed`` (or use ``call``)."""

    def __init__(
        self,
        name: str,
        cooldown_seconds: float = DEFAULT_COOLDOWN_SECONDS,
        errors: tuple[type[BaseException], ...] = (OSError,),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self.cooldown_seconds = cooldown_seconds
        self.errors = errors
        self._clock = clock
        self._lock = threading.Lock()
        self._open_until = 0.0
        self._opened = False
        self.detail = "not used yet"
        # The same counts as the Prometheus metrics, for processes that export their own way (Flink).
        self.counts = {"ok": 0, "failed": 0, "skipped": 0, "trips": 0}
        OPEN.labels(name).set(0)

    @property
    def open(self) -> bool:
        """True while calls are skipped (a cool-down not over yet, or a probe under way)."""
        return self._opened

    def allow(self) -> bool:
        """Whether to make the call now: closed, or open with the cool-down over (the probe)."""
        with self._lock:
            if not self._opened:
                return True
            now = self._clock()
            if now < self._open_until:
                CALLS.labels(self.name, "skipped").inc()
                self.counts["skipped"] += 1
                return False
            # Half-open: this caller probes; others keep skipping until it reports.
            self._open_until = now + self.cooldown_seconds
            return True

    def succeeded(self) -> None:
        with self._lock:
            CALLS.labels(self.name, "ok").inc()
            self.counts["ok"] += 1
            if self._opened:
                log.info("redis answers again (%s): calls resume", self.name)
            self._opened, self._open_until, self.detail = False, 0.0, "ok"
            OPEN.labels(self.name).set(0)

    def failed(self, detail: str) -> None:
        with self._lock:
            CALLS.labels(self.name, "failed").inc()
            self.counts["failed"] += 1
            if not self._opened:
                TRIPS.labels(self.name).inc()
                self.counts["trips"] += 1
                log.warning(
                    "redis unavailable (%s): %s; calls skipped, tried again every %.1f s",
                    self.name, detail, self.cooldown_seconds,
                )
            self._opened, self._open_until = True, self._clock() + self.cooldown_seconds
            self.detail = f"unreachable: {detail}"
            OPEN.labels(self.name).set(1)

    def call(self, what: str, fn: Callable[[], T], default: T) -> T:
        """``fn()`` unless the breaker is open; ``default`` when skipped or when it fails."""
        if not self.allow():
            return default
        try:
            result = fn()
        except self.errors as exc:
            self.failed(f"{what}: {exc}")
            return default
        self.succeeded()
        return result
