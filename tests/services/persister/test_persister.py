"""The persister as a process: terminal messages, produced as the Flink job and the retry services
produce them, become rows and cache entries once, even when replayed or while PostgreSQL restarts."""

from __future__ import annotations

import uuid
from datetime import timedelta

import httpx
from confluent_kafka import Consumer, TopicPartition

from flink.routing import route
from qactl.client import kafka_admin
from qactl.runtime.supervisor import ProcessSpec, Supervisor
from services.common import topics
from services.common.cache import CachedAnswer, cache_key
from services.common.schemas import (
    DeadLetter,
    ErrorInfo,
    ErrorKind,
    Hop,
    LLMAnswer,
    QuestionMessage,
    ScoredAnswer,
    Stage,
    question_id_for,
    utcnow,
)
from services.common.settings import QactlSettings
from services.persister.service import GROUP
from tests.services.pipeline import produce_models, produce_raw, watching
from tests.services.storage_stack import bring_back, query, redis_client, scalar, stop_component, wait_until


def llm_answer(label: str, attempt: int = 0, earlier_scores: tuple[float, ...] = ()) -> LLMAnswer:
    """An answer as the llm-consumer produces it, after ``attempt`` regenerations scored ``earlier_scores``."""
    text = f"{label} {uuid.uuid4().hex[:12]}: what is a consumer group?"
    start = utcnow() - timedelta(seconds=10)
    hops = [Hop(stage=Stage.queued, at=start)]
    moment = start
    for number in range(attempt + 1):
        hops.append(Hop(stage=Stage.generating, at=moment + timedelta(milliseconds=100), attempt=number))
        hops.append(Hop(stage=Stage.scoring, at=moment + timedelta(milliseconds=1100), attempt=number))
        if number < attempt:
            hops.append(Hop(stage=Stage.regenerating, at=moment + timedelta(milliseconds=1300), attempt=number + 1,
                            score=earlier_scores[number]))
        moment += timedelta(milliseconds=1300)
    return LLMAnswer(
        question_id=question_id_for(text), question=text, reference_answer="Consumers sharing partitions.",
        attempt=attempt, submitted_at=start, hops=hops, answer=f"answer to {text}", model="qactl-sim",
        backend="gateway", llm_latency_ms=1000.0,
    )


def regenerated(label: str, scores: list[float], settings: QactlSettings) -> QuestionMessage | ScoredAnswer:
    """A question through the Flink job's own routing, one answer per score, each its own text:
    the last message routed (a regeneration request, or the terminal answer)."""
    text = f"{label} {uuid.uuid4().hex[:12]}: what is a consumer group?"
    start = utcnow() - timedelta(seconds=10)
    message: QuestionMessage | ScoredAnswer = QuestionMessage(
        question_id=question_id_for(text), question=text, reference_answer="Consumers sharing partitions.",
        submitted_at=start, hops=[Hop(stage=Stage.queued, at=start)],
    )
    for attempt, score in enumerate(scores):
        moment = start + timedelta(seconds=2 * attempt)
        generating = message.advance(Hop(stage=Stage.generating, at=moment, attempt=attempt))
        answer = generating.advance(
            Hop(stage=Stage.scoring, at=moment + timedelta(seconds=1), attempt=attempt), LLMAnswer,
            answer=f"answer {attempt} to {text}", model=f"model-{attempt}", backend="gateway", llm_latency_ms=100.0 * (attempt + 1),
        )
        _, message = route(answer, score, settings.policies)
    return message


def scored(answer: LLMAnswer, score: float, settings: QactlSettings) -> tuple[str, ScoredAnswer]:
    """What the Flink job produces for it (its own routing function)."""
    topic, message = route(answer, score, settings.policies)
    assert isinstance(message, ScoredAnswer), topic
    return topic, message


