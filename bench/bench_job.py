"""Flink score job: scored responses per second from topic to topic, and added latency at low load.

Runs against the stack that `qactl up` started (same settings: env, ./qactl.toml). Produces
answers (knowledge-base paraphrases and off-topic answers, tagged so they are new) straight to
llm-responses-success and reads the job's outputs:

- throughput: N answers produced at once; responses/s = N / (last output - first produce);
- latency: one answer at a time with a pause between; produce -> output timestamp per answer
  (Kafka's own timestamps), p50 / p99. This includes the job's batching wait (max 100 ms).

    python bench/bench_job.py --count 400 --latency-samples 40
"""

from __future__ import annotations

import argparse
import statistics
import time
import uuid

from confluent_kafka import Consumer, Producer, TopicPartition

from qactl.client import kafka_admin
from services.common import topics
from services.common.knowledge_base import load_knowledge_base
from services.common.schemas import LLMAnswer, encode
from services.common.settings import get_settings

OUTPUTS = (topics.VALIDATED.name, topics.QUESTIONS_PENDING.name, topics.LOW_QUALITY.name, topics.DEAD_LETTER.name)


def answers(count: int) -> list[LLMAnswer]:
    kb = load_knowledge_base()
    made = []
    for i in range(count):
        entry = kb.entries[i % len(kb.entries)]
        pool = [*entry.paraphrases, *entry.degraded]
        made.append(
            LLMAnswer(
                question_id=f"q-bench-{uuid.uuid4().hex[:16]}",
                question=entry.question,
                reference_answer=entry.reference_answer,
                attempt=3,  # the last attempt: low scores end in low-quality, not a regeneration loop
                answer=pool[i % len(pool)],
                model="bench",
                backend="bench",
                llm_latency_ms=0.0,
            )
        )
    return made


def output_reader(bootstrap: str) -> Consumer:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"bench-{uuid.uuid4().hex[:8]}", "enable.auto.commit": False})
    assignment = []
    for topic in OUTPUTS:
        for partition, end in kafka_admin.end_offsets(bootstrap, topic).items():
            assignment.append(TopicPartition(topic, partition, end))
    consumer.assign(assignment)
    return consumer


def collect(consumer: Consumer, wanted: set[str], timeout: float) -> dict[str, int]:
    """question id -> output timestamp (ms) for every wanted id seen before the timeout."""
    seen: dict[str, int] = {}
    deadline = time.monotonic() + timeout
    while len(seen) < len(wanted) and time.monotonic() < deadline:
        for msg in consumer.consume(500, 0.5):
            key = msg.key().decode() if msg.key() else None
            if msg.error() is None and key in wanted and key not in seen:
                seen[key] = msg.timestamp()[1]
    return seen


def produce(producer: Producer, batch: list[LLMAnswer]) -> dict[str, int]:
    stamps: dict[str, int] = {}
    for message in batch:
        now_ms = int(time.time() * 1000)
        stamps[message.question_id] = now_ms
        producer.produce(topics.LLM_SUCCESS.name, value=encode(message), key=message.question_id, timestamp=now_ms)
    producer.flush(30)
    return stamps


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=400, help="answers for the throughput run")
    parser.add_argument("--latency-samples", type=int, default=40)
    parser.add_argument("--pause", type=float, default=0.5, help="seconds between latency samples")
    args = parser.parse_args()
    bootstrap = get_settings().kafka.bootstrap
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 1})

    batch = answers(args.count)
    consumer = output_reader(bootstrap)
    sent = produce(producer, batch)
    seen = collect(consumer, set(sent), timeout=600)
    consumer.close()
    if not seen:
        raise SystemExit("no output from the score job: is it running (qactl status)?")
    elapsed = (max(seen.values()) - min(sent.values())) / 1000
    print(f"throughput: {len(seen)}/{len(batch)} answers scored in {elapsed:.1f} s = {len(seen) / elapsed:.1f} responses/s")

    latencies = []
    consumer = output_reader(bootstrap)
    for message in answers(args.latency_samples):
        stamp = produce(producer, [message])
        got = collect(consumer, {message.question_id}, timeout=60)
        if got:
            latencies.append(got[message.question_id] - stamp[message.question_id])
        time.sleep(args.pause)
    consumer.close()
    if latencies:
        print(
            f"latency at low load ({len(latencies)} samples, one at a time): "
            f"p50 {statistics.median(latencies):.0f} ms, p99 {percentile(latencies, 0.99):.0f} ms, "
            f"max {max(latencies):.0f} ms"
        )


if __name__ == "__main__":
    main()
