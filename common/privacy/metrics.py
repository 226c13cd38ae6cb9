"""The figures leakage is measured in, written out from their formulas (no dependency beyond torch).

* ``distance_correlation``: Székely et al.'s dCor between two batches (samples as rows), the quantity NoPeek
  minimises between a client's inputs and its cut activations: 0 for independent, 1 for linearly related.
* ``mse``, ``psnr`` and ``ssim`` (Wang et al. 2004, Gaussian window 11 x 11, sigma 1.5, K1 = 0.01, K2 = 0.03) of a
  reconstruction against the original, on images scaled to [0, 1].
* ``roc_auc``: the area under the ROC curve of scores against binary labels (Mann-Whitney, ties counted half).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _centred_distances(x: torch.Tensor) -> torch.Tensor:
    d = torch.cdist(x, x)
    return d - d.mean(0, keepdim=True) - d.mean(1, keepdim=True) + d.mean()


def distance_correlation(x: torch.Tensor, y: torch.Tensor) -> float:
    """The (V-statistic) distance correlation of paired samples ``x[i]``, ``y[i]`` (any shapes; flattened per
    sample). A biased estimator: independent samples of n give about 1/sqrt(n), not 0."""
    if x.shape[0] != y.shape[0] or x.shape[0] < 2:
        raise ValueError(f"distance correlation needs >= 2 paired samples, got {x.shape[0]} and {y.shape[0]}")
    a = _centred_distances(x.detach().reshape(x.shape[0], -1).double())
    b = _centred_distances(y.detach().reshape(y.shape[0], -1).double())
    dcov_xy = (a * b).mean()
    dvar = (a * a).mean() * (b * b).mean()
    if float(dvar) <= 0.0:
        return 0.0
    return float(torch.sqrt(torch.clamp(dcov_xy, min=0.0) / torch.sqrt(dvar)))


def mse(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(F.mse_loss(a.double(), b.double()))


def psnr(a: torch.Tensor, b: torch.Tensor, data_range: float = 1.0) -> float:
    """Peak signal-to-noise ratio in dB (infinite for identical images)."""
    error = mse(a, b)
    return math.inf if error == 0 else 10.0 * math.log10(data_range**2 / error)


def _gaussian_window(size: int, sigma: float) -> torch.Tensor:
    coords = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    g = g / g.sum()
    return torch.outer(g, g)


def ssim(a: torch.Tensor, b: torch.Tensor, data_range: float = 1.0, window: int = 11, sigma: float = 1.5) -> float:
    """Mean SSIM of two image batches ``[N, C, H, W]`` (or one ``[C, H, W]``): every channel filtered with the
    Gaussian window over its valid positions, averaged over positions, channels and images."""
    if a.shape != b.shape:
        raise ValueError(f"ssim of images of shapes {list(a.shape)} and {list(b.shape)}")
    if a.dim() == 3:
        a, b = a.unsqueeze(0), b.unsqueeze(0)
    if a.dim() != 4 or min(a.shape[-2:]) < window:
        raise ValueError(f"ssim needs [N, C, H, W] images of at least {window} x {window}, got {list(a.shape)}")
    channels = a.shape[1]
    w = _gaussian_window(window, sigma).expand(channels, 1, window, window).contiguous()
    x, y = a.double(), b.double()

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t, w, groups=channels)

    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x**2
    var_y = blur(y * y) - mu_y**2
    cov = blur(x * y) - mu_x * mu_y
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    index = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return float(index.mean())


def roc_auc(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """AUC of ``scores`` for the positives ``labels == 1`` (Mann-Whitney U / (n+ n-), ties half); nan when the
    labels hold one class only."""
    scores = scores.detach().double().flatten()
    positive = labels.flatten().bool()
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return math.nan
    order = torch.argsort(scores)
    ranks = torch.empty_like(scores)
    ranks[order] = torch.arange(1, len(scores) + 1, dtype=torch.float64)
    for value in torch.unique(scores):  # average ranks of ties
        tied = scores == value
        if int(tied.sum()) > 1:
            ranks[tied] = ranks[tied].mean()
    u = float(ranks[positive].sum()) - n_pos * (n_pos + 1) / 2
    return u / (n_pos * n_neg)