def dead_letter(label: str) -> DeadLetter:
    """A question whose overload retries ran out, as the retry service dead-letters it."""
    text = f"{label} {uuid.uuid4().hex[:12]}: why is the broker busy?"
    start = utcnow() - timedelta(seconds=20)
    question = QuestionMessage(
        question_id=question_id_for(text), question=text, submitted_at=start,
        hops=[Hop(stage=Stage.queued, at=start), Hop(stage=Stage.generating, at=start + timedelta(seconds=1)),
              Hop(stage=Stage.retrying_overload, at=start + timedelta(seconds=2),
                  error=ErrorInfo(kind=ErrorKind.overload, status_code=503))],
    )
    return DeadLetter(
        question_id=question.question_id, reason="overload retries used up (3 of 3)",
        error=ErrorInfo(kind=ErrorKind.exhausted, status_code=503, message="service unavailable"),
        source_topic=topics.LLM_OVERLOAD.name, message=question, failed_at=start + timedelta(seconds=15),
    )


def counts(settings: QactlSettings, question_id: str) -> dict[str, int]:
    return {
        table: scalar(settings, f"SELECT count(*) FROM {table} WHERE question_id = %s", question_id)
        for table in ("questions", "responses", "failed_questions", "score_history", "processing_metrics")
    }


def state_of(settings: QactlSettings, question_id: str) -> str | None:
    return scalar(settings, "SELECT state FROM questions WHERE question_id = %s AND terminal_at IS NOT NULL", question_id)


def health(spec: ProcessSpec) -> httpx.Response:
    return httpx.get(f"http://127.0.0.1:{spec.ports[0].number}/health", timeout=3)


def test_outcomes_become_rows_and_cache_entries(storage_settings: QactlSettings, persister: ProcessSpec) -> None:
    validated_topic, validated = scored(llm_answer("validated", attempt=1, earlier_scores=(0.52,)), 0.88, storage_settings)
    low = regenerated("low", [0.4, 0.5, 0.58, 0.55], storage_settings)
    low_topic = topics.LOW_QUALITY.name
    failed = dead_letter("failed")
    assert (validated_topic, low_topic) == (topics.VALIDATED.name, topics.LOW_QUALITY.name)
    produce_models(storage_settings, validated_topic, [validated])
    produce_models(storage_settings, low_topic, [low])
    produce_models(storage_settings, topics.DEAD_LETTER.name, [failed])

    for question_id, state in ((validated.question_id, "validated"), (low.question_id, "low_quality"),
                               (failed.question_id, "failed")):
        wait_until(lambda: state_of(storage_settings, question_id) == state, 30, f"{question_id} {state}")

    status, score, attempt, model, hops = query(
        storage_settings, "SELECT status, score, attempt, model, jsonb_array_length(hops) FROM responses WHERE question_id = %s",
        validated.question_id,
    )[0]
    assert (status, score, attempt, model, hops) == ("validated", 0.88, 1, "qactl-sim", len(validated.hops))
    assert query(storage_settings, "SELECT attempt, score FROM score_history WHERE question_id = %s ORDER BY attempt",
                 validated.question_id) == [(0, 0.52), (1, 0.88)]
    # Every attempt's score is kept; the answer stored is the best one (attempt 2), not the last.
    assert query(storage_settings, "SELECT attempt, score FROM score_history WHERE question_id = %s ORDER BY attempt",
                 low.question_id) == [(0, 0.4), (1, 0.5), (2, 0.58), (3, 0.55)]
    assert query(
        storage_settings, "SELECT status, answer, score, model, attempt, llm_latency_ms FROM responses WHERE question_id = %s",
        low.question_id,
    ) == [("low_quality", f"answer 2 to {low.question}", 0.58, "model-2", 3, 300.0)]
    assert "kept best answer of attempt 2 (score 0.580)" in scalar(
        storage_settings, "SELECT hops -> -1 ->> 'note' FROM responses WHERE question_id = %s", low.question_id
    )
    stages = {row[0] for row in query(storage_settings, "SELECT stage FROM processing_metrics WHERE question_id = %s",
                                      validated.question_id)}
    assert stages == {"queued", "generating", "scoring", "regenerating", "total"}
    total = scalar(storage_settings, "SELECT duration_ms FROM processing_metrics WHERE question_id = %s AND stage = 'total'",
                   validated.question_id)
    assert abs(total - (validated.scored_at - validated.submitted_at).total_seconds() * 1000) < 1

    reason, kind, code, source = query(
        storage_settings, "SELECT reason, error_kind, status_code, source_topic FROM failed_questions WHERE question_id = %s",
        failed.question_id,
    )[0]
    assert (reason, kind, code, source) == ("overload retries used up (3 of 3)", "exhausted", 503, topics.LLM_OVERLOAD.name)

    cache = redis_client(storage_settings)
    hit = CachedAnswer.from_bytes(cache.get(cache_key(validated.question_id)))
    assert (hit.answer, hit.score, hit.status) == (validated.answer, 0.88, "validated")
    # Only validated answers are served again: low quality and failed are not cached.
    assert cache.get(cache_key(low.question_id)) is None
    assert cache.get(cache_key(failed.question_id)) is None


