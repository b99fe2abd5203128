"""Demo cases on the real local model: what the faults force is checked exactly, the rest is the model's.

The stack runs ``llm.backend = "local"``: the llm-server component (llama.cpp with the cached
SmolLM2-135M) starts through the runtime, behind the gateway that injects the faults. The
model's answers differ from run to run (the questions are tagged by a random run id), so only
the forced part of each path is fixed; from the model's first own answer the gate decides.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from typer.testing import CliRunner

from qactl.cli.main import app
from qactl.runtime.stack import Stack
from services.common.settings import QactlSettings
from services.llm_gateway.app import DEGRADED_MODEL
from tests.qactl.cli.cli_env import use_settings
from tests.stack import INFRA, port_base, running, test_settings

pytestmark = pytest.mark.stack

runner = CliRunner()


@pytest.fixture(scope="module")
def local_pipeline(infra_stack: QactlSettings) -> Iterator[QactlSettings]:
    """Every service, the score job and the local model server, demo profile."""
    settings = test_settings(
        policies={"delay_scale": 0.05},
        # Short answers, and a time limit the model keeps on 2 busy cores (an answer took up to
        # 15 s here): a timed-out call would take the overload path, which no case expects.
        llm={"backend": "local", "max_tokens": 40, "timeout_seconds": 90.0},
        llm_server={"port": port_base() + 436},  # tests/stack.py's layout
    )
    names = [c.name for c in Stack(settings).components if c.name not in INFRA]
    assert "llm-server" in names
    with running(settings, names):
        yield settings


def demo_json(settings: QactlSettings, monkeypatch: pytest.MonkeyPatch, case: str) -> dict:
    use_settings(monkeypatch, settings)
    result = runner.invoke(app, ["demo", case, "--json"])
    assert result.exit_code == 0, result.output
    (outcome,) = json.loads(result.output)
    assert outcome["ok"] and outcome["backend"] == "local", outcome
    return outcome


def test_regeneration_forces_the_degraded_answer_and_the_model_answers_the_regeneration(
    local_pipeline: QactlSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    (ask,) = demo_json(local_pipeline, monkeypatch, "regeneration")["asks"]
    assert ask["model_decided_from"] == 5
    assert ask["observed_path"][:5] == ask["expected_path"] == [
        "queued @ questions-pending",
        "generating @ questions-pending",
        "scoring @ llm-responses-success",
        "regenerating @ questions-pending",
        "generating @ questions-pending",
    ]
    forced, *models = ask["answers"]
    assert forced["forced"] and forced["attempt"] == 0 and forced["decision"] == "regenerating"
    assert models and not any(a["forced"] for a in models)
    assert models[-1]["decision"] == ask["state"] in ("validated", "low_quality")
    assert ask["model"] not in (DEGRADED_MODEL, None)  # the stored answer is the model's, not the fault's
    notes = [h.get("note", "") for h in ask["hops"] if h["stage"] == "scoring"]
    assert DEGRADED_MODEL in notes[0] and all(DEGRADED_MODEL not in n for n in notes[1:])


def test_overload_forces_two_503s_then_the_model_answers(local_pipeline: QactlSettings, monkeypatch: pytest.MonkeyPatch) -> None:
    (ask,) = demo_json(local_pipeline, monkeypatch, "overload")["asks"]
    assert ask["model_decided_from"] == 10
    assert ask["observed_path"][:10] == ask["expected_path"]
    errors = [h["error"]["status_code"] for h in ask["hops"] if h["stage"] == "retrying-overload" and h.get("error")]
    assert len(errors) >= 2 and set(errors) == {503}
    assert not any(a["forced"] for a in ask["answers"])
    assert ask["answers"][-1]["decision"] == ask["state"] in ("validated", "low_quality")
    calls = next(c for c in ask["checks"] if c["name"] == "llm_calls")
    assert calls["ok"] and "2 forced by faults" in calls["detail"]
