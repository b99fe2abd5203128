"""Kafka through the admin API: brokers, topics and partitions, end offsets, consumer lag.

Each function makes its own ``AdminClient`` unless given one; a poller (the dashboard) should
make one with ``admin()`` and pass it, as a client costs threads and connections.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass

from confluent_kafka import ConsumerGroupTopicPartitions, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic, OffsetSpec, ResourceType

from qactl.errors import QactlError
from services.common.topics import Replication, Topic
from services.common.waiting import Deadline


class TopicMismatch(QactlError):
    """A topic exists with another partition count than the one declared in topics.py."""


@dataclass(frozen=True)
class ClusterInfo:
    brokers: int
    topics: dict[str, int]  # name -> partition count; internal topics (``__...``) left out
    broker_ids: tuple[int, ...] = ()


def admin(bootstrap: str, timeout: float = 5.0) -> AdminClient:
    # librdkafka would otherwise retry a dead broker forever and log to stderr while doing so.
    return AdminClient(
        {
            "bootstrap.servers": bootstrap,
            "socket.timeout.ms": int(timeout * 1000),
            "logger": _silent,
        }
    )


def _quiet_logger() -> logging.Logger:
    logger = logging.getLogger("qactl.client.librdkafka")
    logger.addHandler(logging.NullHandler())
    logger.propagate = False
    return logger


_silent = _quiet_logger()


def cluster_info(bootstrap: str, timeout: float = 5.0, client: AdminClient | None = None) -> ClusterInfo:
    metadata = (client or admin(bootstrap, timeout)).list_topics(timeout=timeout)
    topics = {
        name: len(meta.partitions)
        for name, meta in metadata.topics.items()
        if not name.startswith("__") and meta.error is None
    }
    return ClusterInfo(brokers=len(metadata.brokers), topics=topics, broker_ids=tuple(sorted(metadata.brokers)))


def ensure_topics(
    bootstrap: str, topics: Iterable[Topic], timeout: float = 30.0, replication: Replication | None = None
) -> list[str]:
    """Create the missing ``topics`` with their partition counts; return the names created.

    ``replication``: the replication factor and ``min.insync.replicas`` of new topics; None
    takes the brokers' count from the cluster's metadata (``Replication.for_brokers``).
    Idempotent. A topic that exists with another partition count raises ``TopicMismatch``:
    partitions cannot shrink and growing them would reshuffle keys, so the operator decides.
    """
    client = admin(bootstrap)
    info = cluster_info(bootstrap, timeout, client)
    existing = info.topics
    replication = replication or Replication.for_brokers(info.brokers)
    wanted = list(topics)
    wrong = [
        f"{t.name} has {existing[t.name]} partitions, expected {t.partitions}"
        for t in wanted
        if t.name in existing and existing[t.name] != t.partitions
    ]
    if wrong:
        raise TopicMismatch(
            "Kafka topics with the wrong partition count: " + "; ".join(wrong)
            + ". Delete them (or `qactl down --purge` for a local stack) and run `qactl up` again."
        )
    missing = [
        NewTopic(
            t.name,
            num_partitions=t.partitions,
            replication_factor=replication.factor,
            config={"min.insync.replicas": str(replication.min_insync)},
        )
        for t in wanted
        if t.name not in existing
    ]
    created: list[str] = []
    for name, future in (client.create_topics(missing, operation_timeout=timeout) if missing else {}).items():
        try:
            future.result(timeout)
            created.append(name)
        except KafkaException as exc:
            if exc.args[0].name() != "TOPIC_ALREADY_EXISTS":  # a concurrent qactl made it
                raise QactlError(f"cannot create Kafka topic {name}: {exc}") from exc
    wait_for_leaders(client, wanted, timeout)
    return created


def wait_for_leaders(client: AdminClient, topics: list[Topic], timeout: float) -> None:
    """Wait until the leader of every partition of ``topics`` serves it.

    ``create_topics`` returns once the controller has recorded a topic, a moment before the
    broker leads its partitions; until then produce and list_offsets answer NOT_LEADER or
    LEADER_NOT_AVAILABLE, and metadata may already name the leader. Earlier still, the broker's
    metadata may not hold the topic at all. So ask for the end offsets, which only the serving
    leader answers, until every partition has answered or ``timeout`` has passed.

    librdkafka answers a topic its metadata cache holds as unknown with _NOENT, from the cache,
    without asking again; on a loaded box that entry outlived a 20 s wait. So a round that got
    _NOENT asks the broker for fresh metadata before the next.
    """
    deadline = Deadline(timeout)
    waiting = [TopicPartition(t.name, p) for t in topics for p in range(t.partitions)]
    last: Exception | None = None
    refresh = False
    while waiting:
        left = max(deadline.left(), 0.5)
        if refresh:
            try:
                client.list_topics(timeout=left)
            except KafkaException as exc:  # the deadline decides
                last = exc
        refresh = False
        futures = client.list_offsets({tp: OffsetSpec.latest() for tp in waiting}, request_timeout=left)
        pending = []
        for tp, future in futures.items():
            try:
                future.result(left + 1)
            except KafkaException as exc:
                if not exc.args[0].retriable() and exc.args[0].name() not in _WAITED_OUT:
                    raise QactlError(f"Kafka topic {tp.topic}[{tp.partition}]: {exc}") from exc
                last = exc
                refresh = refresh or exc.args[0].name() == "_NOENT"
                pending.append(tp)
            except TimeoutError:  # no answer in time: the deadline decides
                last = TimeoutError("no answer from the broker")
                pending.append(tp)
        waiting = pending
        if waiting and deadline.passed:
            names = sorted({tp.topic for tp in waiting})
            raise QactlError(f"Kafka topics not served by a leader after {timeout:.0f} s: {', '.join(names)} ({last})")
        if waiting:
            time.sleep(0.1)


# The answers wait_for_leaders retries until its deadline: the partition is not led yet, or no
# answer came in the round's time.
_WAITED_OUT = {
    "NOT_LEADER_FOR_PARTITION",
    "LEADER_NOT_AVAILABLE",
    "UNKNOWN_TOPIC_OR_PART",
    "UNKNOWN_LEADER_EPOCH",
    "_NOENT",  # librdkafka's "No leaders found": its metadata does not hold the topic yet
    "_TIMED_OUT",
}


def end_offsets(bootstrap: str, topic: str, timeout: float = 5.0, client: AdminClient | None = None) -> dict[int, int]:
    """Partition -> offset of the next record to be written (the log end)."""
    client = client or admin(bootstrap, timeout)
    partitions = cluster_info(bootstrap, timeout, client).topics.get(topic)
    if partitions is None:
        raise QactlError(f"Kafka topic {topic} does not exist")
    request = {TopicPartition(topic, p): OffsetSpec.latest() for p in range(partitions)}
    result = client.list_offsets(request, request_timeout=timeout)
    return {tp.partition: future.result(timeout).offset for tp, future in result.items()}


def consumer_group_lag(
    bootstrap: str, group: str, timeout: float = 5.0, client: AdminClient | None = None
) -> dict[tuple[str, int], int]:
    """(topic, partition) -> records not yet committed by ``group``, for partitions it committed on."""
    client = client or admin(bootstrap, timeout)
    futures = client.list_consumer_group_offsets([ConsumerGroupTopicPartitions(group)], request_timeout=timeout)
    committed = futures[group].result(timeout).topic_partitions or []
    committed = [tp for tp in committed if tp.offset >= 0]
    if not committed:
        return {}
    request = {TopicPartition(tp.topic, tp.partition): OffsetSpec.latest() for tp in committed}
    ends = {
        (tp.topic, tp.partition): future.result(timeout).offset
        for tp, future in client.list_offsets(request, request_timeout=timeout).items()
    }
    return {(tp.topic, tp.partition): max(0, ends[(tp.topic, tp.partition)] - tp.offset) for tp in committed}


def rewind_group(
    bootstrap: str, group: str, topic: str, since_ms: int, timeout: float = 10.0, client: AdminClient | None = None
) -> dict[int, int]:
    """Move ``group``'s committed offsets on ``topic`` back to the first record written at or
    after ``since_ms`` (epoch ms), never forward; partition -> the offset it commits now.

    The group must have no active member (Flink's Kafka source commits without joining it).
    """
    client = client or admin(bootstrap, timeout)
    partitions = cluster_info(bootstrap, timeout, client).topics.get(topic)
    if partitions is None:
        raise QactlError(f"Kafka topic {topic} does not exist")
    futures = client.list_consumer_group_offsets([ConsumerGroupTopicPartitions(group)], request_timeout=timeout)
    committed = {tp.partition: tp.offset for tp in futures[group].result(timeout).topic_partitions or [] if tp.topic == topic}
    request = {TopicPartition(topic, p): OffsetSpec.for_timestamp(since_ms) for p in range(partitions)}
    at_time = {tp.partition: f.result(timeout).offset for tp, f in client.list_offsets(request, request_timeout=timeout).items()}
    ends = end_offsets(bootstrap, topic, timeout, client)
    target = {}
    for p, current in committed.items():
        if current < 0:
            continue  # never committed: the group starts from its reset position anyway
        found = at_time[p] if at_time[p] >= 0 else ends[p]  # -1: nothing written since then
        target[p] = min(current, found)
    if not target:
        return {}
    request_offsets = [TopicPartition(topic, p, offset) for p, offset in target.items()]
    done = client.alter_consumer_group_offsets(
        [ConsumerGroupTopicPartitions(group, request_offsets)], request_timeout=timeout
    )
    done[group].result(timeout)
    return target


def consumer_groups(bootstrap: str, timeout: float = 5.0, client: AdminClient | None = None) -> list[str]:
    """The ids of every consumer group the cluster knows."""
    client = client or admin(bootstrap, timeout)
    listing = client.list_consumer_groups(request_timeout=timeout).result(timeout)
    return sorted(g.group_id for g in listing.valid)


@dataclass(frozen=True)
class PartitionReplicas:
    topic: str
    partition: int
    leader: int
    replicas: tuple[int, ...]
    isr: tuple[int, ...]

    @property
    def whole(self) -> bool:
        """Every replica is in sync."""
        return set(self.isr) == set(self.replicas)


def partition_replicas(
    bootstrap: str, topics: Iterable[str] | None = None, timeout: float = 5.0, client: AdminClient | None = None
) -> list[PartitionReplicas]:
    """Leader, replicas and in-sync replicas of every partition of ``topics`` (default: all but internal)."""
    metadata = (client or admin(bootstrap, timeout)).list_topics(timeout=timeout)
    names = set(topics) if topics is not None else {n for n in metadata.topics if not n.startswith("__")}
    found = []
    for name in sorted(names & set(metadata.topics)):
        for number, meta in sorted(metadata.topics[name].partitions.items()):
            found.append(PartitionReplicas(name, number, meta.leader, tuple(meta.replicas), tuple(meta.isrs)))
    return found


def topic_configs(
    bootstrap: str, topics: Iterable[str], keys: Iterable[str], timeout: float = 5.0, client: AdminClient | None = None
) -> dict[str, dict[str, str]]:
    """topic -> {key: value} of the topics' effective configuration, as the brokers report it."""
    client = client or admin(bootstrap, timeout)
    wanted = list(keys)
    futures = client.describe_configs([ConfigResource(ResourceType.TOPIC, t) for t in topics], request_timeout=timeout)
    return {
        resource.name: {k: entries[k].value for k in wanted if k in entries}
        for resource, future in futures.items()
        for entries in [future.result(timeout)]
    }


@dataclass(frozen=True)
class GroupMember:
    client_id: str
    host: str
    partitions: tuple[tuple[str, int], ...]


def group_members(
    bootstrap: str, group: str, timeout: float = 5.0, client: AdminClient | None = None
) -> tuple[str, list[GroupMember]]:
    """A consumer group's state and its members with the partitions assigned to each."""
    client = client or admin(bootstrap, timeout)
    description = client.describe_consumer_groups([group], request_timeout=timeout)[group].result(timeout)
    return str(description.state.name).lower(), [member_of(m) for m in description.members]


def member_of(member: object) -> GroupMember:
    """One member of a ``describe_consumer_groups`` answer."""
    assigned = getattr(getattr(member, "assignment", None), "topic_partitions", None) or []
    return GroupMember(
        client_id=getattr(member, "client_id", ""),
        host=str(getattr(member, "host", "")).lstrip("/"),
        partitions=tuple(sorted((tp.topic, tp.partition) for tp in assigned)),
    )
