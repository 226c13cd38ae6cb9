"""The operator of the network-fault tests, run on its own "machine": ``python netns.py operate ...`` under
``ip netns exec`` starts a run with OperatorClient, follows it, and prints one JSON line per finished round and a
last one with the final status.

The namespaces, the star topology and the relay themselves are product code (``slperf.netshape``): the benchmark
runs client daemons over shaped links with the same code the fault tests use.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path


# -- the operator, run inside a namespace ------------------------------------------------------------------
def _operate(argv: Sequence[str]) -> int:
    import argparse

    from slperf.common.security.credentials import operator_channel_credentials
    from slperf.operator import OperatorClient

    parser = argparse.ArgumentParser(prog="netns.py operate")
    parser.add_argument("--server", required=True)
    parser.add_argument("--certs", required=True, type=Path)
    parser.add_argument("--config", required=True, type=Path)
    parser.add_argument("--run-id", default="")
    args = parser.parse_args(argv)

    def emit(event: str, **fields) -> None:
        print(json.dumps({"t": time.time(), "event": event, **fields}), flush=True)

    op = OperatorClient(args.server, operator_channel_credentials(args.certs))
    try:
        run_id = op.start_run(args.config.read_text(), args.run_id, timeout=60)
        emit("started", run_id=run_id)
        status = op.follow(run_id, lambda record: emit("round", record=record))
        emit(
            "final",
            run_id=run_id,
            state=status.state,
            error=status.error,
            summary=json.loads(status.summary_json) if status.summary_json else None,
        )
    finally:
        op.close()
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] != ["operate"]:
        sys.exit("usage: python netns.py operate --server HOST:PORT --certs DIR --config FILE")
    sys.exit(_operate(sys.argv[2:]))
