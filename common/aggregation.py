"""Sample-weighted FedAvg into fresh tensors.

SLPerf averaged into the dict of the last upload (overwriting a client's weights before reading them) and
weighted by batch count; here every average is a new tensor, weights are sample counts, accumulation is
in float64, and integer buffers (BatchNorm's ``num_batches_tracked``) are averaged and rounded.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import torch


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
            acc.add_(tensor.detach().to(torch.float64), alpha=weight / total)
        if ref.is_floating_point():
            out[key] = acc.to(ref.dtype)
        else:
            out[key] = acc.round().to(ref.dtype)
    return out
