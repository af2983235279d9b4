"""Engine streams run in a thread; a consumer that stops early must not strand that thread."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Iterator

import pytest

from common.worker import iterate_in_thread


def test_items_arrive_in_order_and_errors_propagate() -> None:
    def numbers() -> Iterator[int]:
        yield from range(20)
        raise ValueError("engine broke")

    async def main() -> list[int]:
        seen = []
        with pytest.raises(ValueError, match="engine broke"):
            async for item in iterate_in_thread(numbers, maxsize=2):
                seen.append(item)
        return seen

    assert asyncio.run(main()) == list(range(20))


def test_stopping_early_closes_the_engine_stream_and_frees_the_thread() -> None:
    closed: list[bool] = []

    def endless() -> Iterator[int]:
        try:
            index = 0
            while True:
                yield index
                index += 1
        finally:
            closed.append(True)

    async def consume_two() -> None:
        stream = iterate_in_thread(endless, maxsize=2)
        async with contextlib.aclosing(stream):
            async for item in stream:
                if item == 1:
                    break

    async def main() -> None:
        for _ in range(30):  # more than the default executor has threads
            await asyncio.wait_for(consume_two(), 5)

    before = threading.active_count()
    asyncio.run(main())
    time.sleep(0.3)
    assert len(closed) == 30
    assert threading.active_count() <= before + 8  # the executor's pool, not 30 stuck threads
