"""The dashboard's Redis probe against a real redis-server (on a free port, not 6379)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from datetime import timedelta

import pytest
import redis

from qactl.dashboard.redis_probe import RedisLiveProbe
from services.common.schemas import ErrorInfo, ErrorKind, Hop, Stage
from services.common.settings import load_settings
from services.common.status import StatusTracker
from services.common.waiting import poll_until
from tests.qactl.tui.recorded import T0

pytestmark = pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server not installed")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def redis_url(tmp_path):
    port = _free_port()
    server = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    client = redis.Redis(port=port)

    def answers() -> bool:
        try:
            return bool(client.ping())
        except redis.ConnectionError:
            return False

    if not poll_until(answers, timeout=10, interval=0.05):
        server.kill()
        raise AssertionError(f"redis-server on port {port} did not answer within 10 s")
    client.close()
    yield f"redis://127.0.0.1:{port}/0"
    server.terminate()
    server.wait(timeout=10)


@pytest.fixture
def settings(redis_url):
    return load_settings(redis={"url": redis_url})


def test_seeds_from_existing_questions_then_follows_events(settings):
    tracker = StatusTracker(settings)
    for i in range(5):
        tracker.record(f"q-old-{i}", Hop(stage=Stage.queued, at=T0 + timedelta(seconds=i)))
    tracker.record("q-old-4", Hop(stage=Stage.validated, at=T0 + timedelta(seconds=9), score=0.91))

    probe = RedisLiveProbe(settings)
    rows = probe.recent_questions(limit=3)
    assert [r.question_id for r in rows] == ["q-old-4", "q-old-3", "q-old-2"]
    assert rows[0].stage == Stage.validated and rows[0].score == 0.91

    overload = ErrorInfo(kind=ErrorKind.overload, status_code=503)
    tracker.record("q-new", Hop(stage=Stage.queued, at=T0 + timedelta(seconds=20)))
    tracker.record("q-new", Hop(stage=Stage.retrying_overload, at=T0 + timedelta(seconds=21), error=overload,
                                delay_seconds=2.0))
    rows = probe.recent_questions(limit=3)
    assert rows[0].question_id == "q-new"
    assert rows[0].stage == Stage.retrying_overload and rows[0].error == "overload 503"

    hops = probe.hops("q-new")
    assert [h.stage for h in hops] == [Stage.queued, Stage.retrying_overload]
    probe.close()
    tracker.close()


def test_an_older_duplicate_event_does_not_move_a_question_back(settings):
    tracker = StatusTracker(settings)
    probe = RedisLiveProbe(settings)
    assert probe.recent_questions(10) == []
    tracker.record("q-1", Hop(stage=Stage.validated, at=T0 + timedelta(seconds=5)))
    tracker.record("q-1", Hop(stage=Stage.scoring, at=T0 + timedelta(seconds=4)))  # redelivered late
    [row] = probe.recent_questions(10)
    assert row.stage == Stage.validated
    probe.close()
    tracker.close()


def test_a_lost_connection_raises_then_the_probe_reseeds(settings, redis_url):
    tracker = StatusTracker(settings)
    probe = RedisLiveProbe(settings)
    tracker.record("q-1", Hop(stage=Stage.queued, at=T0))
    assert [r.question_id for r in probe.recent_questions(10)] == ["q-1"]
    admin = redis.Redis.from_url(redis_url)
    admin.client_kill_filter(_type="pubsub")  # as if Redis restarted under the dashboard
    admin.close()
    with pytest.raises(redis.RedisError):
        for _ in range(20):  # the kill is noticed on the next read of the channel
            probe.recent_questions(10)
            time.sleep(0.05)
    tracker.record("q-2", Hop(stage=Stage.queued, at=T0 + timedelta(seconds=1)))
    assert [r.question_id for r in probe.recent_questions(10)] == ["q-2", "q-1"]
    probe.close()
    tracker.close()
