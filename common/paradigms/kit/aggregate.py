"""Pure reductions over what clients send up: FedAvg of model states, and pooling of evaluations.

FedAvg averages into fresh tensors: weights are sample counts, accumulation is in float64, and integer
buffers (BatchNorm's ``num_batches_tracked``) are averaged and rounded. The accumulation is on the host whatever
device a state comes from, so an average is the same bits on a CPU and on a GPU server. SLPerf averaged into the dict of
the last upload (overwriting a client's weights before reading them) and weighted by batch count.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from slperf.common.paradigms.base import EvalResult
from slperf.common.protocol.types import State


def fedavg(states: Sequence[tuple[Mapping[str, torch.Tensor], float]]) -> dict[str, torch.Tensor]:
    if not states:
        raise ValueError("fedavg needs at least one state")
    total = float(sum(weight for _, weight in states))
    if total <= 0:
        raise ValueError("fedavg weights must sum to a positive number")
    keys = list(states[0][0].keys())
    for state, _ in states[1:]:
        if list(state.keys()) != keys:
            missing = set(keys) ^ set(state.keys())
            raise ValueError(f"fedavg states differ in their tensors: {sorted(missing)}")
    out: dict[str, torch.Tensor] = {}
    for key in keys:
        ref = states[0][0][key]
        acc = torch.zeros(ref.shape, dtype=torch.float64)
        for state, weight in states:
            tensor = state[key]
            if tensor.shape != ref.shape:
                raise ValueError(f"fedavg: '{key}' has shape {tuple(tensor.shape)} vs {tuple(ref.shape)}")
            acc.add_(tensor.detach().to("cpu", torch.float64), alpha=weight / total)
        if ref.is_floating_point():
            out[key] = acc.to(ref.dtype)
        else:
            out[key] = acc.round().to(ref.dtype)
    return out


def average_uploads(uploads: Sequence[tuple[State, int]]) -> State | None:
    """FedAvg of the states the clients that trained sent up, weighted by the samples each trained on this
    round; ``None`` when there is nothing to average (nobody trained a sample), so the old state stays."""
    if not uploads or sum(samples for _, samples in uploads) <= 0:
        return None
    return fedavg(uploads)


def model_shift(before: State, after: State) -> float:
    """Mean squared difference over all floating-point entries of two model states."""
    total, count = 0.0, 0
    for key, old in before.items():
        if old.is_floating_point():
            total += float(((after[key].to("cpu", torch.float64) - old.to("cpu", torch.float64)) ** 2).sum())
            count += old.numel()
    return total / count if count else 0.0


def pooled(results: Sequence[EvalResult]) -> EvalResult:
    """Several evaluations as one: accuracy and loss weighted by each one's samples."""
    samples = sum(r.samples for r in results)
    if not samples:
        return EvalResult(0.0, 0.0, 0)
    return EvalResult(
        accuracy=sum(r.accuracy * r.samples for r in results) / samples,
        loss=sum(r.loss * r.samples for r in results) / samples,
        samples=samples,
    )
