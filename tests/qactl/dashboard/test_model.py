"""The dashboard's model: rates, bins and retries computed from what the probes answer."""

from __future__ import annotations

from qactl.dashboard.model import FlowTracker, histogram, retries_from_delay_topics, score_edges
from services.common.settings import load_settings


def test_flow_tracker_turns_offsets_into_rates_and_history():
    flow = FlowTracker(history=3)
    first = flow.update({"a": 100, "b": 5}, now=10.0, kinds={"b": "delay"})
    assert [f.rate for f in first] == [None, None]
    assert first[1].kind == "delay"
    flow.update({"a": 120, "b": 5}, now=12.0, kinds={})
    flow.update({"a": 150, "b": 6}, now=13.0, kinds={})
    flow.update({"a": 150, "b": 6}, now=14.0, kinds={})
    last = flow.update({"a": 10, "b": 6}, now=15.0, kinds={})  # topic recreated: offsets restart
    a = last[0]
    assert a.end_offset == 10
    assert a.rate == 0.0
    assert a.history == (30.0, 0.0, 0.0)  # only the last three of 10, 30, 0, 0


def test_score_edges_put_the_threshold_on_an_edge():
    for threshold in (0.75, 0.8, 0.62):
        edges = score_edges(threshold)
        assert any(abs(e - threshold) < 1e-9 for e in edges)
        assert edges[0] <= 0.0 + 0.05 and edges[-1] >= 1.0 - 0.05


def test_histogram_keeps_out_of_range_scores():
    hist = histogram([-0.2, 1.3, 0.5], score_edges(0.75), 0.75)
    assert hist.total == 3
    assert hist.counts[0] == 1 and hist.counts[-1] == 1


def test_retries_come_from_the_delay_topics_with_the_policy_delays():
    settings = load_settings(policies={"delay_scale": 0.5})
    offsets = {"retry-overload-delay-0": 7, "retry-overload-delay-1": 3, "retry-overload-delay-2": 1,
               "retry-quota-delay": 4, "questions-pending": 99}
    buckets = retries_from_delay_topics(offsets, settings)
    assert [(b.kind, b.attempt, b.count, b.delay_seconds) for b in buckets] == [
        ("overload", 1, 7, 0.5),
        ("overload", 2, 3, 1.0),
        ("overload", 3, 1, 2.0),
        ("quota", None, 4, 30.0),
    ]
