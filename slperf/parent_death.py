"""A daemon that a local federation (or the benchmark) started ends when its parent does, even a SIGKILLed one.

``slperf federation`` stops its children in a ``finally``; a parent killed with SIGKILL (the OOM killer, a CI
timeout, ``kill -9``) runs no ``finally``, and its server and client daemons would stay behind, holding ports and
GPU memory. The parent names itself in ``SLPERF_EXIT_WITH_PARENT``; the child asks the kernel (Linux's
``PR_SET_PDEATHSIG``) for a SIGTERM when that parent dies, which the daemons already handle as a clean stop. A
daemon an operator starts by hand has no such variable and is not affected.

The kernel sends the signal when the *thread* that forked the child ends, not only the process: so the parent must
spawn from a thread that lives as long as the child should (the federation spawns from its caller's thread and
restarts a client from that client's supervising thread, which waits on the new child until it exits).
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

ENV = "SLPERF_EXIT_WITH_PARENT"
_PR_SET_PDEATHSIG = 1


def exit_with_parent() -> None:
    """Arms the parent-death signal when ``SLPERF_EXIT_WITH_PARENT`` names this process's parent."""
    wanted = os.environ.pop(ENV, None)  # popped: the daemon's own children (if any) are not bound to it
    if not wanted or not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    # The parent may have died between fork and prctl: then the signal never comes, so check once now.
    if str(os.getppid()) != wanted:
        raise SystemExit(f"slperf: the process that started this one ({wanted}) has already ended")
