"""The whole pipeline end to end: every service and the Flink job on the real stack.

Questions are knowledge-base questions with a unique tag (the gateway answers the question it
starts with), so runs never collide with earlier ones. Delays run on a shortened profile
(``delay_scale``), which changes their length, not the path a question takes.
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections.abc import Iterator

import pytest

from qactl.client.api import StorageApiClient
from qactl.client.gateway import GatewayClient
from qactl.runtime.stack import Stack
from services.common import db, topics
from services.common.knowledge_base import load_knowledge_base
from services.common.settings import QactlSettings
from tests.services.pipeline import terminal_rows, wait_terminal, watching
from tests.stack import INFRA, running, test_settings

pytestmark = pytest.mark.stack

DELAY_SCALE = 0.02  # overload 0.02/0.04/0.08 s, quota 1.2 s
KB = load_knowledge_base()
FLOW_TOPICS = (
    topics.QUESTIONS_PENDING.name,
    topics.LLM_SUCCESS.name,
    topics.LLM_OVERLOAD.name,
    topics.LLM_QUOTA.name,
    topics.VALIDATED.name,
    topics.LOW_QUALITY.name,
    topics.DEAD_LETTER.name,
)


@pytest.fixture(scope="module")
def pipeline(infra_stack: QactlSettings) -> Iterator[QactlSettings]:
    """Every service and the score job on top of the session's infrastructure."""
    settings = test_settings(policies={"delay_scale": DELAY_SCALE}, llm={"backend": "gateway"})
    names = [c.name for c in Stack(settings).components if c.name not in INFRA]
    with running(settings, names):
        _warm_up(settings)
        yield settings


def _warm_up(settings: QactlSettings) -> None:
    """One question through every stage, so the tests do not time the job's first start."""
    question, reference, _ = tagged(0)
    with StorageApiClient(settings.api.base_url) as api:
        wait_terminal(api, api.submit(question, reference).question_id, timeout=600)


@pytest.fixture
def gateway(pipeline: QactlSettings) -> Iterator[GatewayClient]:
    client = GatewayClient.from_settings(pipeline)
    client.clear_faults()
    yield client
    client.clear_faults()
    client.close()


@pytest.fixture
def api(pipeline: QactlSettings) -> Iterator[StorageApiClient]:
    with StorageApiClient(pipeline.api.base_url) as client:
        yield client


def tagged(index: int = 0) -> tuple[str, str, str]:
    """(question, reference, tag): a knowledge-base question made unique by a tag."""
    entry = KB.entries[index % len(KB.entries)]
    tag = f"e2e-{uuid.uuid4().hex[:10]}"
    return f"{entry.question} ({tag})", entry.reference_answer, tag


def topics_of(watch, question_id: str) -> list[str]:
    return [seen.topic for seen in sorted(watch.of(question_id), key=lambda s: s.timestamp_ms)]


def ask_until_validated(settings: QactlSettings, api: StorageApiClient, question: str, reference: str):
    """Submit, wait for the terminal state, and read every topic the question went through."""
    with watching(settings, *FLOW_TOPICS) as watch:
        submission = api.submit(question, reference)
        assert submission.http_status == 202
        status = wait_terminal(api, submission.question_id)
        watch.wait_for(lambda _: topics.VALIDATED.name in topics_of(watch, submission.question_id))
    return submission, status, watch


def test_normal_question_is_validated_then_served_from_the_cache(pipeline, gateway, api):
    question, reference, _ = tagged(0)
    submission, status, watch = ask_until_validated(pipeline, api, question, reference)
    assert status.state == "validated" and status.score > pipeline.policies.quality_threshold
    assert topics_of(watch, submission.question_id) == [
        topics.QUESTIONS_PENDING.name,
        topics.LLM_SUCCESS.name,
        topics.VALIDATED.name,
    ]
    assert terminal_rows(pipeline, [submission.question_id])[submission.question_id] == ["validated"]

    with watching(pipeline, *FLOW_TOPICS) as watch:
        hit = api.submit(question, reference)
        watch.settle(2.0)
    assert hit.http_status == 200 and hit.answer == status.answer
    assert watch.seen == [], "a cache hit must not produce anything"


