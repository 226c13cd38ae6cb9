"""The plug-in interface of a defense: its parameters, what the paradigm's threat model must let the server see for
it to protect anything, and the one hook it implements at the point where the data leaves the client.

A defense is applied by the party that owns the data (the client), never by the server: a ``Defense`` instance
lives in the client's ``ClientDefenses`` (``client.py``) and changes only what that client sends (or the loss it
optimises). Each defense overrides the hooks it needs; the others pass their input through.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, ClassVar

import torch

from slperf.common.config import ConfigError
from slperf.common.paradigms.threats import Seen, ThreatModel


class Defense:
    """One client-side defense. ``params`` is its resolved parameter mapping (``parse``'s result), as recorded in
    the run's config and summary; ``needs``: what the server must see for the defense to apply; ``excluded``:
    where it is pointless (the server sees these in the clear)."""

    name: ClassVar[str]
    summary: ClassVar[str]
    needs: ClassVar[frozenset[Seen]]
    excluded: ClassVar[frozenset[Seen]] = frozenset()

    def __init__(self, params: Mapping[str, Any]):
        self.params = dict(params)

    @classmethod
    def parse(cls, raw: Mapping[str, Any]) -> dict[str, Any]:
        """The resolved parameters (defaults filled in); ConfigError naming the key for a bad or unknown one."""
        raise NotImplementedError

    @classmethod
    def refusal(cls, threats: ThreatModel) -> str | None:
        """Why this defense does not apply to a paradigm with this threat model (None: it does)."""
        missing = [s.value for s in cls.needs if not threats.server_sees(s)]
        if missing:
            return f"the server never sees {', '.join(missing)}, so there is nothing of it to protect"
        present = [s.value for s in cls.excluded if threats.server_sees(s)]
        if present:
            return f"the server is sent {', '.join(present)} in the clear, which this defense does not hide"
        return None

    # -- hooks (called by ClientDefenses at the point the data leaves the client) ---------------------------
    def bind(self, classes: int, samples: int, generator: torch.Generator) -> None:
        """Called once per run with the client's training shard: the number of classes and of samples."""

    def penalty(self, inputs: torch.Tensor, activations: torch.Tensor) -> torch.Tensor | None:
        """A term added to the client's loss for this training batch (differentiable in ``activations``)."""
        return None

    def release_activations(self, activations: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """The training activations as sent, a differentiable function of ``activations``."""
        return activations

    def public_part(self, activations: torch.Tensor) -> torch.Tensor:
        """The deterministic part of :meth:`release_activations`, which the server knows from the run config (the
        defense is public, only its randomness is the client's): what an attacker's model of the client puts
        after the bottom. Identity where the release adds only noise, or nothing."""
        return activations

    def release_labels(self, labels: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """The training labels as sent; ``positions``: the samples' positions in the client's shard."""
        return labels

    def release_gradient(self, gradient: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """The gradient the client sends the server (U-shaped: d loss / d server output), as sent."""
        return gradient


def _where(defense: str, key: str) -> str:
    return f"config key 'defenses.{defense}.{key}'"


def check_keys(defense: str, raw: Mapping[str, Any], known: tuple[str, ...]) -> None:
    unknown = sorted(set(raw) - set(known))
    if unknown:
        raise ConfigError(
            f"config key 'defenses.{defense}': unknown parameter {', '.join(repr(k) for k in unknown)} "
            f"(known: {', '.join(known)})"
        )


def number(
    defense: str,
    raw: Mapping[str, Any],
    key: str,
    *,
    default: float | None = None,
    low: float = 0.0,
    high: float = math.inf,
    low_open: bool = True,
    high_open: bool = False,
) -> float:
    """A real parameter in (low, high] (or the bounds given), or its default; ConfigError naming it otherwise."""
    if key not in raw or raw[key] is None:
        if default is None:
            raise ConfigError(f"{_where(defense, key)} is required")
        return default
    value = raw[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{_where(defense, key)} must be a finite number, got {value!r}")
    too_low = value <= low if low_open else value < low
    too_high = value >= high if high_open else value > high
    if too_low or too_high:
        if math.isinf(high):
            bound = f"{'>' if low_open else '>='} {low:g}"
        else:
            bound = f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        raise ConfigError(f"{_where(defense, key)} must be {bound}, got {value!r}")
    return float(value)


def choice(defense: str, raw: Mapping[str, Any], key: str, options: tuple[str, ...], default: str) -> str:
    value = raw.get(key, default)
    if value is None:
        value = default
    if value not in options:
        raise ConfigError(f"{_where(defense, key)} must be one of {', '.join(options)}, got {value!r}")
    return str(value)
