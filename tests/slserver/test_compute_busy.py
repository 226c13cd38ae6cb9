"""The compute context counts the seconds its thread worked for the run (the summary's server_compute_seconds,
the bench's server busy share): exactly the time of each computation its observer is told of."""

from __future__ import annotations

import asyncio
import concurrent.futures

from slperf.common.config import RunConfig
from slperf.slserver.compute import ComputeContext


def _work(n: int) -> int:
    return sum(i * i for i in range(n))


def test_busy_seconds_is_the_sum_of_the_observed_computations():
    observed: list[float] = []
    with concurrent.futures.ThreadPoolExecutor(1) as executor:
        ctx = ComputeContext(RunConfig(), "r1", executor, lambda step, seconds: observed.append(seconds))
        assert ctx.busy_seconds == 0.0

        async def main() -> list[int]:
            return [await ctx.compute(_work, n) for n in (10_000, 20_000, 30_000)]

        assert asyncio.run(main()) == [_work(n) for n in (10_000, 20_000, 30_000)]
    assert len(observed) == 3 and all(s > 0 for s in observed)
    assert ctx.busy_seconds == sum(observed)
