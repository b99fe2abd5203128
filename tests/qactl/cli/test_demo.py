"""`qactl demo` through the CLI: arguments and errors, and a case run against the real storage
API (an answer already stored: 200 at once, no Kafka traffic, no LLM call)."""

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
from tests.qactl.scratch_db import scratch_database
from tests.services.pipeline import Gateway, pipeline_settings, specs_of
from tests.services.storage_stack import process

runner = CliRunner()


def test_the_arguments() -> None:
    result = runner.invoke(app, ["demo", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    for word in ("normal", "overload", "quota", "regeneration", "cache-hit", "all", "--json"):
        assert word in result.output
    assert runner.invoke(app, ["demo"]).exit_code == 2  # a case is required


def test_an_unknown_case_lists_the_cases() -> None:
    result = runner.invoke(app, ["demo", "nosuch"])
    assert result.exit_code == 1
    assert "no demo case 'nosuch'" in flat(result.output) and "cache-hit" in result.output


def test_an_invalid_case_file_says_what_is_wrong(tmp_path: Path) -> None:
    path = tmp_path / "mine.yaml"
    path.write_text("name: mine\ntitle: t\nasks:\n  - question: Not known?\n    expect: {response: answered, terminal: validated}\n")
    result = runner.invoke(app, ["demo", str(path)])
    assert result.exit_code == 1 and "give its reference_answer" in flat(result.output)


def test_stack_not_running(monkeypatch: pytest.MonkeyPatch) -> None:
    nothing_listening(monkeypatch)
    for args in (["demo", "normal"], ["demo", "all", "--json"]):
        result = runner.invoke(app, args)
        assert result.exit_code == 1
        assert "storage API is not reachable" in flat(result.output) and "qactl up" in result.output
        assert "Traceback" not in result.output


@pytest.fixture(scope="module")
def api_only(infra_stack: QactlSettings) -> Iterator[QactlSettings]:
    """The storage API on a scratch database; no gateway, no consumers, no Flink job."""
    with scratch_database(pipeline_settings(infra_stack), "demo_cli") as settings:
        (api,) = specs_of(settings, "storage-api")
        with process(settings, api):
            yield settings


def test_a_case_with_faults_needs_the_gateway(api_only: QactlSettings, monkeypatch: pytest.MonkeyPatch) -> None:
    use_settings(monkeypatch, api_only)
    result = runner.invoke(app, ["demo", "overload"])
    assert result.exit_code == 1
    assert "llm-gateway does not answer" in flat(result.output)


REFERENCE = "Stored answers come from PostgreSQL or Redis."
STORED_CASE = """
name: stored
title: "Stored: a question answered before comes back at once"
unique: false
asks:
  - question: {question}
    reference_answer: {reference}
    timeout_seconds: 3
    expect:
      response: answered
      terminal: validated
      llm_calls: 0
      kafka_traffic: none
"""


def test_a_case_file_runs_against_the_api(api_only: QactlSettings, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    use_settings(monkeypatch, api_only)
    question = "Where do stored answers come from?"
    stored = tmp_path / "response.json"
    stored.write_text(json.dumps([{"question": question, "answer": "From the store.", "score": 0.93,
                                   "reference_answer": REFERENCE}]))
    import_file(api_only.postgres.url, stored, 0.75)
    case = tmp_path / "stored.yaml"
    case.write_text(STORED_CASE.format(question=question, reference=REFERENCE))
    with Gateway(api_only):
        narrated = runner.invoke(app, ["demo", str(case)], env={"COLUMNS": "200"})
        as_json = runner.invoke(app, ["demo", str(case), "--json"])
    assert narrated.exit_code == 0, narrated.output
    text = flat(narrated.output)
    assert "POST /query -> 200" in text and "answered at once" in text
    assert "ok llm_calls: 0 LLM call(s), expected 0" in text
    assert "ok kafka_traffic: questions-pending end offsets unchanged" in text
    assert "stored: the expected path happened" in text
    assert as_json.exit_code == 0, as_json.output
    (result,) = json.loads(as_json.output)
    assert result["ok"] and result["asks"][0]["http_status"] == 200
    assert {c["name"] for c in result["asks"][0]["checks"]} == {"response", "terminal", "llm_calls", "kafka_traffic"}


def test_a_case_whose_expectation_fails_exits_2(api_only: QactlSettings, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    use_settings(monkeypatch, api_only)
    question = "Which stored answer is low quality?"
    stored = tmp_path / "response.json"
    stored.write_text(json.dumps([{"question": question, "answer": "Off topic.", "status": "low_quality",
                                   "reference_answer": REFERENCE}]))
    import_file(api_only.postgres.url, stored, 0.75)
    case = tmp_path / "expects-validated.yaml"
    case.write_text(STORED_CASE.format(question=question, reference=REFERENCE).replace("      llm_calls: 0\n", ""))
    result = runner.invoke(app, ["demo", str(case)], env={"COLUMNS": "200"})
    assert result.exit_code == 2, result.output
    # A low-quality answer is not served again: the question is accepted to run again.
    assert "FAIL response: POST /query answered 202, expected 200" in flat(result.output)
    assert "the expected path did NOT happen" in flat(result.output)
