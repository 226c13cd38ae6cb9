"""A run whose ``device`` this server lacks is refused when it is started (INVALID_ARGUMENT naming the fix), before
any client is waited for: ``slperf run`` and ``slperf federation`` get the error at once."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest
import torch
import yaml

from slperf.slserver.service import ControlService
from slperf.v1 import service_pb2


class _Aborted(Exception):
    pass


class _Context:
    def __init__(self) -> None:
        self.code: grpc.StatusCode | None = None
        self.details = ""

    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        self.code, self.details = code, details
        raise _Aborted


class _Coordinator:
    def __init__(self, runs_dir: Path) -> None:
        self.started: list[object] = []
        self.runs_dir = runs_dir  # where the service's served models would be

    def start(self, config, run_id=None):
        self.started.append(config)
        raise AssertionError("a run with a missing device must not start")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_start_run_refuses_a_device_the_server_lacks(tmp_path: Path):
    coordinator = _Coordinator(tmp_path)
    service = ControlService(registry=None, coordinator=coordinator, shutdown=asyncio.Event())  # type: ignore[arg-type]
    context = _Context()
    request = service_pb2.StartRunRequest(config=yaml.safe_dump({"paradigm": "vanilla", "device": "cuda"}))
    with pytest.raises(_Aborted):
        asyncio.run(service.StartRun(request, context))  # type: ignore[arg-type]
    assert context.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "device 'cuda' is not available on the server" in context.details
    assert "Set device: cpu in the run config" in context.details
    assert coordinator.started == []


def test_start_run_refuses_a_sim_config(tmp_path: Path):
    """``backend: sim`` is run by ``slperf federation`` in one process; a server accepting it would ignore it."""
    coordinator = _Coordinator(tmp_path)
    service = ControlService(registry=None, coordinator=coordinator, shutdown=asyncio.Event())  # type: ignore[arg-type]
    context = _Context()
    request = service_pb2.StartRunRequest(config=yaml.safe_dump({"paradigm": "vanilla", "backend": "sim"}))
    with pytest.raises(_Aborted):
        asyncio.run(service.StartRun(request, context))  # type: ignore[arg-type]
    assert context.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "slperf federation --backend sim" in context.details
    assert coordinator.started == []


@pytest.mark.parametrize(
    "keys",
    [
        {"client_image": "slperf:latest"},
        {"client_image": "slperf:latest", "client_resources": {"cpus": 0.5}},
        {"network": {"rate_mbit": 10, "delay_ms": 5}},
    ],
)
def test_start_run_refuses_the_launchers_keys(tmp_path: Path, keys: dict):
    """Links and containers are applied by the launcher that starts the daemons; a server would accept and ignore
    them."""
    coordinator = _Coordinator(tmp_path)
    service = ControlService(registry=None, coordinator=coordinator, shutdown=asyncio.Event())  # type: ignore[arg-type]
    context = _Context()
    request = service_pb2.StartRunRequest(config=yaml.safe_dump({"paradigm": "vanilla", **keys}))
    with pytest.raises(_Aborted):
        asyncio.run(service.StartRun(request, context))  # type: ignore[arg-type]
    assert context.code == grpc.StatusCode.INVALID_ARGUMENT
    assert f"{', '.join(keys)}: applied by the launcher" in context.details
    assert coordinator.started == []
