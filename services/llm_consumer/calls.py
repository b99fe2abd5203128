"""At most K LLM calls in flight, sync or async backend alike; results land on one queue.

Workers are daemon threads (or one event-loop thread for an async backend) so that a stopping
consumer can abandon calls still running: their messages are not committed and are redelivered.
"""

from __future__ import annotations

import asyncio
import inspect
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass
class CallResult:
    """What one call gave: ``value`` or ``error``, and how long it took."""

    job: Any
    value: Any = None
    error: BaseException | None = None
    seconds: float = 0.0


class CallPool:
    """Runs ``fn(prompt, attempt)`` for submitted jobs, at most ``size`` at a time."""

    def __init__(self, fn: Callable[[str, int], Any], size: int, results: "queue.Queue[CallResult]") -> None:
        self._fn = fn
        self._results = results
        self._size = size
        self._jobs: queue.Queue[tuple[Any, str, int] | None] = queue.Queue()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sem: asyncio.Semaphore | None = None
        if inspect.iscoroutinefunction(fn):
            self._loop = asyncio.new_event_loop()
            threading.Thread(target=self._loop.run_forever, name="llm-calls-loop", daemon=True).start()
        else:
            for i in range(size):
                threading.Thread(target=self._work, name=f"llm-call-{i}", daemon=True).start()

    def submit(self, job: Any, prompt: str, attempt: int = 0) -> None:
        if self._loop is not None:
            asyncio.run_coroutine_threadsafe(self._call_async(job, prompt, attempt), self._loop)
        else:
            self._jobs.put((job, prompt, attempt))

    def _work(self) -> None:
        while True:
            item = self._jobs.get()
            if item is None:
                return
            job, prompt, attempt = item
            started = time.perf_counter()
            try:
                value = self._fn(prompt, attempt)
            except BaseException as exc:  # noqa: BLE001 (handed to the consumer to classify)
                self._results.put(CallResult(job, error=exc, seconds=time.perf_counter() - started))
            else:
                self._results.put(CallResult(job, value=value, seconds=time.perf_counter() - started))

    async def _call_async(self, job: Any, prompt: str, attempt: int) -> None:
        if self._sem is None:
            self._sem = asyncio.Semaphore(self._size)
        async with self._sem:
            started = time.perf_counter()
            try:
                value = await self._fn(prompt, attempt)
            except BaseException as exc:  # noqa: BLE001
                self._results.put(CallResult(job, error=exc, seconds=time.perf_counter() - started))
            else:
                self._results.put(CallResult(job, value=value, seconds=time.perf_counter() - started))

    def close(self) -> None:
        """Stop taking jobs; calls still running are abandoned (daemon threads)."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
        else:
            for _ in range(self._size):
                self._jobs.put(None)
