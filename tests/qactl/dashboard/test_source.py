"""The dashboard's source: rates across polls, and snapshots that survive dead backends."""

from __future__ import annotations

import threading
from collections.abc import Sequence

import pytest

from qactl.dashboard.model import (
    ComponentRow,
    GroupLag,
    QuestionRow,
    RegenerationOutcomes,
    ScoreHistogram,
)
from qactl.dashboard.source import DashboardSource
from services.common.schemas import Hop, Stage
from services.common.settings import load_settings
from services.common.waiting import poll_until
from tests.qactl.tui.recorded import T0


class Offsets:
    """A Kafka probe answering from a script of end offsets, one dict per poll."""

    def __init__(self, script: list[dict[str, int]]) -> None:
        self.script = script
        self.asked: list[Sequence[str]] = []

    def end_offsets(self, topics: Sequence[str]):
        self.asked.append(topics)
        return self.script.pop(0)

    def group_lags(self):
        return [GroupLag("llm-consumer", "questions-pending", 4)]


class Broken:
    def __init__(self, message: str) -> None:
        self.message = message

    def __getattr__(self, name: str):
        def fail(*args, **kwargs):
            raise ConnectionError(self.message)

        return fail


class Quality:
    def __init__(self) -> None:
        self.question_lookups: list[list[str]] = []

    def score_histogram(self, edges, threshold):
        return ScoreHistogram(tuple(edges), tuple([0] * (len(edges) - 1)), threshold)

    def regeneration_outcomes(self):
        return RegenerationOutcomes({0: 3})

    def running_chaos(self):
        return None

    def questions(self, ids):
        self.question_lookups.append(list(ids))
        return {qid: f"text of {qid}" for qid in ids if qid != "q-unknown"}

    def hops(self, question_id):
        return [Hop(stage=Stage.queued, at=T0), Hop(stage=Stage.failed, at=T0)] if question_id == "q-old" else []


class Live:
    def recent_questions(self, limit):
        return [QuestionRow("q-1", Stage.generating, T0), QuestionRow("q-unknown", Stage.queued, T0)]

    def hops(self, question_id):
        if question_id == "q-old":
            return []  # expired from Redis
        return [Hop(stage=Stage.queued, at=T0), Hop(stage=Stage.validated, at=T0, score=0.9)]


def test_source_computes_rates_across_polls():
    clock = iter([0.0, 0.0, 0.01, 2.0, 2.0, 2.01])
    kafka = Offsets([{"questions-pending": 10}, {"questions-pending": 30}])
    source = DashboardSource(load_settings(), kafka=kafka, clock=lambda: next(clock))
    assert source.snapshot().topics[0].rate is None
    second = source.snapshot()
    assert second.topics[0].rate == pytest.approx(10.0)
    assert "retry-quota-delay" in kafka.asked[0]  # delay topics are asked for too
    assert second.lags[0].lag == 4


def test_a_dead_backend_leaves_its_part_empty_and_says_why():
    source = DashboardSource(load_settings(), kafka=Broken("broker unreachable"), quality=Quality(), live=Live())
    snap = source.snapshot()
    assert snap.topics == () and "broker unreachable" in snap.errors["kafka"]
    assert snap.regenerations == RegenerationOutcomes({0: 3})  # the rest still arrives
    assert [q.question_id for q in snap.questions] == ["q-1", "q-unknown"]


def wait_until(condition, timeout: float = 5.0) -> None:
    assert poll_until(condition, timeout=timeout, interval=0.01), "condition not met in time"


def test_a_failing_health_probe_is_reported_like_any_other_part():
    def health():
        raise OSError("probe timed out")

    source = DashboardSource(load_settings(), health=health, health_interval=60)
    source.snapshot()
    wait_until(lambda: "probe timed out" in source.snapshot().errors.get("health", ""))
    source.close()


def test_question_text_is_looked_up_once_per_id():
    quality = Quality()
    source = DashboardSource(load_settings(), quality=quality, live=Live())
    first = source.snapshot()
    source.snapshot()
    assert first.questions[0].question == "text of q-1"
    assert first.questions[1].question is None
    # q-1 is known after the first poll; only the id PostgreSQL did not know is asked again.
    assert quality.question_lookups == [["q-1", "q-unknown"], ["q-unknown"]]


def test_health_runs_on_its_own_thread_and_never_holds_up_a_poll():
    release = threading.Event()
    rounds = []

    def health():
        release.wait(10)  # a probe stuck on a dead component
        rounds.append(1)
        return [ComponentRow("kafka", "infra", True, "ok")]

    source = DashboardSource(load_settings(), health=health, health_interval=0.01)
    first = source.snapshot()
    second = source.snapshot()
    assert first.components == () and second.components == ()  # polls went on without it
    assert rounds == []
    release.set()
    wait_until(lambda: source.snapshot().components == (ComponentRow("kafka", "infra", True, "ok"),))
    wait_until(lambda: len(rounds) >= 3)  # and it keeps probing at its own pace
    source.close()


def test_journey_comes_from_redis_then_from_postgresql_once_expired():
    source = DashboardSource(load_settings(), live=Live(), quality=Quality())
    live = source.journey("q-1")
    assert live.stage == Stage.validated and len(live.hops) == 2
    assert live.question == "text of q-1"
    stored = source.journey("q-old")
    assert stored.stage == Stage.failed and stored.question == "text of q-old"


def test_the_llm_part_is_in_the_snapshot_and_a_failing_one_says_why():
    from qactl.dashboard.model import LlmState
    from tests.qactl.tui.recorded import recorded_llm

    class Llm:
        def llm(self) -> LlmState:
            return recorded_llm()

    assert DashboardSource(load_settings(), llm=Llm()).snapshot().llm == recorded_llm()
    snap = DashboardSource(load_settings(), llm=Broken("refused")).snapshot()
    assert snap.llm is None and "refused" in snap.errors["llm"]
