"""The learned inverse network against bottoms whose inverse is known, and the ``name:PARAMETER`` form of the
attacks key (the learned attack's auxiliary share)."""

from __future__ import annotations

import pytest
import torch

from slperf.common.config import ConfigError, RunConfig
from slperf.common.privacy.attacks import registry
from slperf.common.privacy.attacks.base import AttackContext
from slperf.common.privacy.inverse_net import DecoderSettings, fit_inverse
from slperf.common.privacy.observer import check_attacks


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread, as a server's compute runs it (``torch_threads``): two threads on a loaded machine
    spin against each other and make these small fits ten times slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_the_decoder_inverts_a_known_invertible_linear_bottom():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(512, 8, generator=g)
    bottom = torch.randn(8, 8, generator=g) + 3 * torch.eye(8)  # well conditioned, so invertible
    a = x @ bottom.T
    inverse = fit_inverse(a, x, DecoderSettings(steps=300, batch_size=256, lr=1e-2, width=4), seed=0)
    held_out = torch.randn(256, 8, generator=g)
    error = float((inverse(held_out @ bottom.T) - held_out).pow(2).mean())
    assert error < 0.02 * float(held_out.var()), error  # a data-free "guess the mean" scores 1.0 x the variance
    # The same pairs, settings and seed give the same decoder.
    short = DecoderSettings(steps=5, batch_size=16, width=4)
    assert torch.equal(fit_inverse(a, x, short, seed=3)(a[:4]), fit_inverse(a, x, short, seed=3)(a[:4]))


def test_the_image_decoder_undoes_a_known_downsampling_bottom():
    # A 2x2 average pool of smooth images (upsampled 7 x 7 noise): a linear, nearly invertible bottom.
    g = torch.Generator().manual_seed(1)
    coarse = torch.rand(256, 1, 7, 7, generator=g)
    x = torch.nn.functional.interpolate(coarse, size=(14, 14), mode="bilinear", align_corners=False)
    a = torch.nn.functional.avg_pool2d(x, 2).repeat(1, 3, 1, 1)  # 3 channels of 7 x 7
    inverse = fit_inverse(a[:192], x[:192], DecoderSettings(steps=200, batch_size=32, lr=1e-2, width=8), seed=0)
    error = float((inverse(a[192:]) - x[192:]).pow(2).mean())
    # Predicting every pixel's mean scores 1.0 x the variance; the decoder gets within a quarter of it (~0.13).
    assert error < 0.25 * float(x[192:].var()), (error, float(x[192:].var()))


def test_fit_refuses_unpaired_samples():
    with pytest.raises(ValueError, match="paired"):
        fit_inverse(torch.zeros(3, 2), torch.zeros(4, 2))


def test_the_auxiliary_share_is_a_checked_parameter():
    config = RunConfig(paradigm="vanilla", max_test_samples=500, eval_batch_size=100)
    for spec, pairs, steps in (("inversion_learned", 50, 1), ("inversion_learned:0.25", 125, 2)):
        attack = registry.get(spec)(AttackContext(config, (1, 28, 28), 10, None), registry.split(spec)[1])
        assert (attack.aux_samples, attack.eval_steps) == (pairs, steps)
    for bad in ("inversion_learned:0", "inversion_learned:1.5", "inversion_learned:many"):
        with pytest.raises(ConfigError, match="share of the evaluated test samples"):
            check_attacks(RunConfig(paradigm="vanilla", attacks=[bad]))
    with pytest.raises(ConfigError, match="dcor takes no parameter"):
        check_attacks(RunConfig(paradigm="vanilla", attacks=["dcor:3"]))
    with pytest.raises(ConfigError, match="twice"):
        check_attacks(RunConfig(paradigm="vanilla", attacks=["inversion_learned", "inversion_learned:0.5"]))
    # It needs activations only: it runs where the white-box attack is refused (vertical: no weights cross).
    check_attacks(RunConfig(paradigm="vertical", dataset="adult", attacks=["inversion_learned"]))
    with pytest.raises(ConfigError, match="inversion_whitebox cannot run against vertical"):
        check_attacks(RunConfig(paradigm="vertical", dataset="adult", attacks=["inversion_whitebox"]))
