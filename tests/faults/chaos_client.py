"""A real client daemon that fails at one chosen point of a run, once: it is killed (SIGKILL of itself), stalls (stops
reading and writing, as a hung process whose connection stays up), or has its connection cut (the call ends as a
network failure does, and the daemon reconnects by itself).

    python -m tests.faults.chaos_client --at POINT --action kill|stall|cut --marker FILE -- <slperf client args>

POINT is where in the run, as the client sees its own messages:
  setup     on receiving RunSetup
  train     on sending the second cut tensor of a training pass (fedavg: on receiving the train instruction)
  between   right after sending the PhaseDone of a training pass
  weights   on receiving the second ModelState pushed to it (a weight transfer of round 1)
  eval      on sending the first cut tensor of an evaluation pass (fedavg: on receiving the evaluate instruction)

The fault happens once per ``--marker`` file (created when it fires), so a daemon restarted after a kill behaves.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
from pathlib import Path
from typing import Any

import grpc

from slperf.v1 import session_pb2
from tests.faults.wrapped_client import WrappedCall, run_client


class ChaosCall(WrappedCall):
    def __init__(self, call: Any, point: str, action: str, marker: Path):
        super().__init__(call)
        self._point, self._action, self._marker = point, action, marker
        self._weights_seen = 0
        self._cut = False

    async def _fault(self) -> None:
        if self._marker.exists():
            return
        self._marker.write_text(self._point)
        print(f"chaos: {self._action} at {self._point}", flush=True)
        if self._action == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        if self._action == "stall":
            await asyncio.Event().wait()  # never set: this task neither reads nor writes again
        self._cut = True
        self._call.cancel()
        raise _network_failure()

    def _check_cut(self) -> None:
        if self._cut:
            raise _network_failure()

    async def write(self, envelope: Any) -> None:
        self._check_cut()
        body = envelope.WhichOneof("body")
        if body == "cut_tensor":
            ref = envelope.cut_tensor.ref
            if (self._point == "train" and ref.phase == session_pb2.PHASE_TRAIN and ref.step == 1) or (
                self._point == "eval" and ref.phase == session_pb2.PHASE_EVAL and ref.step == 0
            ):
                await self._fault()
        await self._call.write(envelope)
        if (
            body == "phase_done"
            and self._point == "between"
            and envelope.phase_done.ref.phase == session_pb2.PHASE_TRAIN
        ):
            await self._fault()

    async def read(self) -> Any:
        self._check_cut()
        envelope = await self._call.read()
        body = envelope.WhichOneof("body") if hasattr(envelope, "WhichOneof") else None
        if body == "instruction":
            kind = envelope.instruction.WhichOneof("kind")
            fedavg = '"paradigm": "fedavg"' in _CONFIG.get("json", "")
            if kind == "setup":
                _CONFIG["json"] = envelope.instruction.setup.config_json
                if self._point == "setup":
                    await self._fault()
            elif fedavg and (self._point, kind) in (("train", "train"), ("eval", "evaluate")):
                await self._fault()
        elif body == "model_state" and self._point == "weights":
            self._weights_seen += 1
            if self._weights_seen == 2:
                await self._fault()
        return envelope


_CONFIG: dict[str, str] = {}


def _network_failure() -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(
        grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata(), details="Socket closed (chaos cut)"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--at", required=True, choices=["setup", "train", "between", "weights", "eval"])
    parser.add_argument("--action", required=True, choices=["kill", "stall", "cut"])
    parser.add_argument("--marker", required=True, type=Path)
    parser.add_argument("client_args", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    run_client(lambda call: ChaosCall(call, args.at, args.action, args.marker), args.client_args)


if __name__ == "__main__":
    main()
