"""Waiting for something to become true before a deadline: the one home of every poll loop.

``Deadline`` is a point in monotonic time that a loop counts down to (how much is left, whether
it has passed); ``poll_until`` calls a probe at a fixed interval until its result is done or the
deadline passes, and returns the last result, so the caller decides what a timeout means.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class Deadline:
    """``seconds`` from now, on the monotonic clock."""

    def __init__(self, seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self.seconds = seconds
        self.started = clock()
        self.at = self.started + seconds

    def left(self) -> float:
        """Seconds until the deadline, never below zero."""
        return max(0.0, self.at - self._clock())

    def elapsed(self) -> float:
        return self._clock() - self.started

    @property
    def passed(self) -> bool:
        return self._clock() >= self.at


def poll_until(
    probe: Callable[[], T],
    *,
    timeout: float,
    interval: float,
    done: Callable[[T], bool] = bool,
    on_wait: Callable[[T], object] | None = None,
    sleep: Callable[[float], object] = time.sleep,
) -> T:
    """Call ``probe`` every ``interval`` s until ``done(result)`` or ``timeout`` s have passed.

    The probe runs at least once. Returns the last result: check ``done`` on it to tell a
    success from a timeout. ``on_wait`` sees every result that was not done (progress lines).
    """
    deadline = Deadline(timeout)
    while True:
        result = probe()
        if done(result) or deadline.passed:
            return result
        if on_wait is not None:
            on_wait(result)
        sleep(min(interval, max(deadline.left(), 0.0)))
