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


def test_the_reference_answer_is_part_of_a_questions_identity():
    from services.common.schemas import question_key

    plain = question_key("What is Kafka?")
    with_reference = question_key("What is Kafka?", "A distributed log.")
    assert with_reference != plain
    assert question_key("what is  KAFKA?", "  A distributed\n log. ") == with_reference  # spacing is not meaning
    assert question_key("What is Kafka?", "a distributed log.") != with_reference  # case is scored, so it counts
    assert question_key("What is Kafka?", "   ") == question_key("What is Kafka?", None) == plain
    # A separator inside the text cannot make two different (question, reference) pairs collide.
    assert question_key("a\x1fb", "c") != question_key("a", "b\x1fc")


def test_each_run_of_a_question_has_its_own_id_and_the_same_key():
    from services.common.schemas import question_key, question_key_of, run_of

    key = question_key("What is Kafka?", "A log.")
    first, second = question_id_for("What is Kafka?", "A log."), question_id_for("What is Kafka?", "A log.", run=2)
    assert (first, second) == (key, f"{key}-r2")
    assert [question_key_of(i) for i in (first, second)] == [key, key]
    assert [run_of(i) for i in (first, second, f"{key}-r12")] == [1, 2, 12]
    assert question_key_of("poison-questions-dead-letter-0-7") == "poison-questions-dead-letter-0-7"
    assert len(question_id_for("x", run=999_999)) <= 64
    with pytest.raises(ValueError):
        question_id_for("x", run=0)


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


def test_advance_carries_the_question_on_to_the_hop_stage() -> None:
    from services.common.schemas import DelayedRetry, ErrorInfo, ErrorKind, Hop, LLMError, QuestionMessage, Stage

    error = ErrorInfo(kind=ErrorKind.overload, status_code=503, message="busy")
    start = QuestionMessage(question_id="q-1", question="why?", attempt=1)
    generating = Hop(stage=Stage.generating, topic="questions-pending")
    failing = Hop(stage=Stage.retrying_overload, topic="llm-responses-error-overload", error=error)
    failed = start.advance(generating).advance(failing, LLMError, last_error=error, error=error, model="m")
    assert isinstance(failed, LLMError)
    assert failed.hops == [generating, failing] and failed.last_error == error and failed.model == "m"
    assert failed.timestamps == {"generating": generating.at, "retrying-overload": failing.at}

    later = Hop(stage=Stage.retrying_overload, topic="retry-overload-delay-1")
    kept = failed.advance(later, DelayedRetry, keep_entry_time=True, due_at=later.at, delay_seconds=1.0)
    assert kept.timestamps["retrying-overload"] == failing.at  # the first entry's time stays
    assert set(DelayedRetry.model_fields) >= set(kept.model_dump()) and kept.question == "why?"
    replaced = failed.advance(later)
    assert type(replaced) is QuestionMessage and replaced.timestamps["retrying-overload"] == later.at
    assert replaced.model_dump(exclude={"hops", "timestamps"}) == start.model_dump(exclude={"hops", "timestamps", "last_error"}) | {"last_error": error.model_dump()}
