import pytest
from pydantic import BaseModel

from services.common import topics
from services.common.schemas import (
    LLMAnswer,
    PoisonMessage,
    QuestionMessage,
    decode,
    encode,
    model_for_topic,
    question_id_for,
)
from services.common.settings import Policies


def test_question_id_is_stable_for_the_same_normalized_question():
    assert question_id_for("What is Kafka?") == question_id_for("  what   is KAFKA? ")
    assert question_id_for("What is Kafka?") != question_id_for("What is Flink?")


def test_round_trip_keeps_every_field():
    message = QuestionMessage(question_id="q-1", question="What is Kafka?", reference_answer="A log.")
    assert decode(QuestionMessage, encode(message)) == message


@pytest.mark.parametrize(
    "raw, reason",
    [
        (None, "empty payload"),
        (b"\xff\xfe not json", "undecodable|Invalid JSON"),
        (b'{"question_id": "q-1"}', "question"),
        (b'{"question_id": "q-1", "question": "x", "attempt": -1}', "attempt"),
        (b'{"question_id": "q-1", "question": "x", "unknown": 1}', "unknown"),
    ],
)
def test_invalid_payloads_are_poison_with_a_reason(raw, reason):
    with pytest.raises(PoisonMessage, match=reason):
        decode(QuestionMessage, raw)


def test_an_invalid_message_is_never_encoded():
    message = LLMAnswer(
        question_id="q-1", question="q", answer="a", model="m", backend="b", llm_latency_ms=1.0
    )
    message.llm_latency_ms = -5  # bypasses validation on assignment
    with pytest.raises(ValueError):
        encode(message)


def test_every_topic_has_a_payload_model():
    for topic in topics.all_topics(Policies()):
        assert issubclass(model_for_topic(topic.name), BaseModel), topic.name
