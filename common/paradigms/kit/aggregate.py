"""Pure reductions over what clients send up: FedAvg of model states, its robust variants, and pooling of
evaluations.

FedAvg averages into fresh tensors: weights are sample counts, accumulation is in float64, and integer
buffers (BatchNorm's ``num_batches_tracked``) are averaged and rounded. The accumulation is on the host whatever
device a state comes from, so an average is the same bits on a CPU and on a GPU server. SLPerf averaged into the dict of
the last upload (overwriting a client's weights before reading them) and weighted by batch count.

The weights are the samples the *server* counted (or a claim capped at the shard it assigned), never a client's
word alone. Against a client that sends poisoned weights, ``aggregation: median`` (the coordinate-wise median)
and ``aggregation: trimmed_mean`` (per coordinate, the mean after dropping the ``trim_fraction`` largest and
smallest values) are unweighted: with weights a liar would still move them. Both run in float64 too.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from slperf.common.config import DEFAULT_TRIM_FRACTION, RunConfig
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


class Aggregation(enum.StrEnum):
    """How client segments are combined (``aggregation:`` in the run config)."""

    FEDAVG = "fedavg"
    MEDIAN = "median"
    TRIMMED_MEAN = "trimmed_mean"


@dataclass(frozen=True)
class AggregationRule:
    method: Aggregation = Aggregation.FEDAVG
    trim_fraction: float = 0.0


def aggregation_rule(config: RunConfig) -> AggregationRule:
    """The run's rule (``aggregation``, ``trim_fraction``; FedAvg unless the config names another)."""
    method = Aggregation(config.aggregation or Aggregation.FEDAVG)
    fraction = config.trim_fraction if config.trim_fraction is not None else DEFAULT_TRIM_FRACTION
    return AggregationRule(method, fraction if method == Aggregation.TRIMMED_MEAN else 0.0)


def _check_keys(states: Sequence[Mapping[str, torch.Tensor]]) -> list[str]:
    keys = list(states[0].keys())
    for state in states[1:]:
        if list(state.keys()) != keys:
            raise ValueError(f"aggregation: states differ in their tensors: {sorted(set(keys) ^ set(state.keys()))}")
    return keys


def _stacked(states: Sequence[Mapping[str, torch.Tensor]], key: str) -> torch.Tensor:
    ref = states[0][key]
    for state in states:
        if state[key].shape != ref.shape:
            raise ValueError(f"aggregation: '{key}' has shape {tuple(state[key].shape)} vs {tuple(ref.shape)}")
    return torch.stack([s[key].detach().to("cpu", torch.float64) for s in states])


def _cast(acc: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    return acc.to(ref.dtype) if ref.is_floating_point() else acc.round().to(ref.dtype)


def coordinate_median(states: Sequence[Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Per coordinate, the median of the clients' values (the mean of the two middle ones for an even count,
    so two clients give their mean): one client, however far off, cannot move it past an honest value."""
    if not states:
        raise ValueError("median needs at least one state")
    out: dict[str, torch.Tensor] = {}
    for key in _check_keys(states):
        stacked = _stacked(states, key).sort(dim=0).values
        n = stacked.shape[0]
        middle = stacked[(n - 1) // 2 : n // 2 + 1]
        out[key] = _cast(middle.mean(dim=0), states[0][key])
    return out


def trimmed_mean(states: Sequence[Mapping[str, torch.Tensor]], trim_fraction: float) -> dict[str, torch.Tensor]:
    """Per coordinate, the mean of the clients' values after dropping the ``floor(trim_fraction * n)`` largest
    and as many smallest; with fewer clients than that leaves, the median."""
    if not states:
        raise ValueError("trimmed_mean needs at least one state")
    if not 0 <= trim_fraction < 0.5:
        raise ValueError(f"trim_fraction must be in [0, 0.5), got {trim_fraction}")
    n = len(states)
    k = math.floor(trim_fraction * n)
    if n - 2 * k < 1:
        return coordinate_median(states)
    out: dict[str, torch.Tensor] = {}
    for key in _check_keys(states):
        stacked = _stacked(states, key).sort(dim=0).values
        out[key] = _cast(stacked[k : n - k].mean(dim=0), states[0][key])
    return out


def non_finite(state: Mapping[str, torch.Tensor]) -> list[str]:
    """Names of the floating-point tensors of ``state`` holding a NaN or an infinity (what must never be kept,
    sent on or checkpointed)."""
    return [k for k, t in state.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]


def aggregate(uploads: Sequence[tuple[State, int]], rule: AggregationRule = AggregationRule()) -> State | None:
    """The clients' states combined by ``rule``; ``None`` when there is nothing to combine (nobody trained a
    sample) or when the result is not finite (an overflow of huge, finite uploads), so the old state stays.
    FedAvg is weighted by the samples each client trained this round, the robust rules are not."""
    uploads = [(state, samples) for state, samples in uploads if samples > 0]
    if not uploads:
        return None
    states = [state for state, _ in uploads]
    if rule.method == Aggregation.MEDIAN:
        out = coordinate_median(states)
    elif rule.method == Aggregation.TRIMMED_MEAN:
        out = trimmed_mean(states, rule.trim_fraction)
    else:
        out = fedavg(uploads)
    return None if non_finite(out) else out


def average_uploads(uploads: Sequence[tuple[State, int]]) -> State | None:
    """FedAvg of the states the clients that trained sent up, weighted by the samples each trained on this
    round; ``None`` when there is nothing to average (nobody trained a sample) or the average is not finite,
    so the old state stays."""
    return aggregate(uploads)


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
