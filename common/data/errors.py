"""Errors raised by the data layer.

Every message is a single line that says what to do about it, because these errors end up in the log of a
client daemon started by someone else, often as the only line they read.
"""

from __future__ import annotations

from slperf.common.errors import one_line


class DatasetUnavailable(RuntimeError):
    """A data set (or the registry artifact holding it) cannot be obtained or read.

    The message is always one line naming the fix.
    """

    def __init__(self, message: str) -> None:
        super().__init__(one_line(message))


class DatasetCorrupt(DatasetUnavailable):
    """The files were found but their content is wrong (truncated, bad header, unexpected shape or counts)."""
