"""Label inference from the gradients a non-label party sees (Li et al., "Label Leakage and Protection in
Two-party Split Learning", ICLR 2022). In U-shaped SL the server receives, per sample, the gradient of the loss
with respect to its own output, computed by the client's tail from the client's labels.

* ``norm_scores``: the gradient's L2 norm. With a class imbalance, examples of the rare class get larger
  gradients (the model is less sure of them), so the norm alone ranks them first.
* ``direction_scores``: cosine similarity to the gradient of one example whose label is known: same-class
  gradients point the same way, others away.
* ``cluster_accuracy``: a multi-class attack without any known label: spherical k-means of the gradients into
  ``k`` clusters, each cluster read as its majority label (the label-inference accuracy an attacker reaches once
  it names the clusters, e.g. from one known example each).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def norm_scores(gradients: torch.Tensor) -> torch.Tensor:
    norms: torch.Tensor = gradients.reshape(gradients.shape[0], -1).double().norm(dim=1)
    return norms


def direction_scores(gradients: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    flat = gradients.reshape(gradients.shape[0], -1).double()
    return F.cosine_similarity(flat, reference.reshape(1, -1).double().expand_as(flat), dim=1)


def cluster_accuracy(
    gradients: torch.Tensor, labels: torch.Tensor, k: int, iterations: int = 30, seed: int = 0
) -> float:
    """Spherical k-means (k-means++ seeding, cosine) of the gradients; the share of samples whose cluster's
    majority label is their own."""
    flat = F.normalize(gradients.reshape(gradients.shape[0], -1).double(), dim=1)
    n = flat.shape[0]
    if n == 0:
        raise ValueError("no gradients to cluster")
    k = min(k, n)
    generator = torch.Generator().manual_seed(seed)
    centres = [flat[int(torch.randint(n, (1,), generator=generator))]]
    for _ in range(1, k):
        similarity = torch.stack([flat @ c for c in centres], dim=1).max(dim=1).values
        weights = (1.0 - similarity).clamp(min=0) ** 2 + 1e-12
        centres.append(flat[int(torch.multinomial(weights, 1, generator=generator))])
    centre = torch.stack(centres)
    assign = torch.zeros(n, dtype=torch.long)
    for _ in range(iterations):
        assign = (flat @ centre.T).argmax(dim=1)
        for j in range(k):
            members = flat[assign == j]
            if len(members):
                centre[j] = F.normalize(members.sum(0), dim=0)
    correct = 0
    for j in range(k):
        member_labels = labels[assign == j]
        if len(member_labels):
            correct += int(torch.bincount(member_labels).max())
    return correct / n
