"""The chaos check "every consumer group of the pipeline drained", on the session's real Kafka.

A group that only looks like the pipeline's (CI met one: the consumer tests' own
``llm-consumer-rebalance-…`` group, left behind on the machine's Kafka by an earlier run with
records it never read) is not the stack's to judge: it failed `kill-llm-consumer` with
"consumer group not drained"."""

from __future__ import annotations

import uuid

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from qactl.chaos import stack_checks
from qactl.client import kafka_admin
from services.common.settings import QactlSettings
from services.common.topics import Topic

pytestmark = pytest.mark.stack


def test_a_group_named_like_the_pipelines_is_not_judged(infra_stack: QactlSettings) -> None:
    bootstrap = infra_stack.kafka.bootstrap
    suffix = uuid.uuid4().hex[:8]
    topic, group = f"test-stray-{suffix}", f"llm-consumer-stray-{suffix}"
    kafka_admin.ensure_topics(bootstrap, [Topic(topic, 1, "a test group's topic")])
    producer = Producer({"bootstrap.servers": bootstrap})
    for n in range(3):
        producer.produce(topic, value=f"unread {n}".encode())
    assert producer.flush(30) == 0
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
    try:
        consumer.commit(offsets=[TopicPartition(topic, 0, 0)], asynchronous=False)
    finally:
        consumer.close()

    assert kafka_admin.consumer_group_lag(bootstrap, group) == {(topic, 0): 3}  # it does lag
    assert not any(line.startswith(f"{group}:") for line in stack_checks.lagging_groups(bootstrap))


def test_the_pipeline_groups_are_the_services_own() -> None:
    groups = stack_checks.pipeline_groups()
    assert groups == {
        "llm-consumer", "persister", "flink-score-job",
        "retry-overload", "retry-overload-delay", "retry-quota", "retry-quota-delay",
    }  # fmt: skip
