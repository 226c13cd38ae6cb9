"""The client daemon's run set-up: a reconnect to the same run keeps the training state it holds."""
from __future__ import annotations

import asyncio

from slperf.common.config_loader import config_from_mapping
from slperf.slclient import daemon
from slperf.slclient.daemon import ClientDaemon, ClientOptions
from slperf.v1 import session_pb2


class _Link:
    def __init__(self) -> None:
        self.sent: list[session_pb2.ClientMessage] = []

    async def send(self, message, bulk=()) -> None:
        self.sent.append(message)


def _setup(run_id: str, seed: int = 0) -> session_pb2.RunSetup:
    config, _ = config_from_mapping({"paradigm": "vanilla", "dataset": "mnist", "clients": 1, "epochs": 1,
                                     "max_train_samples": 64, "max_test_samples": 32, "seed": seed})
    return session_pb2.RunSetup(run_id=run_id, config_json=config.to_json(), client_index=0, num_clients=1)


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
    assert [m.WhichOneof("body") for m in link.sent] == ["ready"] * 4
    assert all(m.ready.train_samples == 64 for m in link.sent)
