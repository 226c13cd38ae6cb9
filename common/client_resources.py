"""Per-client compute limits of a local federation whose client daemons run in containers (``client_image``).

``client_resources`` in a run config::

    client_resources:
      cpus: 0.5          # every client: half a core (the container's nano_cpus)
      memory_mb: 768     # and 768 MiB of memory, swap included (mem_limit = memswap_limit)
      per_client:
        c3: {}           # c3's own entry replaces the default whole: {} = no limits

Limits only mean something where a launcher starts the containers (``slperf federation``, ``slperf bench``): they
are refused without ``client_image``, and a server refuses both keys in a run started on it (it starts no
daemon), so no limit is ever accepted and then not applied. Kept in the core, with no Docker import, so a config
is checked the same way on a machine without the SDK.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from slperf.common.config import ConfigError, RunConfig

LIMIT_KEYS = ("cpus", "memory_mb")
MIN_MEMORY_MB = 6  # Docker refuses a memory limit under 6 MiB


@dataclass(frozen=True)
class ClientResources:
    """One client daemon's limits; None = not limited."""

    cpus: float | None = None
    memory_mb: int | None = None

    @property
    def nano_cpus(self) -> int | None:
        return None if self.cpus is None else round(self.cpus * 1e9)

    @property
    def limited(self) -> bool:
        return self.cpus is not None or self.memory_mb is not None

    def describe(self) -> str:
        parts = [
            f"{self.cpus:g} cpus" if self.cpus is not None else "",
            f"{self.memory_mb} MiB" if self.memory_mb else "",
        ]
        return ", ".join(p for p in parts if p) or "unlimited"


def _limits(value: Any, where: str) -> ClientResources:
    if not isinstance(value, Mapping):
        raise ConfigError(f"config key '{where}' must be a mapping of {', '.join(LIMIT_KEYS)}, got {value!r}")
    unknown = sorted(str(k) for k in value if k not in LIMIT_KEYS)
    if unknown:
        raise ConfigError(f"config key '{where}' takes {', '.join(LIMIT_KEYS)}, not {', '.join(unknown)}")
    cpus = value.get("cpus")
    if cpus is not None:
        if isinstance(cpus, bool) or not isinstance(cpus, (int, float)) or not math.isfinite(cpus) or cpus < 0.01:
            raise ConfigError(f"config key '{where}.cpus' must be a number of cores >= 0.01, got {cpus!r}")
        cpus = float(cpus)
    memory = value.get("memory_mb")
    if memory is not None and (isinstance(memory, bool) or not isinstance(memory, int) or memory < MIN_MEMORY_MB):
        raise ConfigError(f"config key '{where}.memory_mb' must be an integer >= {MIN_MEMORY_MB}, got {memory!r}")
    return ClientResources(cpus=cpus, memory_mb=memory)


def client_resources(cfg: RunConfig, client_ids: Sequence[str] | None = None) -> dict[str, ClientResources]:
    """Every client's limits (the default, or its ``per_client`` entry), by client id; ConfigError for an unknown
    key, a bad value, a ``per_client`` id that is not a client of the run, or limits without ``client_image``.
    ``client_ids``: the run's ids (default: ``client_ids`` or c1..cN)."""
    raw = cfg.client_resources
    ids = list(client_ids or cfg.participant_ids() or [f"c{i + 1}" for i in range(cfg.clients)])
    if raw and not cfg.client_image:
        raise ConfigError(
            "config key 'client_resources' limits client daemons in containers: set client_image (e.g. "
            "client_image: slperf:latest, see docs/containers.md); without it the daemons run as host processes, "
            "which these limits cannot apply to"
        )
    per_client = raw.get("per_client", {})
    if not isinstance(per_client, Mapping):
        raise ConfigError(f"config key 'client_resources.per_client' must map client ids to limits, got {per_client!r}")
    default = _limits({k: v for k, v in raw.items() if k != "per_client"}, "client_resources")
    strangers = sorted(str(cid) for cid in per_client if cid not in ids)
    if strangers:
        raise ConfigError(
            f"config key 'client_resources.per_client' names {', '.join(strangers)}, not a client of this run "
            f"({', '.join(ids)})"
        )
    return {
        cid: _limits(per_client[cid], f"client_resources.per_client.{cid}") if cid in per_client else default
        for cid in ids
    }


def check_client_containers(cfg: RunConfig) -> None:
    """``client_image`` and ``client_resources`` against the rest of the config (see the module docstring)."""
    if cfg.client_image is not None:
        if not cfg.client_image.strip():
            raise ConfigError("config key 'client_image' must name an image, e.g. slperf:latest")
        if cfg.backend == "sim":
            raise ConfigError(
                "config key 'client_image' runs client daemons in containers, which backend: sim has none of "
                "(every party is in one process); use backend: federation"
            )
    client_resources(cfg)
