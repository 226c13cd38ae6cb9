"""A child process's stdout read line by line on a thread, so the caller can wait for a line with a deadline
(a relay's ready line, a probe's result) instead of sleeping."""

from __future__ import annotations

import queue
import threading
import time
from typing import IO


class Lines:
    def __init__(self, stream: IO[bytes]) -> None:
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._thread = threading.Thread(target=self._pump, args=(stream,), daemon=True)
        self._thread.start()

    def _pump(self, stream: IO[bytes]) -> None:
        for raw in iter(stream.readline, b""):
            line = raw.decode(errors="replace").rstrip("\n")
            self.lines.append(line)
            self._queue.put(line)
        self._queue.put(None)  # EOF

    def get(self, timeout: float) -> str | None:
        """The next line; None at EOF; raises queue.Empty after ``timeout`` seconds without one."""
        line = self._queue.get(timeout=timeout)
        if line is None:
            self._queue.put(None)  # stays at EOF
        return line

    def wait_for(self, prefix: str, timeout: float) -> str:
        """The first line that starts with ``prefix``; EOFError if the process ends first, TimeoutError after
        ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.get(max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise TimeoutError(f"no line starting with {prefix!r} within {timeout:g} s") from None
            if line is None:
                raise EOFError(f"the process ended before printing {prefix!r}")
            if line.startswith(prefix):
                return line
