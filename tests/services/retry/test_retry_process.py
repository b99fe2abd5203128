"""retry-overload as a real process, declared exactly as `qactl up` declares it.

kill -9 while a retry waits on its delay topic: nothing is lost, and the retry still goes out
when due (not before) once the process is back.
"""

from __future__ import annotations

import os
import signal

import pytest

from qactl.runtime.supervisor import port_is_free
from services.common import topics
from services.common.schemas import ErrorInfo, ErrorKind, LLMError
from services.common.settings import QactlSettings
from tests.services.pipeline import produce_models, specs_of, supervised, unique_question, wait_until, watching

pytestmark = pytest.mark.stack


def test_kill_9_of_retry_overload_while_a_retry_waits_loses_nothing(stack_settings: QactlSettings) -> None:
    settings = stack_settings
    question = unique_question("crash-while-waiting")
    error = ErrorInfo(kind=ErrorKind.overload, status_code=503, message="test", retry_after_seconds=4.0)
    failed = LLMError(**{**question.model_dump(), "last_error": error}, error=error)
    specs = specs_of(settings, "retry-overload")
    delay_topic = topics.overload_delay_topic(0).name
    with watching(settings, topics.QUESTIONS_PENDING.name, delay_topic) as watch:
        with supervised(settings, specs) as supervisor:
            produce_models(settings, topics.LLM_OVERLOAD.name, [failed])
            watch.wait_for(lambda seen: watch.of(question.question_id, delay_topic), 30, "the waiting retry")
            os.kill(supervisor.state(specs[0].name).pid, signal.SIGKILL)  # type: ignore[arg-type]
            # A killed process is a zombie a moment before its last thread lets go of its port.
            port = specs[0].ports[0].number
            wait_until(
                lambda: not supervisor.is_running(specs[0].name) and port_is_free(port), 10, "the process to die"
            )
        (waiting,) = watch.of(question.question_id, delay_topic)
        assert not watch.of(question.question_id, topics.QUESTIONS_PENDING.name)
        # Restarted: the retry is still there and goes out when due, not before.
        with supervised(settings, specs):
            watch.wait_for(
                lambda seen: watch.of(question.question_id, topics.QUESTIONS_PENDING.name), 60, "the re-queued question"
            )
    (requeued,) = watch.of(question.question_id, topics.QUESTIONS_PENDING.name)
    assert requeued.timestamp_ms / 1000 >= waiting.message.due_at.timestamp() - 0.005
    assert requeued.message.retries.overload == 1