def test_overload_is_retried_with_backoff_then_validated(pipeline, gateway, api):
    question, reference, tag = tagged(1)
    gateway.inject_fault("503", count=2, match=tag)
    submission, status, watch = ask_until_validated(pipeline, api, question, reference)
    assert status.state == "validated"
    path = topics_of(watch, submission.question_id)
    assert path.count(topics.LLM_OVERLOAD.name) == 2
    assert path[-1] == topics.VALIDATED.name
    final = watch.of(submission.question_id, topics.VALIDATED.name)[0].message
    assert final.retries.overload == 2
    delays = [h.delay_seconds for h in status.hops if h.stage == "retrying-overload" and h.delay_seconds]
    assert delays, "the retry hops say how long they waited"


def test_quota_is_retried_after_the_fixed_delay_then_validated(pipeline, gateway, api):
    question, reference, tag = tagged(2)
    gateway.inject_fault("402", count=1, match=tag)
    submission, status, watch = ask_until_validated(pipeline, api, question, reference)
    assert status.state == "validated"
    path = topics_of(watch, submission.question_id)
    assert topics.LLM_QUOTA.name in path and topics.LLM_OVERLOAD.name not in path
    quota_error = watch.of(submission.question_id, topics.LLM_QUOTA.name)[0]
    retried = [s for s in watch.of(submission.question_id, topics.QUESTIONS_PENDING.name) if s.message.retries.quota == 1]
    waited = (retried[0].timestamp_ms - quota_error.timestamp_ms) / 1000
    assert waited >= pipeline.policies.quota_delay() * 0.99


def test_low_score_is_regenerated_to_a_higher_score(pipeline, gateway, api):
    question, reference, tag = tagged(3)
    gateway.inject_fault("degrade", count=1, match=tag)
    submission, status, watch = ask_until_validated(pipeline, api, question, reference)
    assert status.state == "validated"
    final = watch.of(submission.question_id, topics.VALIDATED.name)[0].message
    assert final.attempt == 1
    threshold = pipeline.policies.quality_threshold
    assert final.previous_score is not None and final.previous_score <= threshold < final.score
    with db.connect(pipeline.postgres.url, timeout=None) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT attempt, score FROM score_history WHERE question_id = %s ORDER BY attempt",
            (submission.question_id,),
        )
        history = cur.fetchall()
    assert [a for a, _ in history] == [0, 1] and history[0][1] < history[1][1]


def test_always_degraded_answers_end_low_quality_after_the_last_regeneration(pipeline, gateway, api):
    question, reference, tag = tagged(4)
    gateway.inject_fault("degrade", count=pipeline.policies.max_regenerations + 1, match=tag)
    submission = api.submit(question, reference)
    status = wait_terminal(api, submission.question_id)
    assert status.state == "low_quality"
    with db.connect(pipeline.postgres.url, timeout=None) as conn, conn.cursor() as cur:
        cur.execute("SELECT status, attempt FROM responses WHERE question_id = %s", (submission.question_id,))
        assert cur.fetchall() == [("low_quality", pipeline.policies.max_regenerations)]


def test_retries_used_up_end_failed_with_the_reason(pipeline, gateway, api):
    question, reference, tag = tagged(5)
    gateway.inject_fault("503", count=pipeline.policies.overload_max_retries + 1, match=tag)
    submission = api.submit(question, reference)
    status = wait_terminal(api, submission.question_id)
    assert status.state == "failed"
    with db.connect(pipeline.postgres.url, timeout=None) as conn, conn.cursor() as cur:
        cur.execute("SELECT error_kind, reason FROM failed_questions WHERE question_id = %s", (submission.question_id,))
        [(kind, reason)] = cur.fetchall()
    assert kind == "exhausted" and "overload" in reason


def submit_mixed(api: StorageApiClient, gateway: GatewayClient, count: int) -> list[str]:
    """``count`` distinct questions while the gateway fails or degrades some calls at random."""
    gateway.inject_fault("503", rate=0.15)
    gateway.inject_fault("degrade", rate=0.2)
    gateway.inject_fault("402", rate=0.03)
    ids = []
    for index in range(count):
        question, reference, _ = tagged(index)
        ids.append(api.submit(question, reference).question_id)
    return ids


