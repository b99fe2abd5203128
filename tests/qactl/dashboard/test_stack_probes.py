"""The dashboard's probes against a real Kafka, PostgreSQL and Redis (no Flink: its absence is
part of the test, the rest of the snapshot must still arrive)."""

from __future__ import annotations

import random
import uuid

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from qactl.client import pg
from qactl.dashboard.kafka_probe import KafkaAdminProbe
from qactl.dashboard.model import histogram, score_edges
from qactl.dashboard.postgres_probe import PostgresQualityProbe
from qactl.dashboard.source import DashboardSource
from services.common import topics
from services.common.schemas import Hop, Stage
from services.common.status import StatusTracker
from services.common.waiting import poll_until

pytestmark = pytest.mark.stack

# Generous: these tests share a loaded two-core machine; the dashboard itself uses 2 s.
TIMEOUT = 15.0


def produce(settings, topic: str, n: int) -> None:
    producer = Producer({"bootstrap.servers": settings.kafka.bootstrap})
    for i in range(n):
        producer.produce(topic, value=b"{}", key=f"k{i}".encode())
    assert producer.flush(15) == 0


def test_end_offsets_and_group_lag(infra_settings):
    probe = KafkaAdminProbe(infra_settings, TIMEOUT)
    names = [t.name for t in topics.all_topics(infra_settings.policies)]
    before = probe.end_offsets(names)
    assert set(before) == set(names)
    produce(infra_settings, topics.LOW_QUALITY.name, 5)  # one partition: easy to commit on
    after = probe.end_offsets(names)
    assert after[topics.LOW_QUALITY.name] == before[topics.LOW_QUALITY.name] + 5

    group = f"dashboard-test-{uuid.uuid4().hex[:8]}"
    consumer = Consumer({"bootstrap.servers": infra_settings.kafka.bootstrap, "group.id": group,
                         "enable.auto.commit": False})
    end = after[topics.LOW_QUALITY.name]
    consumer.commit(offsets=[TopicPartition(topics.LOW_QUALITY.name, 0, end - 2)], asynchronous=False)
    consumer.close()
    probe._groups_every = 1  # see the new group at once
    lags = [g for g in probe.group_lags() if g.group == group]
    assert [(g.topic, g.lag) for g in lags] == [(topics.LOW_QUALITY.name, 2)]


@pytest.fixture
def clean_tables(infra_settings):
    conn = pg.connect(infra_settings.postgres.url)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("TRUNCATE responses, failed_questions, score_history, questions")
    yield conn
    conn.close()


def test_score_bins_in_sql_match_the_python_bins(infra_settings, clean_tables):
    rng = random.Random(7)
    scores = [0.75, 0.8, 0.7, 0.05, 0.0, 1.0, -0.1] + [rng.uniform(0.3, 1.0) for _ in range(200)]
    with clean_tables.cursor() as cur:
        for i, score in enumerate(scores):
            cur.execute("INSERT INTO score_history (question_id, attempt, score) VALUES (%s, 0, %s)", (f"q-{i}", score))
    edges = score_edges(0.75)
    from_sql = PostgresQualityProbe(infra_settings, TIMEOUT).score_histogram(edges, 0.75)
    assert from_sql == histogram(scores, edges, 0.75)
    assert from_sql.above == sum(1 for s in scores if s > 0.75)


