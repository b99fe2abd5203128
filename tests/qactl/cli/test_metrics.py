"""`qactl metrics` through the CLI: formats, sections, charts and errors, on a scratch database."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

import pytest
from typer.testing import CliRunner

from qactl.cli.main import app
from qactl.traffic.runner import RunResult, Sample
from qactl.traffic.store import record_run
from services.common.settings import QactlSettings
from tests.qactl.cli.cli_env import flat, nothing_listening, use_settings
from tests.qactl.scratch_db import execute, scratch_database

runner = CliRunner()
T0 = datetime(2026, 3, 1, tzinfo=timezone.utc)


@pytest.fixture(scope="module")
def database(infra_stack: QactlSettings) -> Iterator[QactlSettings]:
    with scratch_database(infra_stack, "metrics_cli") as settings:
        execute(
            settings,
            "INSERT INTO processing_metrics (question_id, stage, started_at, ended_at, duration_ms) VALUES ('q', 'generating', %s, %s, 120)",
            T0, T0,
        )
        execute(settings, "INSERT INTO score_history (question_id, attempt, score) VALUES ('q', 0, 0.5), ('q', 1, 0.9)")
        for mode, outcome in (("async", "validated"), ("sync", "answered")):
            samples = [Sample(1, "q", T0, outcome, perceived_ms=10.0, real_ms=1000.0)]
            record_run(settings.postgres.url, RunResult(mode, samples, T0, 1.0), questions_source="t", questions_digest="d",
                       rate=None, poll_interval=None)
        yield settings


@pytest.fixture
def cli(database: QactlSettings, monkeypatch: pytest.MonkeyPatch) -> QactlSettings:
    use_settings(monkeypatch, database)
    return database


def test_table_shows_every_section(cli: QactlSettings) -> None:
    result = runner.invoke(app, ["metrics"], env={"COLUMNS": "120"})
    assert result.exit_code == 0, result.output
    for title in ("latency by stage", "error distribution", "score per attempt", "throughput", "imported baseline", "synchronous design vs asynchronous pipeline"):
        assert title in flat(result.output)
    assert "not measured yet" in flat(result.output)  # e.g. no terminal state in the ledger


def test_json_is_parseable_and_keyed_by_section(cli: QactlSettings) -> None:
    result = runner.invoke(app, ["metrics", "--format", "json", "-s", "latency", "-s", "comparison"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert list(data) == ["latency", "comparison"]
    assert data["latency"]["rows"][0]["stage"] == "generating"
    compared = {row["metric"]: row for row in data["comparison"]["rows"]}
    assert compared["real latency p50 (ms)"]["synchronous design"] == 1000.0


def test_csv_has_one_header_per_section(cli: QactlSettings) -> None:
    result = runner.invoke(app, ["metrics", "-f", "csv", "-s", "regeneration"])
    assert result.exit_code == 0, result.output
    rows = list(csv.reader(io.StringIO(result.output)))
    assert rows[0] == ["section", "attempt", "answers", "avg_score", "avg_change_from_previous", "improved", "above_threshold"]
    assert rows[2][:2] == ["regeneration", "1"] and float(rows[2][4]) == pytest.approx(0.4)


def test_plot_writes_png_files(cli: QactlSettings, tmp_path: Path) -> None:
    result = runner.invoke(app, ["metrics", "-s", "latency", "-s", "regeneration", "-s", "comparison", "--plot", str(tmp_path / "charts")])
    assert result.exit_code == 0, result.output
    written = sorted(p.name for p in (tmp_path / "charts").iterdir())
    assert written == ["comparison.png", "latency.png", "regeneration.png"]
    for name in written:
        assert (tmp_path / "charts" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_argument_errors(cli: QactlSettings) -> None:
    unknown = runner.invoke(app, ["metrics", "-s", "bogus"])
    assert unknown.exit_code == 2 and "unknown section" in flat(unknown.output)
    assert runner.invoke(app, ["metrics", "--format", "xml"]).exit_code == 2
    missing_run = runner.invoke(app, ["metrics", "-s", "comparison", "--async-run", "999999"])
    assert missing_run.exit_code == 1 and "no finished traffic run 999999" in flat(missing_run.output)


def test_postgres_not_running(monkeypatch: pytest.MonkeyPatch) -> None:
    nothing_listening(monkeypatch)
    result = runner.invoke(app, ["metrics"])
    assert result.exit_code == 1
    assert "PostgreSQL is not reachable" in flat(result.output) and "Traceback" not in flat(result.output)
