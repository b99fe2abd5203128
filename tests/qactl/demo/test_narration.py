"""What the demo says about the gate's decisions on a real model's answers, and who wrote an answer."""

from __future__ import annotations

from qactl.demo.paths import Judgement
from qactl.demo.runner import AskResult, DemoRunner, answer_line, model_verdict
from services.common.schemas import Hop, Stage
from services.common.settings import Policies
from services.llm_gateway.app import DEGRADED_MODEL

GATE = Policies(quality_threshold=0.6)
FORCED = Judgement(attempt=0, score=0.213, decision="regenerating", forced=True)


def test_the_first_decision_on_the_models_answer_says_the_model_decides_and_the_gain() -> None:
    validated = Hop(stage=Stage.validated, score=0.64, attempt=1)
    text = model_verdict(validated, Judgement(1, 0.64, "validated", forced=False), [FORCED], GATE)
    assert text == (
        "from here the real model's answer decides: score 0.640 > 0.6 -> validated "
        "(the forced off-topic answer scored 0.213: +0.427)"
    )
    assert model_verdict(validated, Judgement(0, 0.64, "validated", False), [], GATE) == (
        "from here the real model's answer decides: score 0.640 > 0.6 -> validated"
    )


def test_a_later_decision_names_the_regenerated_answer() -> None:
    first = Judgement(0, 0.5, "regenerating", forced=False)
    again = Hop(stage=Stage.regenerating, score=0.45, attempt=2)
    assert model_verdict(again, Judgement(1, 0.45, "regenerating", False), [first], GATE) == (
        "the model's regenerated answer (attempt 1): score 0.450 <= 0.6 -> regenerate (attempt 2 of 3) "
        "(its previous answer scored 0.500: -0.050)"
    )


def test_an_answer_says_who_wrote_it() -> None:
    assert answer_line("Flink is  a\nstream processor.", "SmolLM2-135M-Instruct-Q4_1", "local") == (
        'by SmolLM2-135M-Instruct-Q4_1: "Flink is a stream processor."'
    )
    degraded = answer_line("The weather is nice.", DEGRADED_MODEL, "local")
    assert degraded.startswith(f"by {DEGRADED_MODEL} (canned off-topic text from the degrade fault, not the model's)")
    assert "the simulator's canned text" in answer_line("Paraphrase.", "qactl-sim", "simulated")
    assert answer_line("x" * 500, "m", "local", width=20).endswith('x…"')


def asked(state: str, decided_from: int | None, observed: list[str] | None = None, source: str | None = None) -> AskResult:
    return AskResult(
        question="q", question_id="id", state=state, source=source,
        model_decided_from=decided_from, observed_path=observed or [],
    )


def test_the_terminal_state_is_the_gates_where_the_model_decided() -> None:
    path = ["queued @ questions-pending", "generating @ questions-pending", "scoring @ llm-responses-success"]
    low = asked("low_quality", 2, [*path, "low_quality @ low-quality-responses"])
    assert DemoRunner._terminal_check("validated", low, None).ok
    assert not DemoRunner._terminal_check("validated", asked("failed", 2, [*path, "failed"]), None).ok
    # The cache answers the second ask with whatever the first one ended in.
    assert DemoRunner._terminal_check("validated", asked("low_quality", None, source="cache"), low).ok
    assert not DemoRunner._terminal_check("validated", asked("validated", None, source="cache"), low).ok
    # With the simulator, the case's terminal state.
    assert not DemoRunner._terminal_check("validated", asked("low_quality", None), None).ok