def test_a_regeneration_that_fails_ends_low_quality_with_the_best_answer(
    storage_settings: QactlSettings, persister: ProcessSpec
) -> None:
    """Its overload retries used up, regeneration 2 ends the question with attempt 0's answer (the best)."""
    from services.common.endings import failure_ending

    waiting = regenerated("failed regeneration", [0.55, 0.41], storage_settings)
    assert isinstance(waiting, QuestionMessage) and waiting.attempt == 2
    error = ErrorInfo(kind=ErrorKind.exhausted, status_code=503, message="overload retries exhausted (3)")
    ending = failure_ending(
        waiting, "overload retries exhausted (3)", error, topics.LLM_OVERLOAD.name,
        storage_settings.policies.quality_threshold,
    )
    assert ending.topic == topics.LOW_QUALITY.name
    produce_models(storage_settings, ending.topic, [ending.message])
    wait_until(lambda: state_of(storage_settings, waiting.question_id) == "low_quality", 30, "low_quality")

    assert query(
        storage_settings, "SELECT answer, score, model, attempt FROM responses WHERE question_id = %s", waiting.question_id
    ) == [(f"answer 0 to {waiting.question}", 0.55, "model-0", 2)]
    assert scalar(storage_settings, "SELECT count(*) FROM failed_questions WHERE question_id = %s", waiting.question_id) == 0
    # Attempts 0 and 1 were scored; regeneration 2 never had an answer to score.
    assert query(storage_settings, "SELECT attempt, score, answer FROM score_history WHERE question_id = %s ORDER BY attempt",
                 waiting.question_id) == [(0, 0.55, f"answer 0 to {waiting.question}"), (1, 0.41, f"answer 1 to {waiting.question}")]
    last_hop = query(storage_settings, "SELECT hops -> -1 FROM responses WHERE question_id = %s", waiting.question_id)[0][0]
    assert last_hop["stage"] == "low_quality" and last_hop["error"]["kind"] == "exhausted"
    assert last_hop["note"] == (
        "regeneration 2 failed: overload retries exhausted (3); kept best answer (score 0.550)"
    )
    assert redis_client(storage_settings).get(cache_key(waiting.question_id)) is None


def rewind_group(settings: QactlSettings, positions: dict[tuple[str, int], int]) -> None:
    """Move the persister group's committed offsets back (the group is empty while it is stopped)."""
    consumer = Consumer({"bootstrap.servers": settings.kafka.bootstrap, "group.id": GROUP, "enable.auto.commit": False})
    try:
        offsets = [TopicPartition(topic, partition, offset) for (topic, partition), offset in positions.items()]
        consumer.assign(offsets)
        consumer.commit(offsets=offsets, asynchronous=False)
    finally:
        consumer.close()


def end_positions(settings: QactlSettings) -> dict[tuple[str, int], int]:
    found = {}
    for topic in (topics.VALIDATED.name, topics.LOW_QUALITY.name, topics.DEAD_LETTER.name):
        for partition, offset in kafka_admin.end_offsets(settings.kafka.bootstrap, topic).items():
            found[(topic, partition)] = offset
    return found


