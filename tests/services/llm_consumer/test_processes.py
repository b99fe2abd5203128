"""llm-consumer replicas as real processes, declared exactly as `qactl up` declares them.

kill -9 while LLM calls are in flight: the calls the killed replica had in flight are redone by
the other replica, and every question ends in exactly one terminal state in PostgreSQL, through
the whole pipeline behind the consumers (the score job, the retry services and the persister, as
`qactl up` runs them).
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from datetime import datetime

import pytest

from services.common import topics
from services.common.schemas import Stage, utcnow
from services.common.settings import QactlSettings
from services.common.status import StatusTracker
from qactl.runtime.supervisor import Supervisor
from tests.services.pipeline import (
    Gateway,
    health_of,
    produce_models,
    specs_of,
    supervised,
    terminal_rows,
    unique_question,
    wait_until,
    watching,
)
from tests.services.storage_stack import query
from tests.stack import running

pytestmark = pytest.mark.stack

BEHIND_THE_CONSUMERS = ["score-job", "retry-overload", "retry-quota", "persister"]


@pytest.fixture(scope="module")
def pipeline(stack_settings: QactlSettings) -> Iterator[QactlSettings]:
    """Everything a question meets after the llm-consumers, as `qactl up` runs it."""
    with running(stack_settings, BEHIND_THE_CONSUMERS):
        yield stack_settings


def calls_started(hops, replica: str) -> list[datetime]:
    """When ``replica`` started an LLM call for the question (its ``generating`` hops)."""
    return [h.at for h in hops if h.stage is Stage.generating and (h.note or "").startswith(f"{replica} ")]


def test_kill_9_of_an_llm_consumer_with_calls_in_flight_loses_no_question(pipeline: QactlSettings) -> None:
    settings = pipeline.model_copy(
        update={
            "llm": pipeline.llm.model_copy(update={"concurrency": 4}),
            "services": pipeline.services.model_copy(update={"llm_consumer_replicas": 2}),
        }
    )
    questions = [unique_question(f"kill-{i}") for i in range(24)]
    ids = sorted(q.question_id for q in questions)
    specs = specs_of(settings, "llm-consumer")
    victim, survivor = specs
    tracker = StatusTracker(settings)

    def victim_calls_unanswered() -> list[str]:
        """Questions whose call the victim started (its hop is in Redis) with no answer seen yet."""
        answered = {s.message.question_id for s in watch.seen}
        return [qid for qid in ids if qid not in answered and calls_started(tracker.hops(qid), victim.name)]

    # Every call takes 3 s, so calls are surely in flight when the victim is killed.
    with Gateway(settings, latency_ms=3000) as gateway, watching(settings, topics.LLM_SUCCESS.name) as watch:
        with supervised(settings, specs) as supervisor:
            wait_until(lambda: health_of(victim)["assigned"] and health_of(survivor)["assigned"], 30, "both assigned")
            produce_models(settings, topics.QUESTIONS_PENDING.name, questions)
            wait_until(lambda: health_of(victim)["in_flight"] == 4, 30, "four calls in flight in the victim")
            # Their generating hops are written to Redis behind the calls: wait to see them (a fixed
            # 0.3 s was too short on a loaded CI machine), still unanswered.
            wait_until(victim_calls_unanswered, 20, "a call of the victim started and not answered")
            in_flight_when_killed = health_of(victim)["in_flight"]
            killed_at = utcnow()
            os.kill(supervisor.state(victim.name).pid, signal.SIGKILL)  # type: ignore[arg-type]
            watch.wait_for(
                lambda seen: set(ids) <= {s.message.question_id for s in seen}, 90, "an answer for every question"
            )
            # Its keeper restarted it (the survivor may have redone its calls first, or it did).
            assert supervisor.state(victim.name).restarts == 1
        calls = gateway.stats()["total"]

    # The whole pipeline ends every question exactly once: one terminal record each in PostgreSQL.
    def all_terminal() -> bool:
        return all(terminal_rows(settings, ids).values())

    wait_until(all_terminal, 600, "a terminal state in PostgreSQL for every question")
    time.sleep(2)  # a duplicate answer still on its way would land now, and must change nothing
    rows = terminal_rows(settings, ids)
    assert {qid: found for qid, found in rows.items() if len(found) != 1} == {}
    states = dict(query(settings, "SELECT question_id, state FROM questions WHERE question_id = ANY(%s) AND terminal_at IS NOT NULL", ids))
    assert states == {qid: rows[qid][0] for qid in ids}

    # Calls were in flight in the victim when it died (started, never answered), and were redone.
    assert in_flight_when_killed > 0
    try:
        started = {qid: [at for at in calls_started(tracker.hops(qid), victim.name) if at < killed_at] for qid in ids}
    finally:
        tracker.close()
    answered_from = {  # the call each answer on llm-responses-success came from: (replica, started at)
        (s.message.question_id, at) for s in watch.seen for at in calls_started(s.message.hops, victim.name)[-1:]
    }
    cut_off = {qid for qid, times in started.items() for at in times if (qid, at) not in answered_from}
    assert cut_off, "no call of the victim was cut off by the kill"
    for qid in cut_off:  # answered after all, by a call started after the kill
        assert any(h.at > killed_at for s in watch.of(qid) for h in s.message.hops if h.stage is Stage.generating), qid
    assert calls >= len(ids) + len(cut_off), (calls, len(ids), len(cut_off))


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
