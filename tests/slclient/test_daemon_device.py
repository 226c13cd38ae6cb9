"""A client daemon's device is its own: ``--device`` wins over the run's ``client_device``, a run asking for a
device the silo lacks is refused at set-up with the fix named, and the weights it sends are host tensors."""

from __future__ import annotations

import asyncio

import pytest
import torch
from click.testing import CliRunner

from slperf.cli import main
from slperf.common.config_loader import config_from_mapping
from slperf.common.paradigms import registry as paradigms
from slperf.common.protocol.messages import ErrorReport, Ready, RunSetup
from slperf.slclient.daemon import ClientDaemon, ClientOptions

no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the errors on a machine without CUDA")


class _Link:
    def __init__(self) -> None:
        self.sent: list[object] = []

    async def send(self, message) -> None:
        self.sent.append(message)


def _setup(**keys) -> RunSetup:
    config, _ = config_from_mapping(
        {"paradigm": "vanilla", "clients": 1, "epochs": 1, "max_train_samples": 64, "max_test_samples": 32, **keys}
    )
    exchange = paradigms.get(config.paradigm).exchange(config, 0)
    return RunSetup(run_id="r1", config_json=config.to_json(), client_index=0, num_clients=1, exchange=exchange)


def _daemon(device: str | None) -> ClientDaemon:
    return ClientDaemon(ClientOptions(server="unused:1", client_id="c1", credentials=None, device=device))


@no_cuda
def test_a_run_asking_for_a_client_device_the_silo_lacks_is_refused_at_set_up_naming_the_fix():
    client, link = _daemon(None), _Link()
    asyncio.run(client._setup(link, _setup(client_device="cuda")))
    assert client.paradigm is None
    (report,) = link.sent
    assert isinstance(report, ErrorReport)
    assert "the client's device 'cuda' is not available on client 0" in report.message
    assert "--device cpu" in report.message


def test_the_daemons_own_device_wins_over_the_runs_client_device():
    client, link = _daemon("cpu"), _Link()
    asyncio.run(client._setup(link, _setup(client_device="cuda:3", device="cuda:3")))
    assert isinstance(link.sent[0], Ready)
    assert client.paradigm is not None and client.paradigm.placement.device == torch.device("cpu")
    assert all(p.device.type == "cpu" for p in client.paradigm.segments["bottom"].parameters())


@no_cuda
def test_slperf_client_with_a_device_this_machine_lacks_exits_at_start_up():
    result = CliRunner().invoke(
        main, ["client", "--server", "127.0.0.1:1", "--id", "c1", "--insecure", "--device", "cuda"]
    )
    assert result.exit_code != 0
    assert "--device 'cuda' is not available on this machine" in result.output
    assert "Start the daemon with --device cpu" in result.output