def test_a_replay_writes_nothing_twice(storage_settings: QactlSettings, persister: ProcessSpec) -> None:
    start = end_positions(storage_settings)
    _, validated = scored(llm_answer("replayed", attempt=1, earlier_scores=(0.3,)), 0.9, storage_settings)
    failed = dead_letter("replayed failure")
    produce_models(storage_settings, topics.VALIDATED.name, [validated])
    produce_models(storage_settings, topics.DEAD_LETTER.name, [failed])
    wait_until(lambda: state_of(storage_settings, validated.question_id) == "validated", 30, "validated")
    wait_until(lambda: state_of(storage_settings, failed.question_id) == "failed", 30, "failed")
    first = {qid: counts(storage_settings, qid) for qid in (validated.question_id, failed.question_id)}

    # A duplicate delivery (at-least-once upstream) and a second, different outcome for the same question.
    produce_models(storage_settings, topics.VALIDATED.name, [validated])
    produce_models(storage_settings, topics.DEAD_LETTER.name, [
        DeadLetter(question_id=validated.question_id, reason="late failure of a question already answered",
                   error=ErrorInfo(kind=ErrorKind.overload), source_topic=topics.LLM_OVERLOAD.name)])
    # And a real replay: the group's offsets moved back before all of it, the persister restarted.
    supervisor = Supervisor(storage_settings)
    wait_until(lambda: kafka_admin.consumer_group_lag(storage_settings.kafka.bootstrap, GROUP).get(
        (topics.DEAD_LETTER.name, 0), 1) == 0, 30, "the persister to catch up")
    supervisor.stop(persister.name, persister.stop_signal, 30)
    assert supervisor.tail(persister.name, 1).endswith("persister: stopped")  # SIGTERM: a clean stop
    rewind_group(storage_settings, start)
    supervisor.start(persister)
    supervisor.wait_healthy(persister)
    wait_until(lambda: all(lag == 0 for lag in kafka_admin.consumer_group_lag(storage_settings.kafka.bootstrap, GROUP).values()),
               60, "the replay to be consumed")

    assert {qid: counts(storage_settings, qid) for qid in first} == first
    assert first[validated.question_id] == {"questions": 1, "responses": 1, "failed_questions": 0, "score_history": 2,
                                            "processing_metrics": 7}
    assert state_of(storage_settings, validated.question_id) == "validated"
    cached = CachedAnswer.from_bytes(redis_client(storage_settings).get(cache_key(validated.question_id)))
    assert cached.answer == validated.answer


def test_poison_is_dead_lettered_or_stored_and_the_persister_goes_on(
    storage_settings: QactlSettings, persister: ProcessSpec
) -> None:
    key = f"q-poison{uuid.uuid4().hex[:12]}"
    with watching(storage_settings, topics.DEAD_LETTER.name) as watch:
        produce_raw(storage_settings, topics.VALIDATED.name, b'{"schema_version": 1, "question_id": "x"}', key.encode())
        watch.wait_for(lambda s: watch.of(key), timeout=30, what="the poison's dead letter")
    letter = watch.of(key)[0].message
    assert letter.error.kind is ErrorKind.poison and letter.source_topic == topics.VALIDATED.name
    wait_until(lambda: state_of(storage_settings, key) == "failed", 30, "the poison's failure row")

    own_key = f"q-deadpoison{uuid.uuid4().hex[:8]}"
    produce_raw(storage_settings, topics.DEAD_LETTER.name, b"\xff not a dead letter", own_key.encode())
    _, after = scored(llm_answer("after poison"), 0.95, storage_settings)
    produce_models(storage_settings, topics.VALIDATED.name, [after])

    wait_until(lambda: state_of(storage_settings, own_key) == "failed", 30, "the dead-letter poison stored")
    kind, raw = query(storage_settings, "SELECT error_kind, raw FROM failed_questions WHERE question_id = %s", own_key)[0]
    assert kind == "poison" and raw
    wait_until(lambda: state_of(storage_settings, after.question_id) == "validated", 30, "the next message")
    assert health(persister).json()["ok"] is True


