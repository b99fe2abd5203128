"""The one poll loop: it stops on done, on the deadline, and reports what it waited on."""

from __future__ import annotations

from services.common.waiting import Deadline, poll_until


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_poll_until_returns_the_first_done_result() -> None:
    values = iter([0, 0, 3, 4])
    waited: list[int] = []
    result = poll_until(lambda: next(values), timeout=10, interval=0.01, on_wait=waited.append)
    assert result == 3
    assert waited == [0, 0]


def test_poll_until_returns_the_last_result_at_the_deadline() -> None:
    calls: list[int] = []

    def probe() -> int:
        calls.append(1)
        return 0

    result = poll_until(probe, timeout=0.05, interval=0.01)
    assert result == 0
    assert 2 <= len(calls) <= 10


def test_deadline_counts_down_and_passes() -> None:
    clock = FakeClock()
    deadline = Deadline(5, clock=clock)
    assert deadline.left() == 5 and not deadline.passed
    clock.sleep(3)
    assert deadline.left() == 2 and deadline.elapsed() == 3
    clock.sleep(3)
    assert deadline.left() == 0 and deadline.passed
