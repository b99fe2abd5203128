"""The quality gate's batch logic with the real scorer and model, without a Flink cluster."""

import json

import pytest

from flink.gate import JobConfig, QualityGate
from services.common import topics
from services.common.knowledge_base import load_knowledge_base
from services.common.schemas import DeadLetter, LLMAnswer, QuestionMessage, ScoredAnswer, encode
from services.common.settings import Policies


@pytest.fixture(scope="module")
def gate():
    config = JobConfig(bootstrap_servers="unused:9092", redis_url=None, policies=Policies())
    return QualityGate(config, status=None)


@pytest.fixture(scope="module")
def entry():
    return load_knowledge_base().entries[0]


def answer_for(entry, text, attempt=0, reference=True):
    return LLMAnswer(
        question_id=f"q-test-{attempt}-{len(text)}",
        question=entry.question,
        reference_answer=entry.reference_answer if reference else None,
        attempt=attempt,
        answer=text,
        model="qactl-sim",
        backend="gateway",
        llm_latency_ms=1.0,
    )


def raw(message):
    return encode(message).decode()


def test_a_batch_is_routed_by_score(gate, entry):
    good = answer_for(entry, entry.paraphrases[0])
    bad = answer_for(entry, entry.degraded[0])
    routed = gate.process_batch([raw(good), raw(bad)])
    by_id = {question_id: (topic, payload) for topic, question_id, payload in routed}

    topic, payload = by_id[good.question_id]
    assert topic == topics.VALIDATED.name
    assert ScoredAnswer.model_validate_json(payload).score > Policies().quality_threshold

    topic, payload = by_id[bad.question_id]
    assert topic == topics.QUESTIONS_PENDING.name
    regeneration = QuestionMessage.model_validate_json(payload)
    assert regeneration.attempt == 1
    assert regeneration.previous_answer == entry.degraded[0]
    assert regeneration.previous_score is not None and regeneration.previous_score <= Policies().quality_threshold


def test_low_score_after_the_last_regeneration_is_low_quality(gate, entry):
    last = answer_for(entry, entry.degraded[1], attempt=Policies().max_regenerations)
    [(topic, question_id, payload)] = gate.process_batch([raw(last)])
    assert topic == topics.LOW_QUALITY.name and question_id == last.question_id
    assert ScoredAnswer.model_validate_json(payload).score <= Policies().quality_threshold


def test_malformed_input_goes_to_dead_letter_and_the_rest_is_scored(gate, entry):
    good = answer_for(entry, entry.paraphrases[1])
    missing_answer = json.dumps({"question_id": "q-broken", "question": "x"})
    routed = gate.process_batch(["not json at all", missing_answer, raw(good)])
    letters = [DeadLetter.model_validate_json(p) for t, _, p in routed if t == topics.DEAD_LETTER.name]
    assert {letter.question_id for letter in letters} == {"unknown", "q-broken"}
    assert all(letter.error.kind == "poison" and letter.raw for letter in letters)
    assert any("answer" in letter.reason for letter in letters)
    assert [t for t, q, _ in routed if q == good.question_id] == [topics.VALIDATED.name]


def test_batch_scores_equal_one_at_a_time(gate, entry):
    messages = [answer_for(entry, text) for text in [*entry.paraphrases, *entry.degraded]]
    together = gate.process_batch([raw(m) for m in messages])
    alone = [gate.process_batch([raw(m)])[0] for m in messages]

    def score_of(payload):
        data = json.loads(payload)
        return data.get("score", data.get("previous_score"))

    assert [score_of(p) for _, _, p in together] == pytest.approx([score_of(p) for _, _, p in alone], abs=1e-5)
