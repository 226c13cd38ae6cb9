"""Label inference from the gradients a U-shaped server receives from the clients' tails (Li et al., ICLR 2022).
Per client and round, on its first 16 training steps' tail gradients: the leak AUC of the norm score and of the
direction score for the question "is it the positive class?", and the label-inference accuracy of clustering the
gradients (``slperf.common.privacy.label_leak``). On a binary task (Adult) the positive class is the rarer one of
the scored samples, Li et al.'s setting (the rare class gets the larger gradients); on a multi-class task it is
class 0. The direction's reference is the gradient of one positive sample the attacker is assumed to know, left
out of the scoring."""

from __future__ import annotations

import torch

from slperf.common.paradigms.threats import Seen
from slperf.common.privacy.attacks.base import Attack
from slperf.common.privacy.attacks.registry import register
from slperf.common.privacy.label_leak import cluster_accuracy, direction_scores, norm_scores
from slperf.common.privacy.metrics import roc_auc
from slperf.common.privacy.observations import GroundTruth, RoundLog

MULTICLASS_POSITIVE = 0


class LabelLeak(Attack):
    name = "label_leak"
    summary = "norm / direction scores (Li et al.) and gradient clustering on the gradients from the clients' tails"
    needs = frozenset({Seen.TAIL_GRADIENTS})
    excluded = frozenset({Seen.LABELS})
    tail_steps = 16

    def run(self, log: RoundLog, truth: GroundTruth) -> dict[str, dict[str, float]]:
        out: dict[str, dict[str, float]] = {}
        for index, seen in sorted(log.clients.items()):
            steps = sorted(seen.tail_gradients)
            batches = truth.batches(index, log.round, steps)
            steps = [s for s in steps if s in batches]
            if not steps:
                continue
            g = torch.cat([seen.tail_gradients[s].reshape(len(seen.tail_gradients[s]), -1) for s in steps])
            y = torch.cat([batches[s][1] for s in steps])
            positive = y == positive_class(y, self.ctx.num_classes)
            figures = {
                "label_norm_auc": roc_auc(norm_scores(g), positive),
                "label_inference_accuracy": cluster_accuracy(g, y, self.ctx.num_classes, seed=self.ctx.config.seed),
            }
            known = torch.nonzero(positive).flatten()
            if len(known):
                keep = torch.ones(len(y), dtype=torch.bool)
                keep[known[0]] = False
                scores = direction_scores(g[keep], g[known[0]])
                figures["label_direction_auc"] = roc_auc(scores, positive[keep])
            out[seen.client_id] = figures
        return out


def positive_class(labels: torch.Tensor, num_classes: int) -> int:
    """The class the AUCs ask about: binary, the rarer one among ``labels`` (the lower on a tie); else class 0."""
    if num_classes != 2:
        return MULTICLASS_POSITIVE
    counts = torch.bincount(labels.flatten(), minlength=2)
    return int(torch.argmin(counts))


register(LabelLeak)
