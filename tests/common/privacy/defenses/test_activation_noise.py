"""Per-sample clipping bounds every sample's norm (and leaves those under the bound alone); the noise added on top
has the standard deviation sigma * clip; the server's gradient flows back through the clipping."""

from __future__ import annotations

import pytest
import torch

from slperf.common.privacy.defenses.activation_noise import ActivationNoise, clip_per_sample


def test_clipping_bounds_every_samples_norm_and_keeps_small_ones():
    g = torch.Generator().manual_seed(0)
    acts = torch.randn(200, 6, 7, 7, generator=g) * torch.linspace(0.001, 3.0, 200).reshape(-1, 1, 1, 1)
    clipped = clip_per_sample(acts, 1.5)
    norms = clipped.reshape(200, -1).norm(dim=1)
    assert float(norms.max()) <= 1.5 * (1 + 1e-6)
    small = acts.reshape(200, -1).norm(dim=1) <= 1.5
    assert small.any() and (~small).any()
    assert torch.equal(clipped[small], acts[small])
    assert torch.allclose(norms[~small], torch.full_like(norms[~small], 1.5))


def test_the_noise_has_sigma_times_clip_and_the_gradient_flows_through_the_clip():
    defense = ActivationNoise(ActivationNoise.parse({"clip": 2.0, "sigma": 0.5}))
    assert defense.params == {"clip": 2.0, "sigma": 0.5, "delta": 1e-5}
    acts = (torch.randn(256, 400) * 0.001).requires_grad_(True)  # all under the bound: clipping is the identity
    sent = defense.release_activations(acts, torch.Generator().manual_seed(1))
    noise = (sent - acts).detach()
    assert float(noise.std()) == pytest.approx(1.0, rel=0.02)  # sigma * clip
    assert abs(float(noise.mean())) < 0.01
    sent.sum().backward()
    assert torch.allclose(acts.grad, torch.ones_like(acts))


def test_the_noise_comes_from_the_clients_generator():
    defense = ActivationNoise({"clip": 1.0, "sigma": 1.0, "delta": 1e-5})
    acts = torch.zeros(4, 8)
    a = defense.release_activations(acts, torch.Generator().manual_seed(5))
    b = defense.release_activations(acts, torch.Generator().manual_seed(5))
    c = defense.release_activations(acts, torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)
