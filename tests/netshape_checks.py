"""Shared by the shaped-link tests (``from netshape_checks import ...``; tests/ is on the path): skip without
namespaces, and what this test process left behind."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from slperf.netshape import namespaces


def need_namespaces() -> None:
    try:
        namespaces.preflight(need_tc=True)
    except namespaces.NetnsUnavailable as exc:
        pytest.skip(f"shaped links need network namespaces: {exc}")


def my_namespaces() -> list[str]:
    """Namespaces named for this process (the product's names carry their owner's pid)."""
    return [n for n in namespaces.listed() if n.startswith(f"{namespaces.PREFIX}-{os.getpid()}-")]


def my_children() -> list[str]:
    """Command lines of this process's live children (none may outlive a shaped run)."""
    out = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            stat = (proc / "stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            state = stat.rsplit(")", 1)[1].split()[0]
            if ppid == os.getpid() and state != "Z":
                out.append((proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"))
        except (OSError, ValueError, IndexError):
            continue
    return out
