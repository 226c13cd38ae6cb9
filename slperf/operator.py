"""The operator's side of the Control service: start a run, follow it, status, stop, shutdown."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import grpc

from slperf.common.protocol.types import FINAL_RUN_STATES
from slperf.common.transport.channel import create_sync_channel
from slperf.v1 import inference_pb2, service_pb2, service_pb2_grpc

FINAL_STATES = frozenset(state.value for state in FINAL_RUN_STATES)  # what a follower waits for


@dataclass
class OperatorClient:
    address: str
    credentials: grpc.ChannelCredentials | None  # None = plaintext (--insecure)
    server_name: str | None = None

    def __post_init__(self) -> None:
        self.channel = create_sync_channel(self.address, self.credentials, server_name=self.server_name)
        self.stub = service_pb2_grpc.ControlStub(self.channel)

    def close(self) -> None:
        self.channel.close()

    def start_run(self, config_text: str, run_id: str = "", timeout: float = 30) -> str:
        return self.start_run_reply(config_text, run_id, timeout).run_id

    def start_run_reply(self, config_text: str, run_id: str = "", timeout: float = 30) -> service_pb2.StartRunResponse:
        """The whole answer: the run id and its place in the queue (0: it started now)."""
        return self.stub.StartRun(
            service_pb2.StartRunRequest(config=config_text, run_id=run_id), timeout=timeout, wait_for_ready=True
        )

    def status(self, timeout: float = 10) -> service_pb2.StatusResponse:
        return self.stub.Status(service_pb2.StatusRequest(), timeout=timeout)

    def watch(self, run_id: str) -> Iterator[tuple[str, dict, service_pb2.RunStatus]]:
        for event in self.stub.WatchRun(service_pb2.WatchRunRequest(run_id=run_id)):
            yield event.kind, (json.loads(event.json) if event.json else {}), event.status

    def follow(
        self, run_id: str, on_round: Callable[[dict], None], *, reconnect_timeout: float = 180.0
    ) -> service_pb2.RunStatus:
        """Blocks until the run ends; calls ``on_round`` once for every finished round; returns the final status.

        A server that goes away (a restart resumes the run from its checkpoint) is waited for up to
        ``reconnect_timeout`` seconds, so an operator following a run does not lose it to a server restart.
        """
        seen: set[int] = set()
        lost_since: float | None = None
        while True:
            try:
                for kind, payload, status in self.watch(run_id):
                    lost_since = None
                    if kind == "round" and payload.get("round") not in seen:
                        seen.add(payload["round"])
                        on_round(payload)
                    if status.state in FINAL_STATES:
                        return status
                status = self.status().run
                if status.run_id == run_id and status.state in FINAL_STATES:
                    return status
            except grpc.RpcError as err:
                if err.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.NOT_FOUND):
                    raise
                now = time.monotonic()
                lost_since = lost_since or now
                if now - lost_since > reconnect_timeout:
                    raise
                time.sleep(1.0)  # retry delay while the server restarts (not synchronisation)

    def stop_run(self, run_id: str, timeout: float = 30) -> bool:
        return self.stub.StopRun(service_pb2.StopRunRequest(run_id=run_id), timeout=timeout).stopped

    def remove_model(self, run_id: str, timeout: float = 30) -> bool:
        """Stops serving a finished run's model for inference (its files in the run folder are deleted)."""
        return self.stub.RemoveModel(inference_pb2.RemoveModelRequest(run_id=run_id), timeout=timeout).removed

    def shutdown(self, timeout: float = 10) -> None:
        self.stub.Shutdown(service_pb2.ShutdownRequest(), timeout=timeout)