def test_a_nul_byte_or_a_message_that_is_no_outcome_stops_nothing(
    storage_settings: QactlSettings, persister: ProcessSpec
) -> None:
    """psycopg2 refuses NUL with a ValueError, and mixed naive and aware times cannot be ordered:
    each once made the persister exit and replay the same message forever."""
    _, answer = scored(llm_answer("nul"), 0.9, storage_settings)
    with_nul = answer.model_copy(update={
        "question": "what is \x00 NUL?", "answer": "NUL\x00 is U+0000\x00",
        "hops": [*answer.hops[:-1], answer.hops[-1].model_copy(update={"note": "noted\x00"})],
    })
    _, naive = scored(llm_answer("naive times"), 0.9, storage_settings)
    mixed = naive.model_dump_json().replace(naive.submitted_at.isoformat().replace("+00:00", "Z"),
                                            naive.submitted_at.replace(tzinfo=None).isoformat())
    assert mixed != naive.model_dump_json()
    produce_models(storage_settings, topics.VALIDATED.name, [with_nul])
    produce_raw(storage_settings, topics.VALIDATED.name, mixed.encode(), naive.question_id.encode())

    wait_until(lambda: state_of(storage_settings, with_nul.question_id) == "validated", 30, "the answer stored without NUL")
    question, stored, note = query(
        storage_settings, "SELECT question, answer, hops -> -1 ->> 'note' FROM responses WHERE question_id = %s",
        with_nul.question_id,
    )[0]
    assert (question, stored, note) == ("what is  NUL?", "NUL is U+0000", "noted")
    wait_until(lambda: state_of(storage_settings, naive.question_id) == "failed", 30, "the unusable message stored as failed")
    kind, reason = query(storage_settings, "SELECT error_kind, reason FROM failed_questions WHERE question_id = %s",
                         naive.question_id)[0]
    assert kind == "poison" and "no outcome can be made of it: TypeError" in reason

    _, after = scored(llm_answer("after NUL"), 0.95, storage_settings)
    produce_models(storage_settings, topics.VALIDATED.name, [after])
    wait_until(lambda: state_of(storage_settings, after.question_id) == "validated", 30, "the next message")
    assert health(persister).json()["ok"] is True


def test_postgres_stopped_and_restarted_mid_stream_loses_nothing(
    storage_settings: QactlSettings, persister: ProcessSpec
) -> None:
    before = [scored(llm_answer(f"before outage {i}"), 0.9, storage_settings)[1] for i in range(3)]
    during = [scored(llm_answer(f"during outage {i}"), 0.9, storage_settings)[1] for i in range(10)]
    produce_models(storage_settings, topics.VALIDATED.name, before)
    for message in before:
        wait_until(lambda: state_of(storage_settings, message.question_id) == "validated", 30, "before the outage")

    stop_component(storage_settings, "postgres")
    try:
        produce_models(storage_settings, topics.VALIDATED.name, during)
        report = wait_until(lambda: (lambda r: r if r.status_code == 503 else None)(health(persister)), 30,
                            "health to report PostgreSQL down")
        assert report.json()["postgres"]["ok"] is False and report.json()["status"] == "waiting for postgres"
    finally:
        bring_back(storage_settings, "postgres")

    for message in during:
        wait_until(lambda: state_of(storage_settings, message.question_id) == "validated", 60, "after the outage")
    assert all(counts(storage_settings, m.question_id)["responses"] == 1 for m in before + during)
    wait_until(lambda: health(persister).status_code == 200, 15, "health ok again")


def test_a_question_that_normalises_past_a_btree_entry_is_stored_and_holds_nothing(
    storage_settings: QactlSettings, persister: ProcessSpec
) -> None:
    # 2,000 characters (the API's limit) of U+FDFA, which NFKC expands to 18 characters each: the
    # normalised question is ~100 KB, past the 8,191 bytes a btree index entry may take. Before
    # migration 0003 its insert failed with "index row requires ... bytes", which the persister
    # took for PostgreSQL being down: it held the partition, and every later answer on it, for ever.
    base = llm_answer("long")
    text = "\ufdfa" * 2000
    long = base.model_copy(update={"question": text, "question_id": question_id_for(text)})
    topic, message = scored(long, 0.9, storage_settings)
    after_topic, after = scored(llm_answer("after the long one"), 0.9, storage_settings)
    produce_models(storage_settings, topic, [message])
    produce_models(storage_settings, after_topic, [after])
    for question_id in (message.question_id, after.question_id):
        wait_until(lambda: state_of(storage_settings, question_id) == "validated", 30, f"{question_id} stored")
    assert scalar(storage_settings, "SELECT length(normalized_question) FROM responses WHERE question_id = %s",
                  message.question_id) == 2000 * 18