def test_regeneration_outcomes_and_question_text(infra_settings, clean_tables):
    with clean_tables.cursor() as cur:
        def answer(qid: str, status: str, attempt: int, source: str = "pipeline") -> None:
            cur.execute(
                "INSERT INTO responses (question_id, question, answer, score, status, attempt, source)"
                " VALUES (%s, %s, 'a', 0.9, %s, %s, %s)",
                (qid, f"question {qid}", status, attempt, source),
            )

        answer("q-a", "validated", 0)
        answer("q-b", "validated", 0)
        answer("q-c", "validated", 2)
        answer("q-d", "low_quality", 3)
        answer("q-old", "validated", 0, source="import")  # the imported baseline is not live data
        for qid in ("q-e", "q-e", "q-f"):  # q-e failed twice: one question
            cur.execute("INSERT INTO failed_questions (question_id, reason, error_kind) VALUES (%s, 'x', 'exhausted')",
                        (qid,))
        for qid, attempt, score in (("q-c", 0, 0.5), ("q-c", 1, 0.6), ("q-c", 2, 0.8), ("q-a", 0, 0.9)):
            cur.execute("INSERT INTO score_history (question_id, attempt, score) VALUES (%s, %s, %s)",
                        (qid, attempt, score))
        cur.execute("INSERT INTO questions (question_id, question) VALUES ('q-live', 'What is Kafka?')")
    probe = PostgresQualityProbe(infra_settings, TIMEOUT)
    outcomes = probe.regeneration_outcomes()
    assert dict(outcomes.validated_by_attempt) == {0: 2, 2: 1}
    assert (outcomes.low_quality, outcomes.failed) == (1, 2)
    assert outcomes.mean_score_by_attempt == pytest.approx({0: 0.7, 1: 0.6, 2: 0.8})
    assert probe.questions(["q-live", "q-none"]) == {"q-live": "What is Kafka?"}
    probe.close()


def test_a_full_snapshot_of_the_real_stack(infra_settings, clean_tables):
    tracker = StatusTracker(infra_settings)
    qid = f"q-dash-{uuid.uuid4().hex[:8]}"
    with clean_tables.cursor() as cur:
        cur.execute("INSERT INTO questions (question_id, question) VALUES (%s, 'What does Flink do?')", (qid,))
    source = DashboardSource.for_stack(infra_settings, TIMEOUT)
    try:
        source.snapshot()
        tracker.record(qid, Hop(stage=Stage.queued, topic=topics.QUESTIONS_PENDING.name))
        produce(infra_settings, topics.QUESTIONS_PENDING.name, 3)
        snap = source.snapshot()
        # The health round runs on its own thread.
        health = poll_until(lambda: source.snapshot().components, timeout=60, interval=0.2)
        assert health, "no health round finished"
    finally:
        source.close()
        tracker.close()
    assert {"kafka", "postgres", "redis"}.isdisjoint(snap.errors), snap.errors
    assert "flink" in snap.errors  # no cluster in this test: said, not fatal
    pending = next(t for t in snap.topics if t.topic == topics.QUESTIONS_PENDING.name)
    assert pending.rate is not None and pending.rate > 0
    row = next(q for q in snap.questions if q.question_id == qid)
    assert row.stage == Stage.queued and row.question == "What does Flink do?"
    assert [b.kind for b in snap.retries] == ["overload"] * 3 + ["quota"]
    assert snap.scores is not None and snap.regenerations is not None
    assert any(c.name == "kafka" and c.ok for c in health)
    # The LLM is named even with no model server up: an unreachable server is a state, not an error.
    assert snap.llm is not None and "llm" not in snap.errors


def test_stored_hops_for_a_journey_whose_redis_status_expired(infra_settings, clean_tables):
    import json

    from services.common.schemas import ErrorInfo, ErrorKind

    hops = [
        Hop(stage=Stage.queued, topic=topics.QUESTIONS_PENDING.name),
        Hop(stage=Stage.retrying_quota, topic=topics.QUOTA_DELAY.name, delay_seconds=6.0,
            error=ErrorInfo(kind=ErrorKind.quota, status_code=402)),
        Hop(stage=Stage.failed, topic=topics.DEAD_LETTER.name, error=ErrorInfo(kind=ErrorKind.exhausted)),
    ]
    with clean_tables.cursor() as cur:
        cur.execute("INSERT INTO questions (question_id, question) VALUES ('q-gone', 'Why did it fail?')")
        cur.execute(
            "INSERT INTO failed_questions (question_id, reason, error_kind, hops) VALUES ('q-gone', 'x', 'exhausted', %s)",
            (json.dumps([h.model_dump(mode="json") for h in hops]),),
        )
    source = DashboardSource.for_stack(infra_settings, TIMEOUT)
    try:
        journey = source.journey("q-gone")
    finally:
        source.close()
    assert journey.question == "Why did it fail?"
    assert [h.stage for h in journey.hops] == [Stage.queued, Stage.retrying_quota, Stage.failed]
    assert journey.hops[1].error.status_code == 402
