"""A learned inverse network (He, Zhang and Lee, ACSAC 2019, the black-box "inverse network" attack): a small
decoder trained on (activation, input) pairs of auxiliary data to map a client segment's output back to its
input. What an attacker can do without the segment's weights, as long as it gets the segment's outputs on inputs
it knows (docs/threat_model.md says how SLPerf's attacker gets them).

Images (input ``[C, H, W]``, activation ``[C', h, w]``): two 3x3 convolutions at the activation's resolution,
bilinear upsampling to ``H x W`` and a 3x3 convolution into pixels: a local decoder that matches a convolutional
segment's local receptive fields, so it learns from a few hundred images (and trains in seconds on a CPU).
Anything else: an MLP on the flattened activation plus a linear skip path (which alone inverts a linear segment
exactly).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class DecoderSettings:
    steps: int = 300
    batch_size: int = 32
    lr: float = 2e-3
    width: int = 16  # channels of the image decoder, hidden units x 8 of the flat one


class _ImageDecoder(nn.Module):
    def __init__(self, activation_shape: tuple[int, ...], input_shape: tuple[int, ...], width: int):
        super().__init__()
        self.size = (input_shape[1], input_shape[2])
        self.features = nn.Sequential(
            nn.Conv2d(activation_shape[0], width, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=1),
            nn.ReLU(),
        )
        self.out = nn.Conv2d(width, input_shape[0], 3, padding=1)

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        # Features at the activation's resolution (cheap), then upsampled and mixed into pixels.
        up = nn.functional.interpolate(self.features(a), size=self.size, mode="bilinear", align_corners=False)
        out: torch.Tensor = self.out(up)
        return out


class _FlatDecoder(nn.Module):
    def __init__(self, activation_shape: tuple[int, ...], input_shape: tuple[int, ...], width: int):
        super().__init__()
        a, d = _numel(activation_shape), _numel(input_shape)
        self.input_shape = input_shape
        self.skip = nn.Linear(a, d)
        self.mlp = nn.Sequential(nn.Linear(a, 8 * width), nn.ReLU(), nn.Linear(8 * width, d))

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        flat = a.reshape(a.shape[0], -1)
        out: torch.Tensor = (self.skip(flat) + self.mlp(flat)).reshape(a.shape[0], *self.input_shape)
        return out


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


class InverseNetwork:
    """A decoder fitted to pairs, with the activations' scale it was fitted at (so it applies to raw activations)."""

    def __init__(self, decoder: nn.Module, scale: float):
        self.decoder = decoder
        self.scale = scale

    @torch.no_grad()
    def __call__(self, activations: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.decoder(activations.float() / self.scale)
        return out


def fit_inverse(
    activations: torch.Tensor, inputs: torch.Tensor, settings: DecoderSettings = DecoderSettings(), seed: int = 0
) -> InverseNetwork:
    """Trains a decoder from ``activations[i]`` to ``inputs[i]`` (MSE, Adam on minibatches drawn with ``seed``);
    deterministic for the same pairs, settings and seed."""
    if activations.shape[0] != inputs.shape[0] or activations.shape[0] < 1:
        raise ValueError(f"an inverse network needs paired samples, got {activations.shape[0]} and {inputs.shape[0]}")
    a_shape, x_shape = tuple(activations.shape[1:]), tuple(inputs.shape[1:])
    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        image = len(a_shape) == 3 and len(x_shape) == 3
        decoder: nn.Module = (_ImageDecoder if image else _FlatDecoder)(a_shape, x_shape, settings.width)
    a = activations.detach().float()
    x = inputs.detach().float()
    scale = float(a.pow(2).mean().sqrt().clamp(min=1e-12))
    a = a / scale
    optimizer = torch.optim.Adam(decoder.parameters(), lr=settings.lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, settings.steps)
    n = a.shape[0]
    for _ in range(settings.steps):
        pick = torch.randint(n, (min(settings.batch_size, n),), generator=generator)
        optimizer.zero_grad(set_to_none=True)
        loss = (decoder(a[pick]) - x[pick]).pow(2).mean()
        loss.backward()
        optimizer.step()
        schedule.step()
    return InverseNetwork(decoder.eval(), scale)
