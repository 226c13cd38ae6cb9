"""The client proxy: set-up per session, and one pass checked against the paradigm's declared exchange."""

from __future__ import annotations

import asyncio

import grpc
import torch

from slperf.common.config_loader import config_from_mapping
from slperf.common.protocol.messages import ErrorReport, ModelState, PhaseDone, Ready, RunSetup, TrainEpoch
from slperf.common.protocol.types import CutTensor, Phase, PhaseSummary, StepRef
from slperf.slserver.proxy import ClientProxy
from slperf.slserver.sessions import Session, SessionRegistry
from tests.slserver.streams import stream_pair

CONFIG, _ = config_from_mapping({"paradigm": "vanilla", "clients": 1, "client_ids": ["c1"], "batch_size": 4})
RUN = "run-1"


async def _connect(registry: SessionRegistry):
    stream, client = stream_pair()
    session = Session("c1", "test", stream, registry.limits)
    await registry.add(session)
    reader = asyncio.create_task(session.read_loop())
    return session, client, stream, reader


async def _answer_setup(client) -> RunSetup:
    setup = await client.receive()
    assert isinstance(setup, RunSetup)
    await client.send(Ready(setup.run_id, 40, 20))
    return setup


def test_a_client_is_set_up_once_per_session_and_again_on_the_session_after_a_reconnect():
    async def main():
        registry = SessionRegistry()
        session, client, stream, reader = await _connect(registry)
        proxy = ClientProxy("c1", 0, registry, CONFIG, RUN)
        answered = asyncio.create_task(_answer_setup(client))
        assert await proxy.session() is session
        assert (await answered).client_index == 0 and proxy.train_samples == 40
        await proxy.set_weights("bottom", {"w": torch.ones(2)}, 0)  # no second set-up on the same session
        assert isinstance(await client.receive(), ModelState)
        stream.end()
        await reader
        session2, client2, stream2, reader2 = await _connect(registry)
        answered = asyncio.create_task(_answer_setup(client2))
        await proxy.set_weights("bottom", {"w": torch.ones(2)}, 1)
        await answered
        state = await client2.receive()
        assert isinstance(state, ModelState) and state.round == 1
        stream2.end()
        await reader2

    asyncio.run(main())


def test_a_pass_yields_what_the_exchange_declares_and_refuses_the_rest_on_the_stream():
    async def main():
        registry = SessionRegistry()
        session, client, stream, reader = await _connect(registry)
        proxy = ClientProxy("c1", 0, registry, CONFIG, RUN)
        answered = asyncio.create_task(_answer_setup(client))
        await proxy.session()
        await answered
        cut = proxy.exchange.train[0].up.sample_shape
        labels = torch.tensor([0, 1, 2, 3])

        def ref(step: int) -> StepRef:
            return StepRef(RUN, 0, step, Phase.TRAIN)

        async def client_side() -> list[ErrorReport]:
            assert isinstance(await client.receive(), TrainEpoch)
            await client.send(CutTensor(ref(0), torch.zeros(4, *cut), labels))
            await client.send(CutTensor(ref(0), torch.zeros(4, *cut), labels))  # the same step again
            await client.send(CutTensor(ref(1), torch.zeros(4, 3)))  # another shape, no labels
            await client.send(CutTensor(ref(1), torch.zeros(9, *cut), torch.zeros(9, dtype=torch.int64)))  # > batch
            await client.send(CutTensor(ref(1), torch.zeros(2, *cut), torch.tensor([4, 1])))
            await client.send(PhaseDone(StepRef(RUN, 0, 2, Phase.TRAIN), PhaseSummary(6, 2, 1.0, 3)))
            return [await client.receive() for _ in range(3)]

        answers = asyncio.create_task(client_side())
        stream_of_pass = proxy.train(0)
        got = [batch async for batch in stream_of_pass]
        errors = await answers
        assert [b.ref.step for b in got] == [0, 1] and got[1].tensor.shape[0] == 2
        assert stream_of_pass.summary == PhaseSummary(6, 2, 1.0, 3)
        assert [e.code for e in errors] == [
            grpc.StatusCode.FAILED_PRECONDITION,
            grpc.StatusCode.INVALID_ARGUMENT,
            grpc.StatusCode.INVALID_ARGUMENT,
        ]
        assert "duplicate step 0" in errors[0].message and "shape" in errors[1].message
        assert "1..4" in errors[2].message
        stream.end()
        await reader

    asyncio.run(main())
