"""Kafka for the dashboard: end offsets and consumer group lag, one admin client for its life."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from confluent_kafka import ConsumerGroupTopicPartitions, KafkaException, TopicPartition
from confluent_kafka.admin import OffsetSpec

from qactl.client import kafka_admin
from qactl.dashboard.model import GroupLag
from services.common.settings import QactlSettings
from services.common.topics import all_topics


class KafkaAdminProbe:
    """End offsets of every declared topic and the lag of every consumer group.

    One ``AdminClient`` is kept (a new one per poll would cost a connection and threads each
    second); requests for all groups are issued together and then awaited.
    """

    def __init__(self, settings: QactlSettings, timeout: float = 2.0, groups_every: int = 10) -> None:
        self._bootstrap = settings.kafka.bootstrap
        self._timeout = timeout
        self._partitions = {t.name: t.partitions for t in all_topics(settings.policies)}
        self._client: object | None = None
        self._ends: dict[tuple[str, int], int] = {}
        self._groups: list[str] = []
        self._groups_every = groups_every  # new groups are rare: list them every few polls
        self._polls = 0

    def _admin(self):  # type: ignore[no-untyped-def]
        if self._client is None:
            self._client = kafka_admin.admin(self._bootstrap, self._timeout)
        return self._client

    def end_offsets(self, topics: Sequence[str]) -> Mapping[str, int]:
        request = {
            TopicPartition(topic, p): OffsetSpec.latest()
            for topic in topics
            for p in range(self._partitions.get(topic, 1))
        }
        futures = self._admin().list_offsets(request, request_timeout=self._timeout)
        totals: dict[str, int] = {}
        first_error: Exception | None = None
        for tp, future in futures.items():
            try:
                offset = future.result(self._timeout).offset
            except KafkaException as exc:  # a topic not created yet: leave it out
                first_error = first_error or exc
                continue
            self._ends[(tp.topic, tp.partition)] = offset
            totals[tp.topic] = totals.get(tp.topic, 0) + offset
        if not totals and first_error is not None:
            raise first_error
        return totals

    def group_lags(self) -> Sequence[GroupLag]:
        client = self._admin()
        if self._polls % self._groups_every == 0 or not self._groups:
            listed = client.list_consumer_groups(request_timeout=self._timeout).result(self._timeout)
            self._groups = sorted(g.group_id for g in listed.valid)
        self._polls += 1
        if not self._groups:
            return []
        described = client.describe_consumer_groups(self._groups, request_timeout=self._timeout)
        offsets = {
            group: client.list_consumer_group_offsets(
                [ConsumerGroupTopicPartitions(group)], request_timeout=self._timeout
            )[group]
            for group in self._groups
        }
        committed: dict[str, list[object]] = {}
        for group, future in offsets.items():
            partitions = future.result(self._timeout).topic_partitions or []
            committed[group] = [tp for tp in partitions if tp.offset >= 0]
        # Ends of partitions this poll did not already ask for (topics outside the declared ones).
        unknown = {
            (tp.topic, tp.partition)
            for tps in committed.values()
            for tp in tps
            if (tp.topic, tp.partition) not in self._ends
        }
        if unknown:
            request = {TopicPartition(t, p): OffsetSpec.latest() for t, p in unknown}
            for tp, future in client.list_offsets(request, request_timeout=self._timeout).items():
                self._ends[(tp.topic, tp.partition)] = future.result(self._timeout).offset
        lags = []
        for group in self._groups:
            members, state, held = None, "", []
            try:
                description = described[group].result(self._timeout)
                members, state = len(description.members), str(description.state.name).lower()
                held = [kafka_admin.member_of(m) for m in description.members]
            except Exception:  # the description is a nicety; the lag is what matters
                pass
            per_topic: dict[str, int] = {}
            for tp in committed.get(group, []):
                end = self._ends.get((tp.topic, tp.partition), tp.offset)
                per_topic[tp.topic] = per_topic.get(tp.topic, 0) + max(0, end - tp.offset)
            for topic, lag in sorted(per_topic.items()):
                assignment = tuple(
                    sorted((m.client_id, tuple(p for t, p in m.partitions if t == topic)) for m in held)
                )
                lags.append(GroupLag(group, topic, lag, members, state, assignment))
        return lags
