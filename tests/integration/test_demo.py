"""Each demo case run by `qactl demo` against the whole real stack: every service, the Flink job.

The stack runs the demo profile (retry delays x0.05: overload 0.05 / 0.1 / 0.2 s, quota 3 s);
`qactl demo` reads the delay scale the running retry services report, so the expected delays
are checked against the policy actually in force.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from typer.testing import CliRunner

from qactl.cli.main import app
from qactl.demo.cases import case_names
from qactl.runtime.stack import Stack
from services.common.settings import QactlSettings
from tests.qactl.cli.cli_env import flat, use_settings
from tests.stack import INFRA, running, test_settings

pytestmark = pytest.mark.stack

DEMO_DELAY_SCALE = 0.05
runner = CliRunner()


@pytest.fixture(scope="module")
def pipeline(infra_stack: QactlSettings) -> Iterator[QactlSettings]:
    """Every service and the score job on top of the session's infrastructure, demo profile."""
    settings = test_settings(policies={"delay_scale": DEMO_DELAY_SCALE}, llm={"backend": "gateway"})
    names = [c.name for c in Stack(settings).components if c.name not in INFRA]
    with running(settings, names):
        yield settings


@pytest.fixture
def cli(pipeline: QactlSettings, monkeypatch: pytest.MonkeyPatch) -> QactlSettings:
    use_settings(monkeypatch, pipeline)
    return pipeline


@pytest.mark.parametrize("case", case_names())
def test_each_case_follows_its_expected_path(cli: QactlSettings, case: str) -> None:
    result = runner.invoke(app, ["demo", case, "--json"])
    assert result.exit_code == 0, result.output
    (outcome,) = json.loads(result.output)
    assert outcome["ok"] and outcome["name"] == case
    assert outcome["delays_shortened"] and outcome["delay_scale"] == DEMO_DELAY_SCALE
    assert outcome["policy_source"].startswith("reported by retry-")
    assert outcome["backend"] == "simulated" and outcome["backend_source"].startswith("reported by llm-consumer")
    for ask in outcome["asks"]:
        assert ask["ok"], ask["checks"]
        assert ask["observed_path"] == ask["expected_path"]  # the simulator's path is certain, all of it
        assert ask["model_decided_from"] is None


def test_the_narration_shows_hops_policies_and_the_demo_profile(cli: QactlSettings) -> None:
    result = runner.invoke(app, ["demo", "overload"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    text = flat(result.output)
    assert "demo profile: every retry delay is shortened x0.05" in text
    assert "fault gateway: 503 for the next 2 calls" in text
    assert "POST /query -> 202" in text
    assert "policy: overload policy: 2^0 s x 0.05 (demo profile: shortened) = 0.05 s" in text
    assert "policy: overload policy: 2^1 s x 0.05 (demo profile: shortened) = 0.1 s" in text
    assert "waited" in text and "> threshold 0.6: validated" in text
    assert "overload: the expected path happened" in text
