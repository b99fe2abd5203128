"""The pipeline bench's pure helpers: its settings as QACTL_* variables, the calls it counts, the window."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from services.common.settings import QactlSettings

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "bench_llm_pipeline.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_llm_pipeline", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_cli_gets_the_same_settings_as_the_bench(bench, monkeypatch) -> None:
    values = bench.stack_values(30000, "/tmp/qactl-bench-x")
    env = bench.environment(values)
    assert env["QACTL_STATE_DIR"] == "/tmp/qactl-bench-x"
    assert env["QACTL_KAFKA__CONTROLLER_PORT"] == "30093"
    assert env["QACTL_LLM__BACKEND"] == "local"
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    from_env = QactlSettings()
    direct = QactlSettings.model_validate(values)
    assert from_env.llm_server.port == direct.llm_server.port == 30436
    assert from_env.api.base_url == direct.api.base_url


def test_every_call_answered_by_the_model_server_counts_and_faults_do_not(bench) -> None:
    outcomes = {"upstream_ok": 10, "upstream_500": 1, "fault_503": 3, "ok": 2}
    assert bench.upstream_calls(outcomes) == 11


def test_the_rate_is_taken_between_the_samples_inside_the_window(bench) -> None:
    samples = [(0.0, 0), (1.0, 2), (2.0, 5), (3.0, 7), (4.0, 7)]
    assert bench.window_rate(samples, 0.5, 3.5) == (2.5, 2.0, 5)
    with pytest.raises(ValueError):
        bench.window_rate(samples, 0.2, 0.8)
