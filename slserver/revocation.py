"""The server's view of ``revoked.json``: read again only when the file changes, and watched so that a client
revoked while connected loses its open session, not just its next one.

``slperf certs revoke`` rewrites the file atomically (a new inode), so its (inode, size, mtime) changes with every
revocation; a stat per check is all an unchanged list costs, which is why the list can be checked at every stream
opening without letting a stream flood turn into a flood of file reads.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from pathlib import Path

from slperf.common.security.errors import TLSConfigError
from slperf.common.security.identity import load_revoked
from slperf.common.security.layout import revoked_path

log = logging.getLogger("slperf.server")

_Stamp = tuple[int, int, int] | None  # (inode, size, mtime_ns) of the file; None when it does not exist


class RevocationList:
    """The revoked client ids of a certificates folder, cached by the file's stat. ``None`` folder: nothing is
    revoked (``--insecure``)."""

    def __init__(self, certs_dir: Path | None):
        self.certs_dir = certs_dir
        self._stamp: _Stamp = None
        self._revoked: frozenset[str] = frozenset()
        self._loaded = False

    def _stat(self) -> _Stamp:
        assert self.certs_dir is not None
        try:
            st = os.stat(revoked_path(self.certs_dir))
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise TLSConfigError(f"cannot read revocation list: {revoked_path(self.certs_dir)} ({exc})") from None
        return (st.st_ino, st.st_size, st.st_mtime_ns)

    def current(self) -> frozenset[str]:
        """The revoked ids now. Raises TLSConfigError when the file is unreadable or corrupt (callers fail
        closed)."""
        if self.certs_dir is None:
            return frozenset()
        stamp = self._stat()
        if not self._loaded or stamp != self._stamp:
            self._revoked = frozenset(load_revoked(self.certs_dir))
            self._stamp, self._loaded = stamp, True
        return self._revoked

    def is_revoked(self, client_id: str) -> bool:
        return client_id in self.current()

    async def watch(self, on_change: Callable[[frozenset[str]], None], interval: float) -> None:
        """Calls ``on_change`` with the revoked ids every time the list changes, checking every ``interval``
        seconds (a stat each time) until cancelled. An unreadable list is logged once per change and treated as
        revoking nobody new: sessions already open stay as they are, new ones are refused by :meth:`current`."""
        if self.certs_dir is None:
            return
        previous: frozenset[str] | None = None
        failing = False
        while True:
            try:
                revoked = self.current()
                failing = False
            except TLSConfigError as exc:
                if not failing:
                    log.error("%s; new sessions are refused until it is repaired", exc)
                failing = True
            else:
                if revoked != previous:
                    on_change(revoked)
                    previous = revoked
            await asyncio.sleep(interval)
