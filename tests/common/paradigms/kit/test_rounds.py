"""Round gathering: results in client order, who dropped out as values, bugs raised, nobody left named."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import pytest

from slperf.common.paradigms.base import ClientGone, NoClientLeft
from slperf.common.paradigms.kit.rounds import first_available, gather_round, latest_first, ring


@dataclass
class Client:
    client_id: str
    index: int
    train_samples: int = 0


CLIENTS = [Client("c1", 0), Client("c2", 1), Client("c3", 2)]


def test_gather_round_keeps_client_order_and_sorts_out_who_dropped():
    async def fn(client: Client) -> str:
        await asyncio.sleep(0.01 * (3 - client.index))  # finish in reverse order
        if client.client_id == "c2":
            raise ClientGone("c2", "gone")
        return client.client_id.upper()

    outcome = asyncio.run(gather_round(CLIENTS, fn))
    assert [(c.client_id, v) for c, v in outcome.done] == [("c1", "C1"), ("c3", "C3")]
    assert outcome.dropped == ["c2"]
    assert [c.client_id for c in outcome.clients] == ["c1", "c3"]


def test_gather_round_raises_a_bug_after_every_client_finished():
    finished = []

    async def fn(client: Client) -> None:
        if client.client_id == "c1":
            raise KeyError("bug")
        await asyncio.sleep(0.01)
        finished.append(client.client_id)

    with pytest.raises(KeyError):
        asyncio.run(gather_round(CLIENTS, fn))
    assert finished == ["c2", "c3"]


def test_ring_runs_in_turn_and_goes_on_after_a_drop_out():
    order = []

    async def fn(client: Client) -> int:
        order.append(client.client_id)
        if client.client_id == "c1":
            raise ClientGone("c1", "gone")
        return client.index

    outcome = asyncio.run(ring(CLIENTS, fn))
    assert order == ["c1", "c2", "c3"]
    assert outcome.dropped == ["c1"] and [v for _, v in outcome.done] == [1, 2]
    result = outcome.to_result(lambda index: {"index": index})  # type: ignore[arg-type,return-value]
    assert result.participants == ["c2", "c3"] and result.dropped == ["c1"]
    assert result.per_client == {"c2": {"index": 1}, "c3": {"index": 2}}


def test_first_available_skips_drop_outs_and_names_the_task_when_nobody_is_left():
    async def gone(client: Client) -> str:
        raise ClientGone(client.client_id, "gone")

    async def second_answers(client: Client) -> str:
        if client.index == 0:
            raise ClientGone(client.client_id, "gone")
        return client.client_id

    assert asyncio.run(first_available(CLIENTS, second_answers, "evaluate")) == "c2"
    with pytest.raises(NoClientLeft, match="no client left to evaluate") as info:
        asyncio.run(first_available(CLIENTS, gone, "evaluate"))
    assert isinstance(info.value, ClientGone)  # the coordinator fails the run as for any lost client


def test_latest_first_moves_one_client_to_the_front():
    assert [c.client_id for c in latest_first(CLIENTS, "c3")] == ["c3", "c1", "c2"]
    assert [c.client_id for c in latest_first(CLIENTS, None)] == ["c1", "c2", "c3"]
