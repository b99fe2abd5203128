from __future__ import annotations

import gc

from services.storage_api.metrics import ApiMetrics


def _collections(metrics: ApiMetrics, generation: int) -> float:
    value = metrics.registry.get_sample_value("qactl_api_gc_pause_seconds_count", {"generation": str(generation)})
    return value or 0.0


def test_gc_pauses_are_timed_by_generation_while_watched() -> None:
    metrics = ApiMetrics()
    metrics.watch_gc()
    metrics.watch_gc()  # a second watch does not count each collection twice
    try:
        gc.collect(2)
        gc.collect(0)
    finally:
        metrics.unwatch_gc()
    assert _collections(metrics, 2) == 1
    assert _collections(metrics, 0) >= 1
    pause = metrics.registry.get_sample_value("qactl_api_gc_pause_seconds_sum", {"generation": "2"})
    assert pause is not None and pause > 0

    gc.collect(2)
    assert _collections(metrics, 2) == 1  # unwatched: no longer timed
