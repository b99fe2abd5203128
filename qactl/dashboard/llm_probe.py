"""The LLM for the dashboard: which one answers, and how busy the local model server is.

The route (backend, model, where the calls go) is resolved once, on the first poll: ``auto``
probes Ollama, and the stack resolved it once too, at ``qactl up``. The local model server is
asked every poll (``/health``, ``/props``, ``/metrics``). Its token counter only grows when an
answer ends, so the output rate is taken over a window of recent polls, not between two.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

from qactl.client import llm_server
from qactl.dashboard.model import LlmState
from services.common.backend_choice import LlmRoute, llm_route
from services.common.settings import QactlSettings


class ModelServerProbe:
    def __init__(
        self,
        settings: QactlSettings,
        timeout: float = 1.0,
        *,
        window_seconds: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._settings = settings
        self._timeout = timeout
        self._route: LlmRoute | None = None
        self._rate = TokenRate(window_seconds)
        self._clock = clock

    def llm(self) -> LlmState:
        if self._route is None:
            self._route = llm_route(self._settings, self._timeout)
        route = self._route
        if route.kind != "local":
            return LlmState(route)
        state = llm_server.probe(self._settings.llm_server.base_url, self._timeout)
        return LlmState(route, state, self._rate.update(state.tokens_predicted, self._clock()))


class TokenRate:
    """Tokens per second over the last ``window_seconds`` of a growing counter."""

    def __init__(self, window_seconds: float = 10.0) -> None:
        self._window = window_seconds
        self._samples: deque[tuple[float, float]] = deque()  # (when, tokens so far), oldest first

    def update(self, total: float | None, now: float) -> float | None:
        if total is None:
            self._samples.clear()
            return None
        if self._samples and total < self._samples[-1][1]:
            self._samples.clear()  # the server restarted: its counter began again at 0
        self._samples.append((now, total))
        # Keep one sample at or before the window's start, so the window is always covered.
        while len(self._samples) > 2 and self._samples[1][0] <= now - self._window:
            self._samples.popleft()
        first_at, first = self._samples[0]
        if now <= first_at:
            return None
        return (total - first) / (now - first_at)
