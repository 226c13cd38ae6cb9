"""What the server lets a client's figures be: sample counts, steps, losses and correct counts bounded by what the
server observed or assigned, with every disagreement kept for the run's record. A reported loss sum is bounded
by ``MAX_PLAUSIBLE_LOSS`` per sample (the rule the server's own steps follow), so a client that alone computes its
loss (U-shaped: its tail holds the labels) cannot report a finite but absurd one.

The server holds no data, so it cannot recount a shard; but it knows the data set's size (``DatasetSpec``), the
pool a run draws from (``max_train_samples``) and how the partition cuts it. For ``homo`` the shards differ by at
most one sample, so a claim is capped at the shard itself; for the other partitions at the pool (the largest shard
a partition can make). In a pass with cut tensors the server counts every step and sample itself, and those
counts replace the client's; in a pass without (``fedavg``) the claims are capped.
"""

from __future__ import annotations

import math

from slperf.common.config import RunConfig
from slperf.common.data.registry import DATASETS
from slperf.common.paradigms.base import Disagreement
from slperf.common.paradigms.kit.steps import MAX_PLAUSIBLE_LOSS
from slperf.common.protocol.types import Phase, PhaseSummary


def train_pool(config: RunConfig) -> int | None:
    """How many training samples the run's partition splits (None: the data set's size is unknown)."""
    size = DATASETS[config.dataset].train_size
    cap = config.max_train_samples
    if size is None:
        return cap
    return min(size, cap) if cap is not None else size


def shard_bound(config: RunConfig) -> int | None:
    """The most training samples one client's shard can hold (None: no bound is known)."""
    pool = train_pool(config)
    if pool is None:
        return None
    if config.partition_method == "homo":
        return math.ceil(pool / config.clients)
    return pool


def eval_bound(config: RunConfig) -> int | None:
    """The most test samples a client evaluates on (every client holds the same test set)."""
    size = DATASETS[config.dataset].test_size
    cap = config.max_test_samples
    if size is None:
        return cap
    return min(size, cap) if cap is not None else size


def capped(claimed: int, bound: int | None) -> int:
    return claimed if bound is None else min(claimed, bound)


def batches_of(samples: int, batch_size: int) -> int:
    """The steps a pass over ``samples`` takes (the last batch may be short)."""
    return math.ceil(samples / batch_size) if samples > 0 else 0


def bounded_summary(
    client: str,
    round: int,
    phase: Phase,
    claimed: PhaseSummary,
    observed: PhaseSummary | None,
    sample_bound: int,
    batch_size: int,
) -> tuple[PhaseSummary, list[Disagreement]]:
    """The figures of a pass the server uses, and where they differ from the client's PhaseDone.

    ``observed`` is what the server counted from the pass's cut tensors (its steps and samples), or None for a
    pass without any; then the claim is capped at ``sample_bound`` samples and their batches."""
    prefix = "" if phase == Phase.TRAIN else "test_"
    found: list[Disagreement] = []

    def use(figure: str, claim: int, value: int) -> int:
        if claim != value:
            found.append(Disagreement(client, round, prefix + figure, claim, value))
        return value

    if observed is not None:
        samples = use("samples", claimed.samples, observed.samples)
        steps = use("steps", claimed.steps, observed.steps)
    else:
        samples = use("samples", claimed.samples, min(max(claimed.samples, 0), sample_bound))
        steps = use("steps", claimed.steps, min(max(claimed.steps, 0), batches_of(samples, batch_size)))
    correct = use("correct", claimed.correct, min(max(claimed.correct, 0), samples))
    loss_sum = claimed.loss_sum
    # A loss is a finite, non-negative sum, and no more per sample than any model's (the kit's plausibility rule
    # for the server's own steps): a U-shaped client's loss comes from its own tail, so only it can report it.
    if not math.isfinite(loss_sum) or loss_sum < 0 or loss_sum > MAX_PLAUSIBLE_LOSS * samples:
        shown = loss_sum if math.isfinite(loss_sum) else str(loss_sum)  # NaN and inf are not JSON
        found.append(Disagreement(client, round, prefix + "loss_sum", shown, 0.0))
        loss_sum = 0.0
    return PhaseSummary(samples=samples, steps=steps, loss_sum=loss_sum, correct=correct), found
