"""KafkaLink: what /health says about Kafka, from the clients' own reports (statistics and errors
as librdkafka hands them over; the outage itself is tests/integration/test_kafka_outage.py's)."""

from __future__ import annotations

import json

from confluent_kafka import KafkaError

from services.common.kafka import KafkaLink


def stats(*states: str) -> str:
    brokers = {f"127.0.0.1:9092/{i}": {"name": f"127.0.0.1:9092/{i}", "nodeid": i, "state": s} for i, s in enumerate(states, 1)}
    brokers["127.0.0.1:9092/bootstrap"] = {"name": "127.0.0.1:9092/bootstrap", "nodeid": -1, "state": "INIT"}
    return json.dumps({"brokers": brokers})


def test_up_while_any_client_has_a_broker_up_and_waiting_when_none_has() -> None:
    link = KafkaLink()
    assert not link.ok and link.detail == "not connected yet"
    link.on_stats("consumer", stats("UP"))
    link.on_stats("producer", stats("INIT"))  # an idle producer whose connection the broker closed
    assert link.ok and not link.waiting_for_kafka and link.report() == {"ok": True, "detail": "ok"}
    link.on_error("consumer", KafkaError(KafkaError._ALL_BROKERS_DOWN, "1/1 brokers are down"))
    assert not link.ok and link.waiting_for_kafka
    report = link.report()
    assert "consumer: unreachable: 1/1 brokers are down" in report["detail"] and "down_for_seconds" in report
    link.on_stats("consumer", stats("UP"))
    assert link.ok and link.down_since is None


def test_a_loop_holding_work_for_kafka_over_a_second_is_waiting(monkeypatch) -> None:
    import services.common.kafka as kafka

    now = [1000.0]
    monkeypatch.setattr(kafka.time, "monotonic", lambda: now[0])
    link = KafkaLink()
    link.on_stats("error", stats("UP"))
    link.waiting("error", True)
    assert not link.waiting_for_kafka
    now[0] += 1.5
    link.on_stats("error", stats("UP"))
    assert link.waiting_for_kafka and link.report()["holding_for_seconds"] == {"error": 1.5}
    link.waiting("error", False)
    assert not link.waiting_for_kafka


def test_a_stale_report_no_longer_counts() -> None:
    link = KafkaLink()
    link.on_stats("producer", stats("UP"))
    link._clients["producer"] = (True, "ok", link._clients["producer"][2] - 60)  # not polled for a minute
    link.on_stats("consumer", stats("DOWN"))
    assert not link.ok and "consumer: no broker up" in link.detail


def test_a_commit_refused_while_the_group_reformed_is_sent_again_until_the_partition_is_revoked() -> None:
    """Seen in CI: a replica's restart re-formed the group, the survivor kept questions-pending[0]
    (cooperative rebalancing) but its commit @13 was refused with ILLEGAL_GENERATION and dropped,
    so the group stayed 4 behind for as long as no new question came to that partition."""
    from confluent_kafka import Consumer, KafkaError, TopicPartition

    from services.common.kafka import Committer

    consumer = Consumer({"bootstrap.servers": "127.0.0.1:1", "group.id": "committer-test"})
    try:
        committer = Committer()
        committer.commit(consumer, [TopicPartition("questions-pending", 0, 13)])  # sent, or kept if it cannot be
        refused = TopicPartition("questions-pending", 0, 13)
        committer._on_commit(KafkaError(KafkaError.ILLEGAL_GENERATION), [refused])
        assert committer.pending == {("questions-pending", 0): 13}  # sent again with the next commit

        committer._on_commit(KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED), [refused])
        assert committer.pending == {}  # refused for good: dropped (consumed again by the owner)

        committer.commit(consumer, [TopicPartition("questions-pending", 1, 7)])
        committer._on_commit(KafkaError(KafkaError.UNKNOWN_MEMBER_ID), [TopicPartition("questions-pending", 1, 7)])
        committer.forget([TopicPartition("questions-pending", 1)])  # then revoked: its new owner commits
        assert committer.pending == {}
    finally:
        consumer.close()
