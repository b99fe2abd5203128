"""`qactl gateway ...` against a real gateway, through Typer's CliRunner."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from qactl.cli.main import app
from services.common.settings import get_settings
from tests.services.llm_gateway.server import ADMIN_TOKEN, RunningGateway, free_port, running_gateway

runner = CliRunner()


@pytest.fixture
def gateway(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[RunningGateway]:
    with running_gateway() as running:
        monkeypatch.chdir(tmp_path)
        monkeypatch.delenv("QACTL_CONFIG", raising=False)
        monkeypatch.setenv("QACTL_GATEWAY__PORT", str(running.settings.port))
        monkeypatch.setenv("QACTL_GATEWAY__ADMIN_TOKEN", ADMIN_TOKEN)
        get_settings.cache_clear()
        yield running
        get_settings.cache_clear()


def test_fault_faults_stats_clear(gateway: RunningGateway) -> None:
    result = runner.invoke(app, ["gateway", "fault", "503-burst", "--match", "kafka"])
    assert result.exit_code == 0, result.output
    assert 'rule 1: 503 for the next 3 calls, Retry-After 1 s, on questions containing "kafka"' in result.output
    result = runner.invoke(app, ["gateway", "fault", "degrade", "--rate", "0.5", "--json"])
    assert json.loads(result.output)["rate"] == 0.5
    httpx.post(f"{gateway.url}/api/generate", json={"model": "m", "prompt": "What is Apache Kafka?", "stream": False})
    listed = runner.invoke(app, ["gateway", "faults"])
    assert "503 for the next 2 calls" in listed.output and "on 50% of calls" in listed.output
    stats = runner.invoke(app, ["gateway", "stats", "--json", "--reset"])
    assert json.loads(stats.output)["by_outcome"] == {"503": 1}
    assert json.loads(runner.invoke(app, ["gateway", "stats", "--json"]).output)["total"] == 0
    assert "cleared 2 fault rule(s)" in runner.invoke(app, ["gateway", "clear"]).output
    assert "no fault rules" in runner.invoke(app, ["gateway", "faults"]).output


@pytest.mark.parametrize(
    "args, message",
    [
        (["gateway", "fault", "meteor"], "unknown fault 'meteor'"),
        (["gateway", "fault", "429", "--count", "2", "--rate", "0.5"], "not both"),
        (["gateway", "fault", "429", "--rate", "0"], "greater than 0"),
    ],
)
def test_bad_rules_are_one_line_errors(gateway: RunningGateway, args: list[str], message: str) -> None:
    result = runner.invoke(app, args)
    assert result.exit_code == 1 and message in result.output and "Traceback" not in result.output


def test_gateway_down_is_one_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("QACTL_GATEWAY__PORT", str(free_port()))
    monkeypatch.setenv("QACTL_GATEWAY__ADMIN_TOKEN", "a-token")  # past the token check, to the call
    get_settings.cache_clear()
    try:
        result = runner.invoke(app, ["gateway", "faults"])
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 1 and "does not answer" in result.output
