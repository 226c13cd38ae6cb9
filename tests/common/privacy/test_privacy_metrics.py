"""The leakage figures against answers known in closed form."""

from __future__ import annotations

import math

import pytest
import torch

from slperf.common.privacy.metrics import distance_correlation, mse, psnr, roc_auc, ssim


def test_dcor_of_a_sample_with_itself_or_a_linear_map_of_it_is_one():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 5, generator=g)
    assert distance_correlation(x, x) == pytest.approx(1.0, abs=1e-9)
    # dCor is invariant to rotations, scalings and shifts: an orthogonal map times 3, plus an offset.
    q, _ = torch.linalg.qr(torch.randn(5, 5, generator=g))
    assert distance_correlation(x, 3 * x @ q + 7) == pytest.approx(1.0, abs=1e-9)


def test_dcor_of_independent_samples_is_near_zero_and_of_a_nonlinear_function_in_between():
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(1000, 3, generator=g), torch.randn(1000, 3, generator=g)
    assert distance_correlation(x, y) < 0.15  # the V-statistic is biased up: about 0.1 at n = 1000 in 3-D
    u = torch.randn(1000, 1, generator=g)
    assert 0.3 < distance_correlation(u, u**2) < 0.7  # uncorrelated (Pearson ~0) yet dependent


def test_dcor_refuses_unpaired_samples():
    with pytest.raises(ValueError, match="paired"):
        distance_correlation(torch.zeros(3, 2), torch.zeros(4, 2))


def test_ssim_is_one_for_identical_images_and_the_luminance_term_for_two_constant_ones():
    x = torch.rand(2, 1, 28, 28, generator=torch.Generator().manual_seed(2))
    assert ssim(x, x) == pytest.approx(1.0, abs=1e-12)
    a = torch.full((1, 1, 16, 16), 0.2, dtype=torch.float64)
    b = torch.full((1, 1, 16, 16), 0.6, dtype=torch.float64)
    c1 = 0.01**2
    assert ssim(a, b) == pytest.approx((2 * 0.2 * 0.6 + c1) / (0.2**2 + 0.6**2 + c1), rel=1e-9)
    noisy = (x + 0.3 * torch.randn(x.shape, generator=torch.Generator().manual_seed(3))).clamp(0, 1)
    assert ssim(x, noisy) < 0.8
    with pytest.raises(ValueError, match="at least 11"):
        ssim(torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 8, 8))


def test_mse_and_psnr():
    a, b = torch.zeros(1, 1, 4, 4), torch.full((1, 1, 4, 4), 0.1)
    assert mse(a, b) == pytest.approx(0.01)
    assert psnr(a, b) == pytest.approx(20.0)
    assert psnr(a, a) == math.inf


def test_auc_perfect_reversed_chance_and_ties():
    labels = torch.tensor([0, 0, 1, 1])
    assert roc_auc(torch.tensor([0.1, 0.2, 0.8, 0.9]), labels) == 1.0
    assert roc_auc(torch.tensor([0.9, 0.8, 0.2, 0.1]), labels) == 0.0
    assert roc_auc(torch.ones(4), labels) == 0.5
    assert roc_auc(torch.tensor([0.1, 0.5, 0.5, 0.9]), labels) == pytest.approx(0.875)
    assert math.isnan(roc_auc(torch.ones(3), torch.ones(3)))
