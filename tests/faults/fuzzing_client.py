"""A real client daemon that fuzzes its own session from inside a run: before each message it sends (except
within a transfer) it writes a number of junk cases (``tests.faults.junk``), and it hides the server's in-stream
errors from the daemon, so that the daemon itself behaves exactly as an honest one.

    python -m tests.faults.fuzzing_client --junk-per-message N --seed S --report FILE -- <slperf client args>

``FILE`` gets a ``junk RUN`` line per junk case written and an ``error RUN`` line per error the server answered,
unbuffered, so a test can count them once the run is over.
"""

from __future__ import annotations

import argparse
import random
from typing import Any

from slperf.common.wire.chunking import ChunkEnvelope
from slperf.v1 import session_pb2
from tests.faults.junk import junk_case
from tests.faults.wrapped_client import WrappedCall, run_client


class FuzzingCall(WrappedCall):
    """The daemon's session call, with junk written before its messages and server errors taken out."""

    def __init__(self, call: Any, rng: random.Random, per_message: int, report: Any):
        super().__init__(call)
        self._rng = rng
        self._per_message = per_message
        self._report = report
        self._seq = 0
        self.run_id = ""

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    async def write(self, envelope: Any) -> None:
        if isinstance(envelope, ChunkEnvelope):  # part of a transfer: nothing may come in between
            await self._call.write(ChunkEnvelope(session_pb2.ClientMessage, self._next_seq(), envelope.chunk))
            return
        if envelope.WhichOneof("body") != "hello":
            for _ in range(self._rng.randrange(2 * self._per_message + 1)):
                for junk in junk_case(self._rng, self.run_id, self._next_seq, self._seq):
                    await self._call.write(junk)
                self._report.write(f"junk {self.run_id}\n".encode())
        envelope.seq = self._next_seq()
        await self._call.write(envelope)

    async def read(self) -> Any:
        while True:
            envelope = await self._call.read()
            body = envelope.WhichOneof("body") if hasattr(envelope, "WhichOneof") else None
            if body == "error":
                self._report.write(f"error {self.run_id}\n".encode())
                continue
            if body == "instruction" and envelope.instruction.WhichOneof("kind") == "setup":
                self.run_id = envelope.instruction.setup.run_id
            return envelope


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--junk-per-message", type=int, required=True)
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--report", required=True)
    parser.add_argument("client_args", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    report = open(args.report, "wb", buffering=0)
    run_client(lambda call: FuzzingCall(call, rng, args.junk_per_message, report), args.client_args)


if __name__ == "__main__":
    main()
