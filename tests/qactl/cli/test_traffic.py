"""`qactl traffic` through the CLI: arguments, errors, the synchronous baseline against the real
gateway, and pipeline runs against the real storage API (answers already stored: 200s)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from qactl.cli.main import app
from qactl.importer.load import import_file
from services.common.settings import QactlSettings
from tests.qactl.cli.cli_env import flat, nothing_listening, use_settings
from tests.qactl.scratch_db import execute, scratch_database
from tests.services.pipeline import Gateway, pipeline_settings, specs_of
from tests.services.storage_stack import process

runner = CliRunner()


def test_the_arguments() -> None:
    result = runner.invoke(app, ["traffic", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    for option in ("--file", "--rate", "--count", "--poll-interval", "--sync-baseline", "--unique", "--json"):
        assert option in flat(result.output)
    assert runner.invoke(app, ["traffic", "--rate", "-1"]).exit_code == 2
    assert runner.invoke(app, ["traffic", "--count", "0"]).exit_code == 2
    assert runner.invoke(app, ["traffic", "--poll-interval", "0"]).exit_code == 2


def test_nothing_to_run() -> None:
    result = runner.invoke(app, ["traffic", "--no-pipeline"])
    assert result.exit_code == 1 and "add --sync-baseline" in flat(result.output)


def test_a_missing_questions_file(tmp_path: Path) -> None:
    result = runner.invoke(app, ["traffic", "--file", str(tmp_path / "none.txt")])
    assert result.exit_code == 1 and "does not exist" in flat(result.output)


def test_stack_not_running(monkeypatch: pytest.MonkeyPatch) -> None:
    nothing_listening(monkeypatch)
    result = runner.invoke(app, ["traffic", "--count", "2"])
    assert result.exit_code == 1
    assert "storage API is not reachable" in flat(result.output) and "qactl up" in flat(result.output)
    baseline = runner.invoke(app, ["traffic", "--count", "2", "--sync-baseline", "--no-pipeline", "--no-record"])
    assert baseline.exit_code == 1 and "LLM backend is not reachable" in flat(baseline.output)


@pytest.fixture(scope="module")
def stack(infra_stack: QactlSettings) -> Iterator[QactlSettings]:
    """The session stack with a scratch database, the storage API on it, and the gateway."""
    with scratch_database(pipeline_settings(infra_stack), "traffic_cli") as settings:
        (api,) = specs_of(settings, "storage-api")
        with process(settings, api), Gateway(settings):
            yield settings


@pytest.fixture
def cli(stack: QactlSettings, monkeypatch: pytest.MonkeyPatch) -> QactlSettings:
    use_settings(monkeypatch, stack)
    return stack


def questions_file(tmp_path: Path) -> Path:
    path = tmp_path / "questions.yaml"
    path.write_text(
        "- question: What is Apache Kafka?\n  reference_answer: A distributed log.\n"
        "- What is Redis?\n- What is a cache hit?\n"
    )
    return path


def test_sync_baseline_calls_the_llm_one_by_one_and_records_the_run(cli: QactlSettings, tmp_path: Path) -> None:
    result = runner.invoke(
        app, ["traffic", "--file", str(questions_file(tmp_path)), "--count", "5", "--sync-baseline", "--no-pipeline", "--json"]
    )
    assert result.exit_code == 0, result.output
    (summary,) = json.loads(result.output)
    assert summary["mode"] == "sync" and summary["samples"] == 5 and summary["succeeded"] == 5
    assert summary["perceived_ms"] == summary["real_ms"]  # the synchronous design: the caller waits for the answer
    rows = execute(cli, "SELECT mode, requested_count, backend FROM traffic_runs WHERE id = %s", summary["run_id"])
    assert rows[0][:2] == ("sync", 5) and "simulated" in rows[0][2]
    outcomes = execute(cli, "SELECT outcome, http_status, perceived_ms = real_ms FROM traffic_samples WHERE run_id = %s", summary["run_id"])
    assert outcomes == [("answered", 200, True)] * 5


def test_sync_baseline_counts_llm_errors_as_failed_requests(cli: QactlSettings, tmp_path: Path) -> None:
    from qactl.client.gateway import GatewayClient

    with GatewayClient.from_settings(cli) as gateway:
        gateway.clear_faults()
        gateway.inject_fault("503", count=2)
        try:
            result = runner.invoke(
                app, ["traffic", "--file", str(questions_file(tmp_path)), "--sync-baseline", "--no-pipeline", "--json", "--no-record"]
            )
        finally:
            gateway.clear_faults()
    assert result.exit_code == 0, result.output
    (summary,) = json.loads(result.output)
    assert summary["outcomes"] == {"error": 2, "answered": 1}
    assert summary["success_percent"] == pytest.approx(33.33)


def test_pipeline_run_on_stored_answers_is_answered_at_once(cli: QactlSettings, tmp_path: Path) -> None:
    """Questions answered before come back 200 from the store: perceived = real, marked as such."""
    stored = tmp_path / "response.json"
    stored.write_text(json.dumps([{"question": f"Stored question {i}?", "answer": "yes", "score": 0.9} for i in range(4)]))
    import_file(cli.postgres.url, stored, 0.75)
    asked = tmp_path / "asked.txt"
    asked.write_text("\n".join(f"Stored question {i}?" for i in range(4)))
    result = runner.invoke(app, ["traffic", "--file", str(asked), "--rate", "20", "--poll-interval", "0.1"], env={"COLUMNS": "160"})
    assert result.exit_code == 0, result.output
    assert "asynchronous pipeline" in flat(result.output) and "perceived latency p50" in flat(result.output)
    assert "answered from the store" in flat(result.output) and "4 of 4 questions were answered from the store" in flat(result.output)
    (run_id,) = execute(cli, "SELECT max(id) FROM traffic_runs WHERE mode = 'async'")[0]
    samples = execute(cli, "SELECT outcome, http_status, from_store, success FROM traffic_samples WHERE run_id = %s", run_id)
    assert samples == [("validated", 200, True, True)] * 4
    rate = execute(cli, "SELECT rate, poll_interval_ms FROM traffic_runs WHERE id = %s", run_id)
    assert rate == [(20.0, 100.0)]


def test_unique_questions_are_accepted_by_the_pipeline(cli: QactlSettings, tmp_path: Path) -> None:
    """With --unique every question is new: 202 and then polled (no consumer runs here: timeout)."""
    result = runner.invoke(
        app,
        ["traffic", "--file", str(questions_file(tmp_path)), "--count", "2", "--unique", "--timeout", "1",
         "--poll-interval", "0.2", "--json", "--no-record"],
    )
    assert result.exit_code == 0, result.output
    (summary,) = json.loads(result.output)
    assert summary["outcomes"] == {"timeout": 2}
    assert summary["perceived_ms"]["p50"] is not None and summary["real_ms"]["p50"] is None
