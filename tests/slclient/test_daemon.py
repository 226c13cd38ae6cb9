"""The client daemon's run set-up: a reconnect to the same run keeps the training state it holds."""
from __future__ import annotations

import asyncio

from slperf.common.config_loader import config_from_mapping
from slperf.common.protocol.messages import Ready, RunSetup
from slperf.slclient import daemon
from slperf.slclient.daemon import ClientDaemon, ClientOptions


class _Link:
    def __init__(self) -> None:
        self.sent: list[object] = []

    async def send(self, message) -> None:
        self.sent.append(message)


def _setup(run_id: str, seed: int = 0) -> RunSetup:
    config, _ = config_from_mapping({"paradigm": "vanilla", "dataset": "mnist", "clients": 1, "epochs": 1,
                                     "max_train_samples": 64, "max_test_samples": 32, "seed": seed})
    return RunSetup(run_id=run_id, config_json=config.to_json(), client_index=0, num_clients=1)


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
