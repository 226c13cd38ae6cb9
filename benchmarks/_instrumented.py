"""Runs the `slperf` CLI (server or client daemon) with its transport byte counters exposed, for the scaling
benchmark's sent-vs-received message check:

    python -m benchmarks._instrumented COUNTS_DIR NAME server|client ...   (the slperf CLI arguments)

Every session's ``ByteCounter`` (server: ``slserver.sessions.Session``; client: ``slclient.daemon.SessionLink``)
is remembered when the session is made. On SIGUSR1 the process writes ``COUNTS_DIR/NAME.json`` with, per
session, the envelopes and bytes it sent and received, and its own peak RSS. Nothing in the daemons changes:
the constructors are wrapped in this process only.
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


def _install(role: str) -> None:
    if role == "server":
        from slperf.slserver import sessions

        original = sessions.Session.__init__

        def init(self, client_id, *args, **kwargs):
            original(self, client_id, *args, **kwargs)
            with _lock:
                _records.append({"client_id": client_id, "counter": self.counter})

        sessions.Session.__init__ = init
    else:
        from slperf.slclient import daemon

        original_link = daemon.SessionLink.__init__

        def link_init(self, *args, **kwargs):
            original_link(self, *args, **kwargs)
            with _lock:
                _records.append({"client_id": None, "counter": self.counter})

        daemon.SessionLink.__init__ = link_init


def _dump(path: Path, name: str, role: str) -> None:
    from slperf.bench.memory import self_peak_rss_bytes

    with _lock:
        sessions = [{"client_id": r["client_id"] or name, "sent": r["counter"].messages_down if role == "server"
                     else r["counter"].messages_up, "received": r["counter"].messages_up if role == "server"
                     else r["counter"].messages_down, "bytes_up": r["counter"].up, "bytes_down": r["counter"].down}
                    for r in _records]
    data = {"name": name, "role": role, "pid": os.getpid(), "sessions": sessions,
            "peak_rss_bytes": self_peak_rss_bytes()}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def main() -> None:
    counts_dir, name, *cli_args = sys.argv[1:]
    role = cli_args[0]
    out = Path(counts_dir) / f"{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    _install(role)
    signal.signal(signal.SIGUSR1, lambda *_: _dump(out, name, role))
    from slperf.cli import main as cli_main

    sys.argv = ["slperf", *cli_args]
    cli_main()


if __name__ == "__main__":
    main()
