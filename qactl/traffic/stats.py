"""Percentiles and the summary of a traffic run, as `qactl traffic` prints them.

``percentile`` interpolates linearly between closest ranks, like PostgreSQL's
``percentile_cont`` used by the ``traffic_summary`` view, so the figures printed at the end of a
run and those `qactl metrics` reads back agree.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from qactl.traffic.runner import RunResult


def percentile(values: Sequence[float], fraction: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    position = fraction * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


@dataclass
class Summary:
    mode: str
    samples: int
    succeeded: int
    from_store: int
    perceived_ms: dict[str, float | None]
    real_ms: dict[str, float | None]
    wall_seconds: float
    throughput_per_s: float | None
    outcomes: dict[str, int] = field(default_factory=dict)

    @property
    def success_percent(self) -> float | None:
        return round(100.0 * self.succeeded / self.samples, 2) if self.samples else None


def _percentiles(values: list[float]) -> dict[str, float | None]:
    return {name: percentile(values, q) for name, q in (("p50", 0.5), ("p95", 0.95), ("p99", 0.99))}


def summarize(result: RunResult) -> Summary:
    samples = result.samples
    perceived = [s.perceived_ms for s in samples if s.perceived_ms is not None]
    real = [s.real_ms for s in samples if s.real_ms is not None]
    return Summary(
        mode=result.mode,
        samples=len(samples),
        succeeded=sum(s.success for s in samples),
        from_store=sum(s.from_store for s in samples),
        perceived_ms=_percentiles(perceived),
        real_ms=_percentiles(real),
        wall_seconds=result.wall_seconds,
        throughput_per_s=(len(real) / result.wall_seconds) if result.wall_seconds > 0 else None,
        outcomes=dict(Counter(s.outcome for s in samples)),
    )
