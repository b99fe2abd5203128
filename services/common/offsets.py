"""Which offsets a consumer may commit when messages finish out of order.

Kafka commits a single position per partition: "everything below this is done". With several
LLM calls in flight, a later message can finish before an earlier one; committing its offset
would silently drop the earlier one if the process died. The tracker therefore commits, per
partition, the lowest offset still unfinished (or one past the highest finished when none is).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

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
