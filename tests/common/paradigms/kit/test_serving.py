"""The lock-step barrier: who leaves a pass, and why the round records it."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from slperf.common.paradigms.base import ClientGone, ClientMisbehaved
from slperf.common.paradigms.kit.serving import Barrier


class Stream:
    """A client's training stream: ``batches`` batches, then the end or the given error."""

    def __init__(self, batches: int, error: ClientGone | None):
        self.batches, self.error, self.summary = batches, error, None

    def __aiter__(self) -> Stream:
        return self

    async def __anext__(self) -> str:
        if self.batches:
            self.batches -= 1
            return "batch"
        if self.error is not None:
            raise self.error
        raise StopAsyncIteration


@dataclass(eq=False)
class Client:
    client_id: str
    batches: int
    error: ClientGone | None = None
    streams: list[Stream] = field(default_factory=list)

    def train(self, round: int) -> Stream:
        self.streams.append(Stream(self.batches, self.error))
        return self.streams[-1]


async def _steps(barrier: Barrier) -> list[list[str]]:
    return [[client.client_id for client, _ in batches] async for batches in barrier.steps()]


def test_a_client_whose_stream_misbehaves_leaves_with_its_reason_and_one_that_leaves_without():
    clients = [
        Client("c1", 3),
        Client("c2", 1, ClientMisbehaved("c2", "its pass ran past its shard")),
        Client("c3", 2, ClientGone("c3", "stream closed")),
    ]
    barrier = Barrier(clients, round=0)  # type: ignore[arg-type]
    assert asyncio.run(_steps(barrier)) == [["c1", "c2", "c3"], ["c1", "c3"], ["c1"]]
    assert barrier.dropped == ["c2", "c3"]
    assert barrier.misbehaved == {"c2": "its pass ran past its shard"}
    assert list(barrier.summaries) == ["c1"]
