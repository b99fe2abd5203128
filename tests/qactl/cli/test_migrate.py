"""`qactl migrate FILE` through the CLI, against a scratch database on the real PostgreSQL."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from qactl.cli.main import app
from services.common.settings import QactlSettings
from tests.qactl.cli.cli_env import flat, nothing_listening, use_settings
from tests.qactl.scratch_db import execute, scratch_database

runner = CliRunner()


@pytest.fixture(scope="module")
def database(infra_stack: QactlSettings) -> Iterator[QactlSettings]:
    with scratch_database(infra_stack, "migrate_cli") as settings:
        yield settings


@pytest.fixture
def cli(database: QactlSettings, monkeypatch: pytest.MonkeyPatch) -> QactlSettings:
    use_settings(monkeypatch, database)
    execute(database, "DELETE FROM responses")
    return database


def responses_file(tmp_path: Path) -> Path:
    path = tmp_path / "response.json"
    path.write_text(
        json.dumps(
            [
                {"question": "One?", "answer": "1", "score": 0.9},
                {"question": "Two?", "answer": "2", "score": "n/a"},
                {"question": "Three?", "answer": "3"},
                {"question": "one?", "answer": "again"},
            ]
        )
    )
    return path


def test_the_arguments() -> None:
    result = runner.invoke(app, ["migrate", "--help"])
    assert result.exit_code == 0
    for option in ("--strict", "--dry-run", "--json", "--show"):
        assert option in flat(result.output)
    assert runner.invoke(app, ["migrate"]).exit_code == 2  # FILE is required
    assert runner.invoke(app, ["migrate", "x.json", "--show", "-1"]).exit_code == 2


def test_imports_and_summarises_rejected_records(cli: QactlSettings, tmp_path: Path) -> None:
    result = runner.invoke(app, ["migrate", str(responses_file(tmp_path))])
    assert result.exit_code == 2, result.output  # some records were rejected
    assert "imported 2 of 4 records" in flat(result.output)
    assert "2 rejected" in flat(result.output)
    assert "field score" in flat(result.output) and "duplicate" in flat(result.output)
    assert "validating records" in flat(result.output)  # the progress bar's phases
    assert execute(cli, "SELECT count(*) FROM responses WHERE source = 'import'") == [(2,)]


def test_json_report_and_idempotence(cli: QactlSettings, tmp_path: Path) -> None:
    path = tmp_path / "clean.jsonl"
    path.write_text("\n".join(json.dumps({"question": f"Q{i}?", "answer": "a"}) for i in range(10)))
    first = runner.invoke(app, ["migrate", str(path), "--json"])
    second = runner.invoke(app, ["migrate", str(path), "--json"])
    assert first.exit_code == 0 and second.exit_code == 0, first.output + second.output
    assert json.loads(first.output)["inserted"] == 10
    report = json.loads(second.output)
    assert (report["inserted"], report["already_present"], report["rejected"]) == (0, 10, 0)


def test_strict_and_dry_run_write_nothing(cli: QactlSettings, tmp_path: Path) -> None:
    path = responses_file(tmp_path)
    strict = runner.invoke(app, ["migrate", str(path), "--strict"])
    assert strict.exit_code == 1 and "nothing imported" in flat(strict.output)
    dry = runner.invoke(app, ["migrate", str(path), "--dry-run"])
    assert dry.exit_code == 2 and "would import 2" in flat(dry.output)
    assert execute(cli, "SELECT count(*) FROM responses") == [(0,)]


def test_a_file_that_is_not_json_is_one_clear_line(cli: QactlSettings, tmp_path: Path) -> None:
    path = tmp_path / "response.json"
    path.write_text("[{broken")
    result = runner.invoke(app, ["migrate", str(path)])
    assert result.exit_code == 1
    assert "not valid JSON" in flat(result.output) and "nothing imported" in flat(result.output)
    assert "Traceback" not in flat(result.output)
    missing = runner.invoke(app, ["migrate", str(tmp_path / "none.json")])
    assert missing.exit_code == 1 and "no such file" in flat(missing.output)


def test_postgres_not_running(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    nothing_listening(monkeypatch)
    result = runner.invoke(app, ["migrate", str(responses_file(tmp_path))])
    assert result.exit_code == 1
    assert "PostgreSQL is not reachable" in flat(result.output) and "qactl up" in flat(result.output)
