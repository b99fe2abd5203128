"""The model-server bench's figures and table (pure helpers; nothing is timed here)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "bench_llm_server.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_llm_server", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_level_is_rates_over_its_wall_time_and_the_latency_spread(bench) -> None:
    latencies = [1.0, 2.0, 3.0, 4.0]
    row = bench.level_figures(
        2, latencies, seconds=8.0, tokens=120, cpu_seconds=12.0, rss_peak=220 * bench.MIB, start_seconds=1.5, load=0.7
    )
    assert row["answers_per_second"] == 0.5
    assert row["tokens_per_second"] == 15.0
    assert row["tokens_per_answer"] == 30.0
    assert row["latency_p50"] == 2.5
    assert row["latency_p95"] == pytest.approx(3.85)
    assert row["latency_max"] == 4.0
    assert row["server_cpu_cores"] == 1.5
    assert row["rss_peak_mib"] == 220.0


def test_the_limit_is_the_level_with_most_answers_and_the_table_shows_every_level(bench) -> None:
    rows = [
        bench.level_figures(c, [1.0] * n, 10.0, tokens=30 * n, cpu_seconds=15.0, rss_peak=0, start_seconds=1.0, load=1.0)
        for c, n in ((1, 10), (2, 17), (4, 16))
    ]
    assert bench.best(rows)["concurrency"] == 2
    lines = bench.table(rows).splitlines()
    assert len(lines) == 2 + 3
    assert lines[3].startswith("| 2 | 17 | 1.70 | 51 | 30 |")
