"""Running a real client daemon whose session calls are wrapped: the test clients that misbehave on purpose
(``fuzzing_client``, ``chaos_client``) are the daemon itself with one wrapper around its stream."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from slperf import cli
from slperf.slclient import daemon


class WrappedCall:
    """Stands in for the daemon's session call; whatever a subclass does not override goes to the real call."""

    def __init__(self, call: Any):
        self._call = call

    def __getattr__(self, name: str) -> Any:
        return getattr(self._call, name)

    def __await__(self) -> Any:
        return self._call.__await__()


def run_client(wrap: Callable[[Any], WrappedCall], client_args: list[str]) -> None:
    """``slperf client CLIENT_ARGS``, with every session call the daemon opens wrapped by ``wrap``."""
    real_open = daemon.open_session
    daemon.open_session = lambda channel: wrap(real_open(channel))
    sys.argv = ["slperf", "client", *[a for a in client_args if a != "--"]]
    cli.main()
