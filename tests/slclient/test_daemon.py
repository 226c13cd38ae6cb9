"""The client daemon's run set-up: a reconnect to the same run keeps the training state it holds."""

from __future__ import annotations

import asyncio

from slperf.common.config_loader import config_from_mapping
from slperf.common.paradigms import registry as paradigms
from slperf.common.protocol.messages import Ready, RunSetup
from slperf.slclient import daemon
from slperf.slclient.daemon import ClientDaemon, ClientOptions


class _Link:
    def __init__(self) -> None:
        self.sent: list[object] = []

    async def send(self, message) -> None:
        self.sent.append(message)


def _setup(run_id: str, seed: int = 0) -> RunSetup:
    config, _ = config_from_mapping(
        {
            "paradigm": "vanilla",
            "dataset": "mnist",
            "clients": 1,
            "epochs": 1,
            "max_train_samples": 64,
            "max_test_samples": 32,
            "seed": seed,
        }
    )
    exchange = paradigms.get(config.paradigm).exchange(config, 0)
    return RunSetup(run_id=run_id, config_json=config.to_json(), client_index=0, num_clients=1, exchange=exchange)


def test_a_reconnect_to_the_same_run_keeps_the_paradigm_and_a_new_run_builds_a_fresh_one(monkeypatch):
    built = []
    real = daemon.build_client_data
    monkeypatch.setattr(daemon, "build_client_data", lambda *args: built.append(args) or real(*args))
    client = ClientDaemon(ClientOptions(server="unused:1", client_id="c1", credentials=None))
    link = _Link()

    asyncio.run(client._setup(link, _setup("r1")))
    first = client.paradigm
    assert first is not None and len(built) == 1
    asyncio.run(client._setup(link, _setup("r1")))  # the session dropped and the server set it up again
    assert client.paradigm is first and len(built) == 1

    asyncio.run(client._setup(link, _setup("r1", seed=1)))  # same run id, another config: built afresh
    assert client.paradigm is not first and len(built) == 2
    asyncio.run(client._setup(link, _setup("r2", seed=1)))
    assert len(built) == 3
    assert all(isinstance(m, Ready) for m in link.sent) and len(link.sent) == 4
    assert all(m.train_samples == 64 for m in link.sent)


def test_the_link_checks_every_reply_against_the_exchange_as_strictly_as_the_server_checks_requests():
    import grpc
    import pytest
    import torch

    from slperf.common.paradigms import registry
    from slperf.common.protocol.types import CutReply, Phase, StepRef
    from slperf.common.transport.endpoint import Endpoint, Side
    from slperf.slclient.daemon import ServerError, SessionLink
    from slperf.v1 import session_pb2
    from tests.slserver.streams import QueueStream

    config, _ = config_from_mapping({"paradigm": "vanilla", "clients": 1, "batch_size": 4})
    exchange = registry.get("vanilla").exchange(config, 0)
    cut = exchange.train[0].up.sample_shape

    async def main():
        up, down = asyncio.Queue(), asyncio.Queue()
        link = SessionLink(QueueStream(down, up, session_pb2.ClientMessage), run_id="r", exchange=exchange)
        server = Endpoint(QueueStream(up, down, session_pb2.ServerMessage), Side.SERVER)
        good, short = StepRef("r", 0, 0, Phase.TRAIN), StepRef("r", 0, 1, Phase.TRAIN)
        await link.send_cut_tensor(good, torch.zeros(4, *cut), labels=torch.zeros(4, dtype=torch.int64))
        await server.send(CutReply(good, torch.ones(4, *cut), 0.5, 2, 4))
        assert (await link.recv_reply(good)).correct == 2
        await link.send_cut_tensor(short, torch.zeros(4, *cut), labels=torch.zeros(4, dtype=torch.int64))
        await server.send(CutReply(short, torch.ones(3, *cut)))  # a gradient for 3 samples, not the 4 sent
        with pytest.raises(ServerError) as caught:
            await link.recv_reply(short)
        assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT and "expected 4" in str(caught.value)
        with pytest.raises(ServerError, match="no cut tensor"):
            await link.recv_reply(StepRef("r", 0, 7, Phase.TRAIN))  # nothing was sent for it

    asyncio.run(main())
