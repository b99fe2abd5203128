"""Status hops written to Redis from a background thread, off the path that refills call slots.

The live status is best-effort (the message carries its hops; PostgreSQL has the outcome), so
a slow Redis must never delay the next LLM call. Hops keep their order (one FIFO, one writer)
and go out in pipelined batches.
"""

from __future__ import annotations

import logging
import queue
import threading

from services.common.schemas import Hop
from services.common.status import StatusTracker

log = logging.getLogger(__name__)

MAX_BATCH = 200
MAX_PENDING = 10_000


class StatusWriter:
    def __init__(self, tracker: StatusTracker) -> None:
        self._tracker = tracker
        self._hops: queue.Queue[tuple[str, Hop] | None] = queue.Queue(MAX_PENDING)
        self._thread = threading.Thread(target=self._run, name="status-writer", daemon=True)
        self._thread.start()

    def record(self, question_id: str, hop: Hop) -> None:
        try:
            self._hops.put_nowait((question_id, hop))
        except queue.Full:  # Redis far behind: drop the live view rather than slow the pipeline
            log.warning("status backlog full; hop of %s not recorded", question_id)

    def _run(self) -> None:
        while True:
            item = self._hops.get()
            if item is None:
                return
            batch = [item]
            while len(batch) < MAX_BATCH:
                try:
                    nxt = self._hops.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    self._write(batch)
                    return
                batch.append(nxt)
            self._write(batch)

    def _write(self, batch: list[tuple[str, Hop]]) -> None:
        self._tracker.record_many(batch)

    def close(self, timeout: float = 5.0) -> None:
        """Write what is queued (for at most ``timeout``), then stop."""
        try:
            self._hops.put(None, timeout=timeout)
        except queue.Full:
            return
        self._thread.join(timeout)
