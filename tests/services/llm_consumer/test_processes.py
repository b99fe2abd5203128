"""llm-consumer replicas as real processes, declared exactly as `qactl up` declares them.

kill -9 while LLM calls are in flight: every question still produces its outcome
(at-least-once; duplicates are allowed and absorbed downstream by the persister).
"""

from __future__ import annotations

import os
import signal

import pytest

from services.common import topics
from services.common.settings import QactlSettings
from qactl.runtime.supervisor import Supervisor
from tests.services.pipeline import (
    Gateway,
    health_of,
    produce_models,
    specs_of,
    supervised,
    unique_question,
    wait_until,
    watching,
)

pytestmark = pytest.mark.stack


def test_kill_9_of_an_llm_consumer_with_calls_in_flight_loses_no_question(stack_settings: QactlSettings) -> None:
    settings = stack_settings.model_copy(
        update={
            "llm": stack_settings.llm.model_copy(update={"concurrency": 4}),
            "services": stack_settings.services.model_copy(update={"llm_consumer_replicas": 2}),
        }
    )
    questions = [unique_question(f"kill-{i}") for i in range(24)]
    ids = {q.question_id for q in questions}
    specs = specs_of(settings, "llm-consumer")
    victim, survivor = specs
    # Every call takes 1.5 s, so calls are surely in flight when the victim is killed.
    with Gateway(settings, latency_ms=1500) as gateway, watching(settings, topics.LLM_SUCCESS.name) as watch:
        with supervised(settings, specs) as supervisor:
            wait_until(lambda: health_of(victim)["assigned"] and health_of(survivor)["assigned"], 30, "both assigned")
            produce_models(settings, topics.QUESTIONS_PENDING.name, questions)
            wait_until(lambda: health_of(victim)["in_flight"] > 0, 30, "calls in flight in the victim")
            in_flight_when_killed = health_of(victim)["in_flight"]
            os.kill(supervisor.state(victim.name).pid, signal.SIGKILL)  # type: ignore[arg-type]
            watch.wait_for(
                lambda seen: ids <= {s.message.question_id for s in seen}, 90, "an answer for every question"
            )
            # Its keeper restarted it (the survivor may have redone its calls first, or it did).
            assert supervisor.state(victim.name).restarts == 1
        calls = gateway.stats()["total"]
    answered = [s.message.question_id for s in watch.seen if s.message.question_id in ids]
    assert set(answered) == ids
    assert in_flight_when_killed > 0
    # The killed replica's unfinished calls were redone by the survivor: more calls than questions.
    assert calls > len(ids), (calls, len(ids))


def test_sigterm_lets_calls_in_flight_finish_then_commits_them(stack_settings: QactlSettings) -> None:
    from qactl.client import kafka_admin
    from services.llm_consumer.consumer import GROUP

    settings = stack_settings.model_copy(
        update={
            "llm": stack_settings.llm.model_copy(update={"concurrency": 4}),
            "services": stack_settings.services.model_copy(update={"llm_consumer_replicas": 1}),
        }
    )
    (spec,) = specs_of(settings, "llm-consumer")
    questions = [unique_question(f"sigterm-{i}") for i in range(4)]

    def pending_lag() -> int:
        lag = kafka_admin.consumer_group_lag(settings.kafka.bootstrap, GROUP)
        return sum(v for (topic, _), v in lag.items() if topic == topics.QUESTIONS_PENDING.name)

    with Gateway(settings, latency_ms=2000), watching(settings, topics.LLM_SUCCESS.name) as watch:
        with supervised(settings, [spec]) as supervisor:
            wait_until(lambda: health_of(spec)["assigned"] and health_of(spec)["in_flight"] == 0 and pending_lag() == 0, 60, "an idle, drained consumer")
            produce_models(settings, topics.QUESTIONS_PENDING.name, questions)
            wait_until(lambda: health_of(spec)["in_flight"] == 4, 30, "four calls in flight")
            assert supervisor.stop(spec.name, timeout=30)  # SIGTERM, then waits for the exit
        watch.settle(0.5)
    assert {q.question_id for q in questions} <= {s.message.question_id for s in watch.seen}
    assert pending_lag() == 0  # their offsets were committed on the way out
    assert "stopped" in Supervisor(settings).tail(spec.name, 3)
