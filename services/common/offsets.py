"""Which offsets a consumer may commit when messages finish out of order.

Kafka commits a single position per partition: "everything below this is done". With several
LLM calls in flight, a later message can finish before an earlier one; committing its offset
would silently drop the earlier one if the process died. The tracker therefore commits, per
partition, the lowest offset still unfinished (or one past the highest finished when none is).

A message is finished when what it produced is acknowledged by Kafka, not when it was handed to
the producer: ``Acknowledgements`` does that for a batch consumed and produced in one go.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from confluent_kafka import KafkaError, Message, Producer, TopicPartition

Partition = tuple[str, int]  # (topic, partition)


@dataclass
class _PartitionState:
    unfinished: set[int] = field(default_factory=set)
    highest_done: int = -1
    committed: int = -1  # the next offset last handed out as committable


class OffsetTracker:
    """Thread-safe: workers mark offsets done while the poll loop asks what to commit."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._partitions: dict[Partition, _PartitionState] = {}

    def started(self, partition: Partition, offset: int) -> None:
        with self._lock:
            self._partitions.setdefault(partition, _PartitionState()).unfinished.add(offset)

    def done(self, partition: Partition, offset: int) -> None:
        with self._lock:
            state = self._partitions.get(partition)
            if state is None or offset not in state.unfinished:
                return  # the partition was revoked meanwhile: its new owner redoes the message
            state.unfinished.discard(offset)
            state.highest_done = max(state.highest_done, offset)

    def committable(self, only_changed: bool = True) -> dict[Partition, int]:
        """Per partition, the next offset to commit (Kafka's convention: first not yet done)."""
        result: dict[Partition, int] = {}
        with self._lock:
            for partition, state in self._partitions.items():
                if state.unfinished:
                    position = min(state.unfinished)
                elif state.highest_done >= 0:
                    position = state.highest_done + 1
                else:
                    continue
                if only_changed and position <= state.committed:
                    continue
                result[partition] = position
        return result

    def mark_committed(self, positions: dict[Partition, int]) -> None:
        with self._lock:
            for partition, position in positions.items():
                state = self._partitions.get(partition)
                if state is not None:
                    state.committed = max(state.committed, position)

    def forget(self, partitions: list[Partition]) -> None:
        """Drop revoked partitions; late completions for them are ignored."""
        with self._lock:
            for partition in partitions:
                self._partitions.pop(partition, None)

    def unfinished(self) -> int:
        with self._lock:
            return sum(len(s.unfinished) for s in self._partitions.values())


class NotDelivered(RuntimeError):
    """Kafka did not acknowledge something produced; what caused it was not committed."""


class Acknowledgements:
    """One consumed batch whose messages are committed only once Kafka acknowledged what each
    produced (one message each at most).

    ``flush()`` returning 0 says that every delivery report was served, not that each was a
    success: a send that failed for good (a record over the topic's limit, a topic gone, a
    timeout) must leave its source uncommitted, so that it is consumed and sent again.
    """

    def __init__(self) -> None:
        self._offsets = OffsetTracker()
        self._awaited = 0
        self._undelivered: list[str] = []  # appended to by whichever thread serves the callback

    def awaiting(self, msg: Message) -> Callable[[KafkaError | None, Message], None]:
        """``msg`` produced a message: the delivery callback to give it, which finishes ``msg``."""
        partition, offset = (msg.topic(), msg.partition()), msg.offset()
        self._offsets.started(partition, offset)
        self._awaited += 1

        def report(err: KafkaError | None, produced: Message) -> None:
            if err is None:
                self._offsets.done(partition, offset)
            else:
                self._undelivered.append(f"{partition[0]}[{partition[1]}]@{offset} -> {produced.topic()}: {err.str()}")

        return report

    def finished(self, msg: Message) -> None:
        """``msg`` is handled and produced nothing."""
        partition = (msg.topic(), msg.partition())
        self._offsets.started(partition, msg.offset())
        self._offsets.done(partition, msg.offset())

    def settle(
        self,
        producer: Producer,
        stop: threading.Event | None = None,
        on_wait: Callable[[bool], object] | None = None,
        interval: float = 1.0,
    ) -> list[TopicPartition]:
        """Wait for the delivery reports of what was produced; the offsets to commit, none past a
        message whose send was not acknowledged.

        Waits as long as Kafka is away (``on_wait(True)`` each ``interval`` while reports are
        missing, ``on_wait(False)`` once they are in), until ``stop`` is set if given: the caller
        then stops too, since a later batch's commit would pass the unacknowledged messages.
        """
        if self._awaited:
            while producer.flush(interval) > 0 and self._missing():
                if stop is not None and stop.is_set():
                    break
                if on_wait is not None:
                    on_wait(True)
            if on_wait is not None:
                on_wait(False)
        return [TopicPartition(t, p, o) for (t, p), o in self._offsets.committable().items()]

    def _missing(self) -> bool:
        """Some delivery report of this batch has not come back yet."""
        return self._offsets.unfinished() > len(self._undelivered)

    def raise_if_undelivered(self) -> None:
        """After the commit: stop on a send that Kafka refused, as it cannot be redone in place.

        A report still missing (stopped while Kafka was away) is no failure: its source is not
        committed and is consumed again at the next start.
        """
        if self._undelivered:
            raise NotDelivered(f"{len(self._undelivered)} message(s) not delivered: {'; '.join(self._undelivered[:3])}")
