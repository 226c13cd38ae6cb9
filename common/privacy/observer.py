"""The server-side observer of what crosses the cut, for the attacks a run asks for (``attacks:``).

The server's client handles call it with every cut tensor they accepted and every client segment they sent;
it keeps only what the requested attacks look at (each client's first few training steps), and after the round's
evaluation ``finish_round`` runs the attacks (off the event loop: the caller's ``compute``) and returns the
round's privacy figures. It never changes what is sent or computed; a run without ``attacks`` has no observer at
all (the handles test one attribute per message)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from slperf.common.config import RunConfig
from slperf.common.paradigms import registry as paradigms
from slperf.common.privacy.attacks import registry as attacks
from slperf.common.privacy.attacks.base import Attack, AttackContext
from slperf.common.privacy.observations import ClientRound, GroundTruth, RoundLog
from slperf.common.protocol.types import CutTensor, Phase


class PrivacyObserver:
    def __init__(self, config: RunConfig, input_shape: tuple[int, ...], num_classes: int, folder: Path | None):
        self.config = config
        spec = paradigms.get(config.paradigm)
        exchange = spec.exchange(config, 0)
        self._first_stage = exchange.train[0].name if exchange.train else ""
        self._producer = exchange.segments[0].name if exchange.segments else ""
        ctx = AttackContext(config, input_shape, num_classes, folder)
        self.attacks: list[Attack] = [attacks.get(spec)(ctx, attacks.split(spec)[1]) for spec in config.attacks]
        self._activation_steps = max((a.activation_steps for a in self.attacks), default=0)
        self._eval_steps = max((a.eval_steps for a in self.attacks), default=0)
        self._tail_steps = max((a.tail_steps for a in self.attacks), default=0)
        self._truth = GroundTruth(config)
        self._rounds: dict[int, RoundLog] = {}
        self._sent: dict[int, dict[str, torch.Tensor]] = {}  # client index -> the producer segment last sent
        self.last: dict[str, Any] = {}

    def _client(self, round: int, index: int, client_id: str) -> ClientRound:
        log = self._rounds.setdefault(round, RoundLog(round))
        return log.clients.setdefault(index, ClientRound(client_id, index))

    def weights_sent(
        self, client_id: str, index: int, segment: str, round: int, state: Mapping[str, torch.Tensor]
    ) -> None:
        if segment == self._producer:
            self._sent[index] = {k: v.detach().clone() for k, v in state.items()}

    def cut_tensor(self, client_id: str, index: int, message: CutTensor) -> None:
        ref = message.ref
        if ref.phase is Phase.EVAL and ref.stage == self._first_stage and ref.step < self._eval_steps:
            self._client(ref.round, index, client_id).eval_activations[ref.step] = message.tensor.detach().clone()
            return
        if ref.phase is not Phase.TRAIN:
            return
        if ref.stage == self._first_stage:
            if ref.step >= self._activation_steps:
                return
            seen = self._client(ref.round, index, client_id)
            if ref.step == 0 and index in self._sent:
                seen.producer = self._sent[index]
            seen.activations[ref.step] = message.tensor.detach().clone()
        elif ref.step < self._tail_steps:
            self._client(ref.round, index, client_id).tail_gradients[ref.step] = message.tensor.detach().clone()

    def finish_round(self, round: int) -> dict[str, Any]:
        """Runs every requested attack on the round's observations: {"per_client": {id: figures}, figure: mean}."""
        log = self._rounds.pop(round, RoundLog(round))
        per_client: dict[str, dict[str, float]] = {}
        for attack in self.attacks:
            for client_id, figures in attack.run(log, self._truth).items():
                per_client.setdefault(client_id, {}).update(figures)
        names = sorted({k for figures in per_client.values() for k in figures})
        out: dict[str, Any] = {}
        for name in names:
            values = [f[name] for f in per_client.values() if name in f and not math.isnan(f[name])]
            out[name] = sum(values) / len(values) if values else math.nan
        out["per_client"] = per_client
        self.last = out
        return out


def check_attacks(config: RunConfig) -> None:
    """Refuses (ConfigError) an unknown attack, one named twice, or one the paradigm's threat model rules out."""
    from slperf.common.config import ConfigError

    names = [attacks.split(spec)[0] for spec in config.attacks]
    if len(set(names)) != len(names):
        raise ConfigError("config key 'attacks' names an attack twice")
    threats = paradigms.get(config.paradigm).threats_for(config)
    topology = " with a fed server" if config.fed_server else ""
    for spec in config.attacks:
        name, parameter = attacks.split(spec)
        attack = attacks.get(spec)
        attack.check_parameter(parameter)
        why = attack.refusal(threats)
        if why:
            raise ConfigError(f"config key 'attacks': {name} cannot run against {config.paradigm}{topology}: {why}")
