"""What the demo says about the gate's decisions on a real model's answers, and who wrote an answer."""

from __future__ import annotations

from qactl.client.api import QuestionStatus
from qactl.demo.cases import load_case
from qactl.demo.paths import Judgement
from qactl.demo.runner import AskResult, DemoEvent, DemoRunner, answer_line, model_verdict
from services.common.schemas import Hop, Stage
from services.common.settings import Policies, QactlSettings
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


class FollowedHops:
    """A storage API client whose ``follow`` reports the given hops, as the real one does."""

    def __init__(self, hops: list[Hop]) -> None:
        self.hops = hops

    def follow(self, question_id: str, timeout: float, interval: float, on_hop) -> QuestionStatus:  # noqa: ANN001
        for hop in self.hops:
            on_hop(hop)
        return QuestionStatus(question_id=question_id, state=self.hops[-1].stage, terminal=True, hops=self.hops)


def narrated(hops: list[Hop], forced_answers: int | None) -> list[DemoEvent]:
    events: list[DemoEvent] = []
    runner = DemoRunner(QactlSettings(), listener=events.append)
    runner._follow(load_case("regeneration"), FollowedHops(hops), "q-1", GATE, 10.0, forced_answers)  # type: ignore[arg-type]
    return events


REGENERATION = [
    Hop(stage=Stage.queued, topic="questions-pending"),
    Hop(stage=Stage.generating, topic="questions-pending"),
    Hop(stage=Stage.scoring, topic="llm-responses-success", note=f"answered by local ({DEGRADED_MODEL}) in 5 ms"),
    Hop(stage=Stage.regenerating, topic="questions-pending", attempt=1, score=0.213),
    Hop(stage=Stage.generating, topic="questions-pending", attempt=1),
    Hop(stage=Stage.scoring, topic="llm-responses-success", attempt=1, note="answered by local (SmolLM2) in 900 ms"),
    Hop(stage=Stage.validated, topic="validated-responses", attempt=1, score=0.64),
]


def test_the_live_narration_says_where_the_model_takes_over() -> None:
    events = narrated(REGENERATION, forced_answers=1)
    assert [e.kind for e in events] == ["hop"] * 7 + ["model"]
    assert events[3].explanation == "score 0.213 <= threshold 0.6: regenerate (attempt 1 of 3)"  # the fault's answer
    assert events[6].explanation is None  # said on the model line instead
    assert events[7].message == (
        "from here the real model's answer decides: score 0.640 > 0.6 -> validated "
        "(the forced off-topic answer scored 0.213: +0.427)"
    )


def test_with_the_simulator_no_answer_is_called_the_models() -> None:
    events = narrated(REGENERATION, forced_answers=None)
    assert [e.kind for e in events] == ["hop"] * 7
    assert events[6].explanation == "score 0.640 > threshold 0.6: validated"
