"""The operator's side of the Control service: start a run, follow it, status, stop, shutdown."""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Callable, Iterator

import grpc

from slperf.common.wire.framing import grpc_options
from slperf.v1 import service_pb2, service_pb2_grpc


@dataclass
class OperatorClient:
    address: str
    credentials: grpc.ChannelCredentials | None  # None = plaintext (--insecure)
    server_name: str | None = None

    def __post_init__(self) -> None:
        options = grpc_options()
        if self.server_name:
            options.append(("grpc.ssl_target_name_override", self.server_name))
        if self.credentials is None:
            self.channel = grpc.insecure_channel(self.address, options=options)
        else:
            self.channel = grpc.secure_channel(self.address, self.credentials, options=options)
        self.stub = service_pb2_grpc.ControlStub(self.channel)

    def close(self) -> None:
        self.channel.close()

    def start_run(self, config_text: str, run_id: str = "", timeout: float = 30) -> str:
        reply = self.stub.StartRun(service_pb2.StartRunRequest(config=config_text, run_id=run_id), timeout=timeout,
                                   wait_for_ready=True)
        return reply.run_id

    def status(self, timeout: float = 10) -> service_pb2.StatusResponse:
        return self.stub.Status(service_pb2.StatusRequest(), timeout=timeout)

    def watch(self, run_id: str) -> Iterator[tuple[str, dict, service_pb2.RunStatus]]:
        for event in self.stub.WatchRun(service_pb2.WatchRunRequest(run_id=run_id)):
            yield event.kind, (json.loads(event.json) if event.json else {}), event.status

    def follow(self, run_id: str, on_round: Callable[[dict], None]) -> service_pb2.RunStatus:
        """Blocks until the run ends; calls ``on_round`` for every finished round. Returns the final status."""
        final = None
        for kind, payload, status in self.watch(run_id):
            if kind == "round":
                on_round(payload)
            final = status
            if status.state in ("finished", "failed", "stopped"):
                break
        if final is None or final.state not in ("finished", "failed", "stopped"):
            final = self.status().run
        return final

    def stop_run(self, run_id: str, timeout: float = 30) -> bool:
        return self.stub.StopRun(service_pb2.StopRunRequest(run_id=run_id), timeout=timeout).stopped

    def shutdown(self, timeout: float = 10) -> None:
        self.stub.Shutdown(service_pb2.ShutdownRequest(), timeout=timeout)
