"""The persister's own sends (a poison forwarded to the dead letter): committed only once Kafka
acknowledged them. The persister runs in a thread here, alone in its group."""

from __future__ import annotations

import os
import threading
import uuid

import pytest

from services.common import topics
from services.common.settings import QactlSettings
from services.persister.service import GROUP, Persister
from tests.services.pipeline import committed_offset, produce_raw, records_refused, running, watching
from tests.services.storage_stack import scalar, wait_until


def persister_thread(settings: QactlSettings, ended: threading.Event):
    def run(stop: threading.Event) -> None:
        try:
            Persister(settings, stop, client_id="persister-test").run()
        finally:
            ended.set()

    return running(run, "persister")


def test_a_dead_letter_kafka_refuses_is_not_committed_and_is_forwarded_later(storage_settings: QactlSettings) -> None:
    """A poison whose dead letter the broker refuses (over the topic's size limit) was committed
    after ``flush()`` as if forwarded: no dead letter, no failure row, the question lost."""
    settings = storage_settings
    key = f"q-refused-{uuid.uuid4().hex[:12]}"
    poison = b"\xff not an answer " + os.urandom(8192)
    with watching(settings, topics.DEAD_LETTER.name) as watch:
        ended = threading.Event()
        with records_refused(settings, topics.DEAD_LETTER.name):
            with pytest.raises(RuntimeError, match="not delivered"):
                with persister_thread(settings, ended):
                    partition, offset = produce_raw(settings, topics.VALIDATED.name, poison, key.encode())
                    wait_until(ended.is_set, 30, "the persister to stop on the refused dead letter")
        assert committed_offset(settings, GROUP, topics.VALIDATED.name, partition) <= offset
        watch.settle(0.5)
        assert not watch.of(key)

        with persister_thread(settings, threading.Event()):
            wait_until(
                lambda: scalar(settings, "SELECT state FROM questions WHERE question_id = %s", key) == "failed",
                30, "the poison forwarded again, then stored as a failure",
            )
        watch.wait_for(lambda seen: watch.of(key), 10, "the dead letter")
        (letter,) = watch.of(key)
        assert letter.message.source_topic == topics.VALIDATED.name and letter.message.raw
