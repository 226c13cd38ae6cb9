"""Runs the `slperf` CLI (server or client daemon) with its transport byte counters exposed, for the scaling
benchmark's sent-vs-received message check:

    python -m benchmarks._instrumented COUNTS_DIR NAME server|client ...   (the slperf CLI arguments)

Every session endpoint's ``ByteCounter`` (the same ``transport.endpoint.Endpoint`` class in the server and the
client daemon) is remembered through the endpoint observer hook when the session is made. On SIGUSR1 the process
writes ``COUNTS_DIR/NAME.json`` with, per session, the envelopes and bytes it sent and received, and its own peak
RSS.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
from pathlib import Path

_records: list[dict] = []
_lock = threading.Lock()


def _install() -> None:
    from slperf.common.transport.endpoint import Endpoint, observe_endpoints

    def remember(endpoint: Endpoint) -> None:
        with _lock:
            _records.append({"client_id": endpoint.name or None, "counter": endpoint.counter})

    observe_endpoints(remember)


def _dump(path: Path, name: str, role: str) -> None:
    from slperf.bench.memory import self_peak_rss_bytes
    from slperf.common.fsutil import atomic_write

    with _lock:
        sessions = [
            {
                "client_id": r["client_id"] or name,
                "sent": r["counter"].messages_down if role == "server" else r["counter"].messages_up,
                "received": r["counter"].messages_up if role == "server" else r["counter"].messages_down,
                "bytes_up": r["counter"].up,
                "bytes_down": r["counter"].down,
            }
            for r in _records
        ]
    data = {
        "name": name,
        "role": role,
        "pid": os.getpid(),
        "sessions": sessions,
        "peak_rss_bytes": self_peak_rss_bytes(),
    }
    atomic_write(path, json.dumps(data))


def main() -> None:
    counts_dir, name, *cli_args = sys.argv[1:]
    role = cli_args[0]
    out = Path(counts_dir) / f"{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    _install()
    signal.signal(signal.SIGUSR1, lambda *_: _dump(out, name, role))
    from slperf.cli import main as cli_main

    sys.argv = ["slperf", *cli_args]
    cli_main()


if __name__ == "__main__":
    main()
