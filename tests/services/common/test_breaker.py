"""The shared circuit breaker's states, on a clock the test moves (no Redis needed for the logic;
the hung-Redis behaviour on the real stack is tests/integration/test_kafka_outage.py's)."""

from __future__ import annotations

from prometheus_client import REGISTRY

from services.common.breaker import CircuitBreaker


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def count(name: str, result: str) -> float:
    return REGISTRY.get_sample_value("qactl_redis_breaker_calls_total", {"breaker": name, "result": result}) or 0.0


def failing() -> None:
    raise OSError("timed out")


def test_after_a_failure_calls_are_skipped_until_the_cooldown_then_one_probe_closes_it() -> None:
    clock = Clock()
    breaker = CircuitBreaker("unit-a", cooldown_seconds=2.0, clock=clock)
    calls: list[str] = []
    assert breaker.call("w", lambda: calls.append("first") or "done", "skipped") == "done"
    assert breaker.call("w", failing, "skipped") == "skipped" and breaker.open
    for _ in range(50):  # a burst of messages during the cool-down: none of them waits on Redis
        assert breaker.call("w", lambda: calls.append("during") or "done", "skipped") == "skipped"
    assert calls == ["first"] and count("unit-a", "skipped") == 50
    clock.now += 2.0
    assert breaker.allow()  # the cool-down is over: this one probes ...
    assert not breaker.allow()  # ... and the others keep skipping meanwhile
    breaker.succeeded()
    assert not breaker.open and breaker.call("w", lambda: "done", "skipped") == "done"
    assert REGISTRY.get_sample_value("qactl_redis_breaker_trips_total", {"breaker": "unit-a"}) == 1
    assert REGISTRY.get_sample_value("qactl_redis_breaker_open", {"breaker": "unit-a"}) == 0


def test_a_failed_probe_opens_it_for_another_cooldown() -> None:
    clock = Clock()
    breaker = CircuitBreaker("unit-b", cooldown_seconds=1.0, clock=clock)
    breaker.call("w", failing, None)
    clock.now += 1.0
    assert breaker.call("w", failing, "default") == "default"  # the probe, failing
    assert breaker.open and not breaker.allow()
    clock.now += 0.99
    assert not breaker.allow()
    clock.now += 0.01
    assert breaker.allow()
    assert count("unit-b", "failed") == 2
    assert REGISTRY.get_sample_value("qactl_redis_breaker_trips_total", {"breaker": "unit-b"}) == 1
    assert REGISTRY.get_sample_value("qactl_redis_breaker_open", {"breaker": "unit-b"}) == 1
