"""Learned-inverse-network inversion by a server that does NOT hold the client segment (He et al.'s black-box
attack), for every paradigm whose server sees cut activations, including those whose server never sees client
weights.

Threat model (docs/threat_model.md): the attacker's auxiliary data are the evaluation inputs. Every client passes
the data set's test split, unshuffled, through its current bottom in each round's evaluation and sends the server
the activations; a standard benchmark's test split is public, so the server can load the same inputs and pair
them with the activations it received: a query interface to the bottom, with no collusion and no weights. The
assumption is exactly that: the evaluation inputs are known to the server (true for MNIST's public test split;
false for a deployment whose silos evaluate on private data). The parameter ``inversion_learned:F`` says what share
``F`` of the evaluated test samples (the first ones) the attacker knows and uses (default 0.1); no client ever
trains on them.

Per round: per client, a decoder trained on the (activation, input) pairs of the round's evaluation (the client's
own evaluation where it evaluated, else that of the client that evaluated: vanilla and SplitFed evaluate the
latest or averaged bottom through one client) inverts the client's first training batch (its first 8 samples).
The bottom it was trained on is the one after the round's training, so it attacks activations that bottom's
predecessor produced one epoch earlier: the figures are a lower bound on what an attacker with fresher queries
gets. Scored against the real inputs on [0, 1] like the white-box attack; grid ``inversion_learned_round<N>.png``.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch

from slperf.common.config import ConfigError
from slperf.common.data.registry import DATASETS
from slperf.common.paradigms.threats import Seen
from slperf.common.privacy.attacks.base import Attack, AttackContext
from slperf.common.privacy.attacks.inversion_whitebox import save_grid
from slperf.common.privacy.attacks.registry import register
from slperf.common.privacy.inverse_net import DecoderSettings, InverseNetwork, fit_inverse
from slperf.common.privacy.metrics import mse, psnr, ssim
from slperf.common.privacy.observations import ClientRound, GroundTruth, RoundLog

SAMPLES = 8
DEFAULT_AUX = 0.1


class LearnedInversion(Attack):
    name = "inversion_learned"
    summary = "a decoder trained on the public test inputs' activations inverts the first training batch (no weights)"
    needs = frozenset({Seen.ACTIVATIONS})
    activation_steps = 1
    parameter_help: ClassVar[str] = "share of the evaluated test samples the attacker knows, in (0, 1] (default 0.1)"
    settings = DecoderSettings()

    def __init__(self, ctx: AttackContext, parameter: str | None = None):
        super().__init__(ctx, parameter)
        self.aux = self.aux_fraction(parameter)
        config = ctx.config
        sizes = [n for n in (DATASETS[config.dataset].test_size, config.max_test_samples) if n is not None]
        if not sizes:
            raise ConfigError(f"{self.name} needs max_test_samples: {config.dataset} does not say its test size")
        evaluated = min(sizes)
        self.aux_samples = max(1, round(self.aux * evaluated))
        self.eval_steps = math.ceil(self.aux_samples / config.eval_batch_size)

    @classmethod
    def check_parameter(cls, parameter: str | None) -> None:
        cls.aux_fraction(parameter)

    @classmethod
    def aux_fraction(cls, parameter: str | None) -> float:
        if parameter is None:
            return DEFAULT_AUX
        try:
            value = float(parameter)
        except ValueError:
            value = math.nan
        if not 0.0 < value <= 1.0:
            raise ConfigError(
                f"config key 'attacks': {cls.name}:{parameter}: the parameter is the {cls.parameter_help}"
            )
        return value

    def _pairs(self, truth: GroundTruth, source: ClientRound) -> tuple[torch.Tensor, torch.Tensor]:
        steps = sorted(source.eval_activations)
        batches = truth.eval_batches(source.index, steps)
        steps = [s for s in steps if s in batches]
        a = torch.cat([source.eval_activations[s] for s in steps])[: self.aux_samples]
        x = torch.cat([batches[s][0] for s in steps])[: self.aux_samples]
        return a, x

    def run(self, log: RoundLog, truth: GroundTruth) -> dict[str, dict[str, float]]:
        config = self.ctx.config
        evaluated = {i: c for i, c in log.clients.items() if c.eval_activations}
        out: dict[str, dict[str, float]] = {}
        pictures: list[tuple[str, torch.Tensor, torch.Tensor]] = []
        decoders: dict[int, tuple[InverseNetwork, float, float, int]] = {}
        for index, seen in sorted(log.clients.items()):
            if 0 not in seen.activations or not evaluated:
                continue
            source = index if index in evaluated else min(evaluated)
            if source not in decoders:
                a, x_aux = self._pairs(truth, evaluated[source])
                decoder = fit_inverse(a, x_aux, self.settings, seed=config.seed + source)
                # The data's value range (its public normalisation), from the attacker's own auxiliary inputs.
                decoders[source] = (decoder, float(x_aux.min()), float(x_aux.max()), len(a))
            decoder, low, high, pairs = decoders[source]
            x = truth.batches(index, log.round, [0])[0][0][:SAMPLES]
            guess = decoder(seen.activations[0][:SAMPLES]).clamp(low, high)
            original, recon = (x - low) / (high - low), (guess - low) / (high - low)
            image = original.dim() == 4 and min(original.shape[-2:]) >= 11
            out[seen.client_id] = {
                "inversion_learned_mse": mse(recon, original),
                "inversion_learned_psnr": psnr(recon, original),
                "inversion_learned_ssim": ssim(recon, original) if image else math.nan,
                "inversion_learned_aux_pairs": float(pairs),
            }
            if image:
                pictures.append((seen.client_id, original, recon))
        if pictures and self.ctx.folder is not None:
            aux = f"{100 * self.aux:g}% of the public test split, {self.aux_samples} pairs"
            title = f"learned inverse network (auxiliary: {aux})"
            save_grid(self.ctx.folder / f"inversion_learned_round{log.round}.png", pictures, log.round, title)
        return out


register(LearnedInversion)