def assert_each_terminal_exactly_once(settings: QactlSettings, api: StorageApiClient, ids: list[str]) -> None:
    deadline = time.monotonic() + 600
    pending = set(ids)
    while pending and time.monotonic() < deadline:
        rows = terminal_rows(settings, sorted(pending))
        pending = {qid for qid, found in rows.items() if not found}
        time.sleep(1)
    assert not pending, f"{len(pending)} question(s) never reached a terminal state: {sorted(pending)[:5]}"
    rows = terminal_rows(settings, ids)
    written_twice = {qid: found for qid, found in rows.items() if len(found) != 1}
    assert not written_twice, f"terminal state written more than once: {written_twice}"
    for qid in ids:
        assert api.status(qid).state.value == rows[qid][0], qid


def test_a_hundred_mixed_questions_each_end_in_exactly_one_terminal_state(pipeline, gateway, api):
    ids = submit_mixed(api, gateway, 100)
    assert len(set(ids)) == 100
    assert_each_terminal_exactly_once(pipeline, api, ids)


JOB_OUTPUTS = (topics.VALIDATED.name, topics.LOW_QUALITY.name, topics.DEAD_LETTER.name, topics.QUESTIONS_PENDING.name)


def in_the_job(seen, ids: list[str]) -> set[str]:
    """Questions whose latest answer is on llm-responses-success with nothing after it yet.

    After an answer only the score job writes next (validated, low quality, a regeneration on
    questions-pending, a dead letter): such an answer is in the job, buffered or being scored.
    """
    last_answer: dict[str, int] = {}
    last_other: dict[str, int] = {}
    for record in seen:
        qid = getattr(record.message, "question_id", None)
        if qid not in ids:
            continue
        latest = last_answer if record.topic == topics.LLM_SUCCESS.name else last_other
        latest[qid] = max(latest.get(qid, 0), record.timestamp_ms)
    return {qid for qid, at in last_answer.items() if last_other.get(qid, 0) < at}


def test_killing_the_taskmanager_mid_run_loses_nothing(pipeline, gateway, api):
    from qactl.runtime import flink

    stack = Stack(pipeline)
    taskmanager = stack.supervisor.state(flink.TASKMANAGER)
    assert taskmanager.running
    with watching(pipeline, topics.LLM_SUCCESS.name, *JOB_OUTPUTS) as watch:
        ids = submit_mixed(api, gateway, 40)
        # The kill comes while answers are in the job, not before they reach it nor after.
        watch.wait_for(lambda seen: in_the_job(seen, ids), timeout=300, what="answers in the score job")
        os.killpg(taskmanager.pid, signal.SIGKILL)
        # What the job wrote before it died is on the topics within moments; nothing comes after.
        in_flight = in_the_job(watch.settle(3.0), ids)
    assert in_flight, "no answer was in the score job when its TaskManager died"
    open_at_kill = [qid for qid, found in terminal_rows(pipeline, sorted(in_flight)).items() if not found]
    assert open_at_kill, "every answer in the job was already terminal"
    Stack(pipeline, only=["flink"]).up()  # its keeper restarts the TaskManager; up waits until healthy
    assert_each_terminal_exactly_once(pipeline, api, ids)


def test_asked_again_after_low_quality_a_question_is_a_new_run_and_each_run_ends_once(pipeline, gateway, api):
    """The first run ends low_quality with the best of its answers; that answer is not served again:
    asking again starts run 2 (its own id), which validates; then the validated answer is served."""
    question, reference, tag = tagged(6)
    gateway.inject_fault("degrade", count=pipeline.policies.max_regenerations + 1, match=tag)
    first = api.submit(question, reference)
    assert first.http_status == 202
    assert wait_terminal(api, first.question_id).state == "low_quality"
    with db.connect(pipeline.postgres.url, timeout=None) as conn, conn.cursor() as cur:
        cur.execute("SELECT score FROM score_history WHERE question_id = %s", (first.question_id,))
        scores = [score for (score,) in cur.fetchall()]
        cur.execute("SELECT score FROM responses WHERE question_id = %s", (first.question_id,))
        (kept,) = cur.fetchone()
    assert len(scores) == pipeline.policies.max_regenerations + 1 and kept == max(scores)

    again = api.submit(question, reference)
    assert again.http_status == 202 and again.question_id == f"{first.question_id}-r2"
    assert wait_terminal(api, again.question_id).state == "validated"
    assert terminal_rows(pipeline, [first.question_id, again.question_id]) == {
        first.question_id: ["low_quality"], again.question_id: ["validated"],
    }
    served = api.submit(question, reference)
    assert (served.http_status, served.question_id, served.status) == (200, again.question_id, "validated")
