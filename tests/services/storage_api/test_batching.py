"""Micro-batching: calls made together travel together; failures reach every caller."""

from __future__ import annotations

import asyncio

import pytest

from services.storage_api.batching import MicroBatcher


def test_calls_made_in_one_turn_share_a_batch_and_results_keep_their_order() -> None:
    batches: list[list[int]] = []

    async def double(items: list[int]) -> list[int]:
        batches.append(items)
        await asyncio.sleep(0.01)
        return [i * 2 for i in items]

    async def main() -> list[int]:
        batcher: MicroBatcher[int, int] = MicroBatcher(double, max_in_flight=1)
        return await asyncio.gather(*(batcher.submit(i) for i in range(10)))

    assert asyncio.run(main()) == [i * 2 for i in range(10)]
    assert batches == [list(range(10))]


def test_calls_arriving_while_batches_are_in_flight_wait_and_go_together() -> None:
    batches: list[list[int]] = []

    async def echo(items: list[int]) -> list[int]:
        batches.append(items)
        await asyncio.sleep(0.02)
        return items

    async def main() -> None:
        batcher: MicroBatcher[int, int] = MicroBatcher(echo, max_in_flight=1)
        first = batcher.submit(0)
        await asyncio.sleep(0.005)  # the first batch is in flight now
        rest = [batcher.submit(i) for i in range(1, 6)]
        assert await asyncio.gather(first, *rest) == list(range(6))
        await batcher.drain()

    asyncio.run(main())
    assert batches == [[0], [1, 2, 3, 4, 5]]


def test_a_failed_batch_fails_each_of_its_callers_and_the_next_batch_still_runs() -> None:
    calls = 0

    async def flaky(items: list[int]) -> list[int]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ConnectionError("down")
        return items

    async def main() -> None:
        batcher: MicroBatcher[int, int] = MicroBatcher(flaky, max_in_flight=1)
        failed = await asyncio.gather(batcher.submit(1), batcher.submit(2), return_exceptions=True)
        assert all(isinstance(f, ConnectionError) for f in failed)
        assert await batcher.submit(3) == 3

    asyncio.run(main())


def test_batches_are_capped() -> None:
    sizes: list[int] = []

    async def echo(items: list[int]) -> list[int]:
        sizes.append(len(items))
        return items

    async def main() -> None:
        batcher: MicroBatcher[int, int] = MicroBatcher(echo, max_in_flight=4, max_batch=3)
        await asyncio.gather(*(batcher.submit(i) for i in range(7)))

    asyncio.run(main())
    assert sorted(sizes, reverse=True) == [3, 3, 1]


@pytest.mark.parametrize("in_flight", [1, 3])
def test_no_more_batches_in_flight_than_allowed(in_flight: int) -> None:
    running = peak = 0

    async def slow(items: list[int]) -> list[int]:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.01)
        running -= 1
        return items

    async def main() -> None:
        batcher: MicroBatcher[int, int] = MicroBatcher(slow, max_in_flight=in_flight, max_batch=1)
        await asyncio.gather(*(batcher.submit(i) for i in range(10)))

    asyncio.run(main())
    assert peak == in_flight


def test_a_batch_that_returns_too_few_results_fails_its_callers_instead_of_leaving_them_waiting() -> None:
    async def short(items: list[int]) -> list[int]:
        return items[:-1]

    async def main() -> list[object]:
        batcher: MicroBatcher[int, int] = MicroBatcher(short)
        calls = [batcher.submit(i) for i in range(3)]
        return await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), timeout=5)

    outcomes = asyncio.run(main())
    assert len(outcomes) == 3
    assert all(isinstance(outcome, RuntimeError) and "3 call(s) got 2" in str(outcome) for outcome in outcomes)
