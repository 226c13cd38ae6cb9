"""The rate limit of a link: ``tc tbf`` on a device's egress. A client's link is shaped on both of its ends (its own
``eth0`` for what it sends, its port on the bridge for what it receives), so each direction has the rate.

The bucket holds 4 ms of the rate (at least 16 KiB, so a 1 Gbit link is not limited by the timer), and the queue
100 ms of it: enough that TCP over a delayed path keeps the link busy, little enough that the queue does not add
a delay of its own that dwarfs the configured one.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass

MIN_BURST_BYTES = 16 * 1024
BURST_SECONDS = 0.004
QUEUE_SECONDS = 0.1


@dataclass(frozen=True)
class Tbf:
    """A token bucket filter: ``rate_mbit`` (megabits per second), its bucket and its queue in bytes."""

    rate_mbit: float

    def __post_init__(self) -> None:
        if not self.rate_mbit > 0:
            raise ValueError(f"a tbf rate must be > 0 Mbit/s, got {self.rate_mbit}")

    @property
    def rate_bytes(self) -> float:
        return self.rate_mbit * 1e6 / 8

    @property
    def burst_bytes(self) -> int:
        return max(MIN_BURST_BYTES, int(self.rate_bytes * BURST_SECONDS))

    @property
    def limit_bytes(self) -> int:
        return max(3 * self.burst_bytes, int(self.rate_bytes * QUEUE_SECONDS))

    def command(self, namespace: str, device: str) -> list[str]:
        """``tc -n NS qdisc replace dev DEV root tbf rate Rbit burst B limit L`` (bits, bytes, bytes)."""
        return [
            "tc",
            "-n",
            namespace,
            "qdisc",
            "replace",
            "dev",
            device,
            "root",
            "tbf",
            "rate",
            f"{round(self.rate_mbit * 1e6)}bit",
            "burst",
            str(self.burst_bytes),
            "limit",
            str(self.limit_bytes),
        ]

    def apply(self, namespace: str, device: str) -> None:
        proc = subprocess.run(self.command(namespace, device), capture_output=True, text=True, timeout=30)
        if proc.returncode != 0:
            raise RuntimeError(f"tc tbf on {device} in {namespace} failed: {proc.stderr.strip() or proc.returncode}")


def show(namespace: str, device: str) -> str:
    """What ``tc qdisc show`` says of the device (for logs and tests)."""
    proc = subprocess.run(
        ["tc", "-n", namespace, "qdisc", "show", "dev", device], capture_output=True, text=True, timeout=30
    )
    return proc.stdout.strip()
