"""Answers held in the score job's state survive `qactl down` and a JobManager kill -9; the
sweeper closes what stays open too long. On the real stack.

The job here holds every answer in its state for ``HOLD_MS`` (its batch wait; the batch size is
never reached), so a test can show that answers were *only* in the job's state when the fault
came: on llm-responses-success, behind the offsets the job's checkpoint committed (Kafka would
not give them to the job again), and not terminal.
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections.abc import Iterator

import pytest

from qactl.client.api import StorageApiClient
from qactl.runtime import flink, score_job
from qactl.runtime.stack import Stack
from services.common import db, topics
from services.common.knowledge_base import load_knowledge_base
from services.common.settings import QactlSettings
from tests.services.pipeline import committed_offset, terminal_rows, wait_terminal, watching
from tests.stack import INFRA, running, test_settings

pytestmark = pytest.mark.stack

HOLD_MS = 45_000
KB = load_knowledge_base()
GROUP = "flink-score-job"


def job_settings(**policies) -> QactlSettings:
    return test_settings(
        policies={"delay_scale": 0.02, **policies},
        llm={"backend": "gateway"},
        flink={"score_max_wait_ms": HOLD_MS, "score_batch_size": 10_000},
    )


@pytest.fixture(scope="module")
def pipeline(infra_stack: QactlSettings) -> Iterator[QactlSettings]:
    settings = job_settings()
    names = [c.name for c in Stack(settings).components if c.name not in INFRA]
    with running(settings, names):
        with StorageApiClient(settings.api.base_url) as api:  # the job's first start, untimed
            wait_terminal(api, submit(api, 1)[0], timeout=600)
        yield settings


def submit(api: StorageApiClient, count: int) -> list[str]:
    ids = []
    for index in range(count):
        entry = KB.entries[index % len(KB.entries)]
        ids.append(api.submit(f"{entry.question} (state-{uuid.uuid4().hex[:10]})", entry.reference_answer).question_id)
    return ids


def held_in_job_state(settings: QactlSettings, api: StorageApiClient, count: int) -> list[str]:
    """Submit ``count`` questions and return once their answers are only in the job's state.

    That is: each answer is on llm-responses-success below the offset the job's last checkpoint
    committed, and its question is not terminal.
    """
    with watching(settings, topics.LLM_SUCCESS.name) as watch:
        ids = submit(api, count)
        seen = watch.wait_for(lambda s: {x.message.question_id for x in s} >= set(ids), timeout=120, what="answers")
        answers = [s for s in seen if s.message.question_id in ids]

        def committed_past_all() -> bool:
            return all(committed_offset(settings, GROUP, a.topic, a.partition) > a.offset for a in answers)

        deadline = time.monotonic() + 60
        while not committed_past_all() and time.monotonic() < deadline:
            time.sleep(0.5)
    assert committed_past_all(), "the job's checkpoint never committed past the answers"
    open_ids = [qid for qid, found in terminal_rows(settings, ids).items() if not found]
    assert len(open_ids) == count, f"answers were scored before the fault: {count - len(open_ids)} terminal"
    return ids


def assert_each_terminal_exactly_once(settings: QactlSettings, ids: list[str], timeout: float = 600) -> dict:
    deadline = time.monotonic() + timeout
    rows = terminal_rows(settings, ids)
    while any(not found for found in rows.values()) and time.monotonic() < deadline:
        time.sleep(1)
        rows = terminal_rows(settings, ids)
    never = [qid for qid, found in rows.items() if not found]
    assert not never, f"{len(never)} question(s) never reached a terminal state (lost with the job's state)"
    twice = {qid: found for qid, found in rows.items() if len(found) != 1}
    assert not twice, f"terminal state written more than once: {twice}"
    return rows


def job_events(settings: QactlSettings, action: str) -> list[str]:
    said: list[str] = []
    stack = Stack(settings, only=["flink", "score-job"] if action == "up" else ["score-job"])
    getattr(stack, action)(events=lambda comp, phase, detail: said.append(detail) if comp == "score-job" else None)
    return said


def test_down_stops_the_job_with_a_savepoint_and_up_resumes_from_it(pipeline):
    with StorageApiClient(pipeline.api.base_url) as api:
        ids = held_in_job_state(pipeline, api, 6)
    stopped = job_events(pipeline, "down")
    assert any("savepoint written" in line for line in stopped), stopped
    assert all(not found for found in terminal_rows(pipeline, ids).values()), "held answers left the job at the stop"
    started = job_events(pipeline, "up")
    assert any("resumed from savepoint" in line for line in started), started
    assert "resumed from savepoint savepoint-" in score_job.health(pipeline).detail  # `qactl up`'s row, `status`
    assert_each_terminal_exactly_once(pipeline, ids)


def test_a_killed_jobmanager_is_resumed_from_the_retained_checkpoint(pipeline):
    stack = Stack(pipeline)
    with StorageApiClient(pipeline.api.base_url) as api:
        ids = held_in_job_state(pipeline, api, 6)
    jobmanager = stack.supervisor.state(flink.JOBMANAGER)
    assert jobmanager.running
    os.killpg(jobmanager.pid, signal.SIGKILL)
    time.sleep(2)
    started = job_events(pipeline, "up")  # the operator's `qactl up` after the crash
    assert any("resumed from checkpoint" in line for line in started), started
    assert "resumed from checkpoint" in score_job.health(pipeline).detail
    assert_each_terminal_exactly_once(pipeline, ids)


def test_an_unrestorable_savepoint_is_reported_and_the_job_starts_fresh_losing_nothing(pipeline):
    with StorageApiClient(pipeline.api.base_url) as api:
        ids = held_in_job_state(pipeline, api, 4)
    stopped = job_events(pipeline, "down")
    [location] = [line.split("savepoint written: ")[1].split(";")[0] for line in stopped if "savepoint written" in line]
    metadata = os.path.join(location, "_metadata")
    with open(metadata, "wb") as corrupt:
        corrupt.write(b"not a savepoint")
    started = job_events(pipeline, "up")
    assert any(line.startswith("cannot resume from savepoint") for line in started), started
    assert any("replayed from" in line for line in started), started
    assert "started without state" in score_job.health(pipeline).detail
    assert_each_terminal_exactly_once(pipeline, ids)


def test_the_sweeper_fails_a_question_open_too_long_once_even_if_its_answer_comes_later(pipeline):
    short = job_settings(max_open_seconds=15, sweep_interval_seconds=2)
    Stack(short, only=["persister"]).down()
    Stack(short, only=["persister"]).up()
    try:
        with StorageApiClient(pipeline.api.base_url) as api:
            [qid] = held_in_job_state(pipeline, api, 1)  # its answer waits HOLD_MS in the job
            status = wait_terminal(api, qid, timeout=120)
            assert status.state == "failed"
            with watching(pipeline, topics.VALIDATED.name, topics.LOW_QUALITY.name, topics.DEAD_LETTER.name) as watch:
                # The original answer still comes out of the job, after the sweep.
                watch.wait_for(lambda s: any(x.message.question_id == qid and x.topic != topics.DEAD_LETTER.name
                                             for x in s), timeout=HOLD_MS / 1000 + 120, what="the late answer")
        time.sleep(5)  # the persister has read the late answer
        assert terminal_rows(pipeline, [qid])[qid] == ["failed"]
        with db.connect(pipeline.postgres.url, timeout=None) as conn, conn.cursor() as cur:
            cur.execute("SELECT error_kind, reason FROM failed_questions WHERE question_id = %s", (qid,))
            [(kind, reason)] = cur.fetchall()
        assert kind == "stuck" and "bound 15 s" in reason
    finally:
        Stack(pipeline, only=["persister"]).down()
        Stack(pipeline, only=["persister"]).up()
