"""Network namespaces: the preflight that refuses clearly, the ``ip`` runner, entering a namespace from Python
(``setns`` on the calling thread, so one process can hold sockets in two namespaces), and the sweep of leftovers.

Every namespace this package makes is named ``slpn-<owner pid>-<tag>-<host>``: the sweep deletes those whose owner
is no longer alive (an interrupted benchmark, a killed test), after killing what still runs inside them, and never
touches a namespace whose owner lives (another benchmark or test on the same machine).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator

PREFIX = "slpn"
CLONE_NEWNET = 0x40000000
_NAME = re.compile(rf"^{PREFIX}-(\d+)-[0-9a-f]+-")


class NetnsUnavailable(Exception):
    """Namespaces cannot be made here; the message says what is missing (tests skip with it)."""


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Runs ``ip ARGS``; a failure raises RuntimeError with ip's own message unless ``check`` is off."""
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and proc.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


def preflight(*, need_tc: bool = False) -> None:
    """Raises NetnsUnavailable unless this process can create and delete network namespaces (and run ``tc``)."""
    if sys.platform != "linux":
        raise NetnsUnavailable(f"network namespaces need Linux (this is {sys.platform})")
    if os.geteuid() != 0:
        raise NetnsUnavailable("network namespaces need root: run it as root (shaped links make namespaces and qdiscs)")
    missing = [tool for tool in ("ip", *(("tc",) if need_tc else ())) if shutil.which(tool) is None]
    if missing:
        raise NetnsUnavailable(f"{' and '.join(missing)} (iproute2) not installed")
    probe = f"{PREFIX}-{os.getpid()}-{secrets.token_hex(3)}-probe"
    made = ip("netns", "add", probe, check=False)
    if made.returncode != 0:
        raise NetnsUnavailable(f"`ip netns add` does not work here: {made.stderr.strip() or made.returncode}")
    ip("netns", "del", probe, check=False)


def new_tag() -> str:
    """``<pid>-<random>``: the owner's pid (for the sweep) and a tag unique among concurrent topologies."""
    return f"{os.getpid()}-{secrets.token_hex(3)}"


def listed() -> list[str]:
    return [line.split()[0] for line in ip("netns", "list", check=False).stdout.splitlines() if line.strip()]


def pids_in(name: str) -> list[int]:
    return [int(p) for p in ip("netns", "pids", name, check=False).stdout.split() if p.isdigit()]


def delete(name: str) -> None:
    """Kills whatever still runs inside the namespace (by pid: only processes started in it), then deletes it
    (its veths go with it)."""
    for pid in pids_in(name):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    ip("netns", "del", name, check=False)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_leftovers() -> list[str]:
    """Deletes this package's namespaces whose owner process is gone; returns their names."""
    swept = []
    for name in listed():
        match = _NAME.match(name)
        if match and not _alive(int(match.group(1))):
            delete(name)
            swept.append(name)
    return swept


def _setns(fd: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


@contextlib.contextmanager
def entered(path: str) -> Iterator[None]:
    """The calling thread is in the network namespace at ``path`` (``/run/netns/NAME``, ``/proc/PID/ns/net``)
    inside the block, and back in its own after. A socket made inside stays in that namespace for its life."""
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(path, os.O_RDONLY)
    try:
        _setns(target)
        try:
            yield
        finally:
            _setns(own)
    finally:
        os.close(target)
        os.close(own)


def path_of(name: str) -> str:
    """The file ``ip netns`` keeps a named namespace under."""
    return f"/run/netns/{name}"
