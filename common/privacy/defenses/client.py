"""The defenses one client applies, composed from the run config's ``defenses:``: what the kit's client halves call
at the point a training batch leaves the client. Without defenses every call returns its input untouched (the
same tensors, so an undefended run is bit for bit what it was).

Randomness (activation noise, randomized response, gradient noise) comes from a key the client draws from the
operating system's randomness, never from the run's ``seed``: the server knows the config, and noise it could
regenerate it could subtract. A restarted client daemon draws a new key (its randomized labels are drawn again:
see docs/threat_model.md)."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from slperf.common.config import RunConfig
from slperf.common.data.loader import ShardLoader
from slperf.common.privacy.defenses import registry
from slperf.common.privacy.defenses.base import Defense


@dataclass
class Release:
    """A training batch as it leaves the client: the activations to send (and back-propagate the server's gradient
    into), the labels to send, and the term to add to the client's loss (None: none)."""

    activations: torch.Tensor
    labels: torch.Tensor
    penalty: torch.Tensor | None


def build_defenses(config: RunConfig) -> list[Defense]:
    """The run's ``defenses:``, in the one order every party applies them."""
    return [registry.get(name)(params) for name, params in sorted(config.defenses.items())]


def public_release(config: RunConfig) -> Callable[[torch.Tensor], torch.Tensor]:
    """What the run's activation defenses do to a batch, less their noise: the server's best model of the
    channel between a client's bottom and what it receives (for an attack that inverts through the bottom)."""
    defenses = build_defenses(config)

    def apply(activations: torch.Tensor) -> torch.Tensor:
        for defense in defenses:
            activations = defense.public_part(activations)
        return activations

    return apply


class ClientDefenses:
    def __init__(self, config: RunConfig, train: ShardLoader, num_classes: int, key: int | None = None):
        self.defenses = build_defenses(config)
        self.generator = torch.Generator().manual_seed(secrets.randbits(63) if key is None else key)
        self._train = train
        self._order: tuple[int, np.ndarray] | None = None
        for defense in self.defenses:
            defense.bind(num_classes, train.num_samples, self.generator)

    def __bool__(self) -> bool:
        return bool(self.defenses)

    def positions(self, round: int, step: int) -> torch.Tensor:
        """Shard positions of training batch ``step`` of ``round`` (the loader's visiting order, cached per round)."""
        if self._order is None or self._order[0] != round:
            self._order = (round, self._train.order(round))
        size = self._train.batch_size
        return torch.from_numpy(self._order[1][step * size : (step + 1) * size].astype(np.int64))

    def release(
        self, inputs: torch.Tensor, activations: torch.Tensor, labels: torch.Tensor, round: int, step: int
    ) -> Release:
        """Training batch ``step`` of ``round``: ``inputs`` as the bottom saw them, its ``activations`` (in the
        graph), the true ``labels``."""
        if not self.defenses:
            return Release(activations, labels, None)
        penalty: torch.Tensor | None = None
        for defense in self.defenses:
            term = defense.penalty(inputs, activations)
            if term is not None:
                penalty = term if penalty is None else penalty + term
        sent = activations
        for defense in self.defenses:
            sent = defense.release_activations(sent, self.generator)
        positions = self.positions(round, step)
        if len(positions) != len(labels):
            raise RuntimeError(f"step {step}: {len(labels)} labels for {len(positions)} shard positions")
        for defense in self.defenses:
            labels = defense.release_labels(labels, positions)
        return Release(sent, labels, penalty)

    def release_eval(self, activations: torch.Tensor) -> torch.Tensor:
        """An evaluation batch's activations, as sent: through the same activation defences as training (clipping
        and noise), so that the server's top is scored on what it was trained on (unclipped evaluation activations
        were ~10x the scale of the clipped training ones, and scored at chance) and never sees an undefended one.
        Evaluation releases are not in the reported epsilon, which accounts for the training samples."""
        for defense in self.defenses:
            activations = defense.release_activations(activations, self.generator)
        return activations

    def gradient(self, gradient: torch.Tensor) -> torch.Tensor:
        """The gradient a client's tail sends the server (U-shaped), as sent."""
        for defense in self.defenses:
            gradient = defense.release_gradient(gradient, self.generator)
        return gradient
