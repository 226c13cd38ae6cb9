"""The ``network:`` run-config key: the shaped link each client daemon gets when the launcher (``slperf
federation``, ``slperf bench``) runs it in a network namespace of its own (``slperf.netshape``).

    network: {rate_mbit: 100, delay_ms: 25}                                # every client
    network: {name: wan, rate_mbit: 100, delay_ms: 25, clients: {c2: {rate_mbit: 10, delay_ms: 50}}}

``rate_mbit`` is the link's rate in each direction (``tc tbf`` on both ends of the client's link), ``delay_ms`` the
one-way delay added in each direction (a relay in the path), so a round trip gains twice that. Only the launcher
acts on it; this module only validates it, so that a typo fails before namespaces are made. Unknown keys are
refused: a shaping that silently did not happen would make a benchmark compare the wrong things.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

PROFILE_KEYS = ("name", "rate_mbit", "delay_ms")
NETWORK_KEYS = (*PROFILE_KEYS, "clients")
MAX_RATE_MBIT = 100_000.0  # 100 Gbit/s: beyond what a veth and a userspace relay can carry anyway
MAX_DELAY_MS = 10_000.0


class NetworkConfigError(ValueError):
    """A ``network:`` problem; the message names the key."""


@dataclass(frozen=True)
class LinkProfile:
    """One client's link: its rate each way (None: unlimited) and its one-way delay each way."""

    rate_mbit: float | None = None
    delay_ms: float = 0.0
    name: str = ""

    @property
    def label(self) -> str:
        """The profile's name, or what it is (``100Mbit-25ms``): the report groups rows by it."""
        if self.name:
            return self.name
        rate = "unlimited" if self.rate_mbit is None else f"{self.rate_mbit:g}Mbit"
        return f"{rate}-{self.delay_ms:g}ms"

    @property
    def rate_bytes_per_s(self) -> float | None:
        return None if self.rate_mbit is None else self.rate_mbit * 1e6 / 8


@dataclass(frozen=True)
class NetworkSpec:
    """The whole key: the profile every client gets, and the clients that get another one."""

    default: LinkProfile
    per_client: Mapping[str, LinkProfile] = field(default_factory=dict)

    def for_client(self, client_id: str) -> LinkProfile:
        return self.per_client.get(client_id, self.default)

    @property
    def label(self) -> str:
        if not self.per_client:
            return self.default.label
        return self.default.name or f"{self.default.label}+{len(self.per_client)}-custom"


def _number(where: str, key: str, value: Any, *, low: float, high: float, low_open: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise NetworkConfigError(f"config key '{where}.{key}' must be a number, got {value!r}")
    if (value <= low if low_open else value < low) or value > high:
        bound = f"> {low:g}" if low_open else f">= {low:g}"
        raise NetworkConfigError(f"config key '{where}.{key}' must be {bound} and <= {high:g}, got {value!r}")
    return float(value)


def parse_profile(raw: Any, where: str = "network", *, allowed: Sequence[str] = PROFILE_KEYS) -> LinkProfile:
    """One profile mapping; NetworkConfigError names the key that is wrong."""
    if not isinstance(raw, Mapping):
        raise NetworkConfigError(f"config key '{where}' must be a mapping like {{rate_mbit: 100, delay_ms: 25}}")
    unknown = sorted(str(k) for k in raw if k not in allowed)
    if unknown:
        raise NetworkConfigError(
            f"config key '{where}': unknown key(s) {', '.join(unknown)} (known: {', '.join(allowed)})"
        )
    if "rate_mbit" not in raw and "delay_ms" not in raw:
        raise NetworkConfigError(f"config key '{where}' needs rate_mbit and/or delay_ms")
    rate = raw.get("rate_mbit")
    if rate is not None:
        rate = _number(where, "rate_mbit", rate, low=0.0, high=MAX_RATE_MBIT, low_open=True)
    delay = _number(where, "delay_ms", raw.get("delay_ms", 0.0), low=0.0, high=MAX_DELAY_MS, low_open=False)
    name = raw.get("name", "")
    if not isinstance(name, str) or (name and not name.replace("-", "").replace("_", "").isalnum()):
        raise NetworkConfigError(f"config key '{where}.name' must be a word (letters, digits, - and _), got {name!r}")
    return LinkProfile(rate_mbit=rate, delay_ms=delay, name=name)


def parse_network(raw: Mapping[str, Any], client_ids: Sequence[str]) -> NetworkSpec | None:
    """The ``network`` key (None when it is empty: no shaping); ``client_ids``: the run's participants, which
    ``clients:`` may name and nothing else."""
    if not raw:
        return None
    per_client_raw = raw.get("clients") or {}
    if not isinstance(per_client_raw, Mapping):
        raise NetworkConfigError("config key 'network.clients' must map client ids to profiles")
    top = {k: v for k, v in raw.items() if k != "clients"}
    unknown = sorted(str(k) for k in top if k not in PROFILE_KEYS)
    if unknown:
        raise NetworkConfigError(
            f"config key 'network': unknown key(s) {', '.join(unknown)} (known: {', '.join(NETWORK_KEYS)})"
        )
    default = parse_profile(top, "network") if ("rate_mbit" in top or "delay_ms" in top) else None
    if default is None:
        if not per_client_raw:
            raise NetworkConfigError("config key 'network' needs rate_mbit and/or delay_ms (or clients: {...})")
        default = LinkProfile(name=str(top.get("name", "")))
    strangers = sorted(str(c) for c in per_client_raw if str(c) not in client_ids)
    if strangers:
        raise NetworkConfigError(
            f"config key 'network.clients' names {', '.join(strangers)}, not among the run's clients "
            f"({', '.join(client_ids)})"
        )
    per_client = {
        str(cid): parse_profile(spec, f"network.clients.{cid}", allowed=("rate_mbit", "delay_ms"))
        for cid, spec in per_client_raw.items()
    }
    return NetworkSpec(default, per_client)
