"""What an honest-but-curious server saw in one round, as far as the requested attacks need it, and the ground
truth the attacks are scored against.

The server side records (``RoundLog``) the first training steps' cut tensors of every client as they arrive, and
the client segment it sent each client before its pass (the weights its first batch goes through). The ground
truth is the clients' own training batches, rebuilt from the config: a shard and its batch order are a pure
function of (config, client index, round) (``slperf.common.shards``). Only a benchmark can score an attack this
way (it holds every silo's data); the attack itself never reads the ground truth, except where it says so (the
one labelled example of the direction score).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import torch

from slperf.common.config import RunConfig
from slperf.common.data.client_data import ClientData
from slperf.common.protocol.types import State


@dataclass
class ClientRound:
    """One client's part of a round, as the server saw it."""

    client_id: str
    index: int
    activations: dict[int, torch.Tensor] = field(default_factory=dict)  # step -> what the first stage carried up
    tail_gradients: dict[int, torch.Tensor] = field(default_factory=dict)  # step -> a later stage's tensor (U-shaped)
    producer: State | None = None  # the client segment the server sent before the client's first step
    eval_activations: dict[int, torch.Tensor] = field(default_factory=dict)  # step -> an evaluation batch's


@dataclass
class RoundLog:
    round: int
    clients: dict[int, ClientRound] = field(default_factory=dict)


class GroundTruth:
    """The clients' training batches, rebuilt from the config (lazily, one client's data at a time)."""

    def __init__(self, config: RunConfig):
        self.config = config
        self._data: dict[int, ClientData] = {}

    def client_data(self, index: int) -> ClientData:
        if index not in self._data:
            from slperf.common.paradigms import registry
            from slperf.common.shards import build_client_data

            spec = registry.get(self.config.paradigm)
            build = spec.client_data or build_client_data
            self._data[index] = build(self.config, index)
        return self._data[index]

    def batches(self, index: int, round: int, steps: list[int]) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
        """Inputs and labels of the client's training batches ``steps`` of ``round``."""
        return self._pick(self.client_data(index).train.batches(round), steps)

    def eval_batches(self, index: int, steps: list[int]) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
        """Inputs and labels of the client's evaluation batches ``steps`` of ``round``: the data set's test split
        in the order every paradigm evaluates (unshuffled), public where the data set is (what ``inversion_learned``
        assumes)."""
        return self._pick(self.client_data(index).test.batches(0, shuffle=False), steps)

    @staticmethod
    def _pick(
        batches: Iterable[tuple[torch.Tensor, torch.Tensor]], steps: list[int]
    ) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
        wanted = set(steps)
        out: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        if not wanted:
            return out
        for step, (x, y) in enumerate(batches):
            if step in wanted:
                out[step] = (x, y)
            if step >= max(wanted):
                break
        return out
